import { DiagLogLevel, context, diag, propagation } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { MeshPropagator } from '@meshtrace/core';
import { meshMapUi, receivedSpanSource, renderTraces, runProbe, startReceiver, summarize } from '@meshtrace/doctor';
import type { AnalyzeOptions, MeshMapUi, Span } from '@meshtrace/doctor';
import { hasNginx } from '@meshtrace/testkit';
import { readBack, missingPeers, startDemoJaeger } from './jaeger';
import { Stopper } from './lifecycle';
import { defaultSidecarKind } from './sidecar';
import type { SidecarKind } from './sidecar';
import { FRAMEWORK, SERVICES, createTelemetry } from './telemetry';
import type { Telemetry } from './telemetry';
import { sidecarName, startMesh } from './topology';
import type { Mesh } from './topology';

/** What the command line asked for. */
export interface DemoArgs {
  /** Export over OTLP/HTTP to this traces URL instead of printing waterfalls. */
  otlpUrl: string | undefined;
  sidecars: SidecarKind | 'auto';
  help: boolean;
  /** Serve the mesh map both copies export to, and keep the meshes running for it until stopped. */
  ui?: boolean;
  /** Start a Jaeger all-in-one, export to it, read the waterfalls back from it and probe through it. */
  jaeger?: boolean;
}

const USAGE = `usage: pnpm demo [-- --otlp <url>] [-- --sidecar auto|nginx|node|caddy] [-- --jaeger] [-- --ui]

Starts gateway (Express) -> orders (Fastify) -> inventory (Koa) on 127.0.0.1, each behind its own
sidecar proxy (nginx when it is on the PATH, else a small Node proxy), sends a few requests, and
prints each trace as a waterfall: once with meshtrace, once with services that call each other
with plain fetch.

  --otlp <url>     send the spans to an OTLP/HTTP collector, Jaeger or Tempo instead of printing
                   them (http://localhost:4318 gets /v1/traces appended); also read from
                   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT
  --sidecar <kind> auto (default), nginx, node, or caddy: Caddy with its OpenTelemetry tracing on,
                   a sidecar that records a span of its own per request (pnpm peers caddy builds it)
  --jaeger         start a private Jaeger (pnpm peers jaeger builds it), export the services' and
                   sidecars' spans to it, read the waterfalls back from it and probe through it
  --ui             serve the mesh map on 127.0.0.1 (both copies export to it) and keep the
                   meshes running for its probe form until Ctrl-C
  --help           this text`;

/** The OTLP/HTTP traces URL for a base endpoint: `/v1/traces` is appended unless it is there (OTLP exporter spec). */
function tracesUrl(base: string): string {
  const trimmed = base.replace(/\/+$/, '');
  return trimmed.endsWith('/v1/traces') ? trimmed : `${trimmed}/v1/traces`;
}

/** Reads the command line and the OTLP environment variables; returns an error message for bad input. */
export function parseArgs(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): DemoArgs | string {
  let otlp: string | undefined;
  let sidecars: DemoArgs['sidecars'] = 'auto';
  let help = false;
  let ui = false;
  let jaeger = false;
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] =
      argv[i].startsWith('--') && argv[i].includes('=')
        ? [argv[i].slice(0, argv[i].indexOf('=')), argv[i].slice(argv[i].indexOf('=') + 1)]
        : [argv[i], undefined];
    const value = (): string | undefined => inline ?? argv[++i];
    if (flag === '--') continue;
    if (flag === '--help' || flag === '-h') help = true;
    else if (flag === '--ui') ui = true;
    else if (flag === '--jaeger') jaeger = true;
    else if (flag === '--otlp') {
      otlp = value();
      if (!otlp) return '--otlp needs a URL, such as http://localhost:4318';
    } else if (flag === '--sidecar') {
      const v = value();
      if (v !== 'auto' && v !== 'nginx' && v !== 'node' && v !== 'caddy')
        return `--sidecar takes auto, nginx, node or caddy, not ${JSON.stringify(v)}`;
      sidecars = v;
    } else return `unknown argument ${JSON.stringify(argv[i])}`;
  }
  // The Jaeger it starts is where the spans go: the OTLP variables are not read.
  if (jaeger) {
    if (otlp !== undefined || ui) return '--jaeger exports to a Jaeger of its own: it takes neither --otlp nor --ui';
    return { otlpUrl: undefined, sidecars, help, jaeger };
  }
  if (otlp === undefined) {
    if (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) otlp = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
    else if (env.OTEL_EXPORTER_OTLP_ENDPOINT) otlp = tracesUrl(env.OTEL_EXPORTER_OTLP_ENDPOINT);
  } else {
    otlp = tracesUrl(otlp);
  }
  if (otlp !== undefined) {
    try {
      if (!/^https?:$/.test(new URL(otlp).protocol))
        return `the OTLP endpoint must be an http(s) URL, not ${JSON.stringify(otlp)}`;
    } catch {
      return `the OTLP endpoint must be an http(s) URL, not ${JSON.stringify(otlp)}`;
    }
  }
  return { otlpUrl: otlp, sidecars, help, ...(ui ? { ui } : {}) };
}

/** The requests sent into each copy of the mesh. */
const REQUESTS: ReadonlyArray<{ label: string; headers: Record<string, string> }> = [
  // The example of W3C trace-context §3.2.4, so it is easy to find in a backend.
  {
    label: "a caller's traceparent",
    headers: { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' },
  },
  { label: 'no traceparent', headers: {} },
  // Upper-case hex is invalid (W3C trace-context §3.2.2.3): a proxy that "normalises" headers breaks traces this way.
  {
    label: 'a malformed traceparent',
    headers: { traceparent: '00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01' },
  },
];

// Requests enter at the gateway (or its tracing sidecar): a root anywhere else is a service starting a new trace mid-request.
const ANALYSIS: AnalyzeOptions = { entryServices: [SERVICES[0], sidecarName(SERVICES[0])] };

const SIDECAR_WORDS: Readonly<Record<SidecarKind, string>> = {
  nginx: 'nginx sidecar',
  node: 'Node sidecar',
  caddy: 'Caddy sidecar (tracing on: it records a span of its own per request)',
};

interface Run {
  readonly title: string;
  readonly propagate: boolean;
  readonly telemetry: Telemetry;
  mesh?: Mesh;
  readonly results: Array<{ status: number; spans: Span[] }>;
}

/** Where the program writes and how. */
export interface Output {
  line(text?: string): void;
  readonly color: boolean;
  readonly width: number;
}

/**
 * Runs the demo: both meshes, the traffic, then waterfalls (or the OTLP summary). Everything it
 * starts is registered with `stopper`, which it stops before printing. Returns the exit code.
 */
export async function runDemo(args: DemoArgs, out: Output, stopper: Stopper): Promise<number> {
  const kind = args.sidecars === 'auto' ? defaultSidecarKind() : args.sidecars;
  const chain = SERVICES.map((s) => `${s} (${FRAMEWORK[s]})`).join(' → ');
  out.line(`meshtrace demo: ${chain}, each behind its own ${SIDECAR_WORDS[kind]} on 127.0.0.1`);
  if (kind === 'node' && args.sidecars === 'auto')
    out.line('nginx is not on the PATH, so the sidecars are the embedded Node reverse proxy');
  out.line('starting two copies: one with meshtrace, one whose services call each other with plain fetch');
  const map = args.ui ? await stopper.track(startMap(args.otlpUrl)) : undefined;
  const jaeger = args.jaeger ? await startDemoJaeger(stopper) : undefined;
  if (jaeger !== undefined)
    out.line(
      `Jaeger all-in-one on 127.0.0.1: OTLP ${jaeger.otlpHttpUrl}, query ${jaeger.queryUrl} (stopped at the end)`,
    );
  // With the map, the copies export to it, and it passes the spans on to --otlp.
  const otlpUrl =
    map === undefined
      ? jaeger === undefined
        ? args.otlpUrl
        : `${jaeger.otlpHttpUrl}/v1/traces`
      : `${map.url}/v1/traces`;
  // With Jaeger, the services export to it and to the receiver here, which tells when a request's spans are in.
  const exportTo = jaeger === undefined ? 'receiver' : 'both';

  const runs: Run[] = [
    {
      title: 'with meshtrace',
      propagate: true,
      telemetry: await createTelemetry({ otlpUrl, exportTo, run: 'with-meshtrace' }),
      results: [],
    },
    {
      title: 'without outbound propagation (plain fetch)',
      propagate: false,
      telemetry: await createTelemetry({ otlpUrl, exportTo, run: 'plain-fetch' }),
      results: [],
    },
  ];
  await Promise.all(
    runs.map(async (run) => {
      run.mesh = await startMesh({
        sidecars: kind,
        propagate: run.propagate,
        providers: run.telemetry.providers,
        stopper,
        // Tracing sidecars export where the services' spans are read: Jaeger, or this copy's receiver.
        sidecarOtlp: jaeger?.otlpHttpUrl ?? run.telemetry.receiver.url,
      });
    }),
  );
  for (const run of runs) {
    const m = run.mesh!;
    out.line(
      `  ${(run.propagate ? 'with meshtrace' : 'plain fetch').padEnd(16)}${SERVICES.map((s) => `${s} :${m.services[s].port} (sidecar :${m.sidecars[s].port})`).join(', ')}`,
    );
  }

  out.line(
    `sending ${REQUESTS.length} requests to each copy; a CLIENT span shows the service it called (through that service's sidecar)`,
  );
  for (const [i, request] of REQUESTS.entries()) {
    for (const run of runs) {
      run.telemetry.reset();
      const res = await fetch(`${run.mesh!.entry}/checkout/${i + 1}`, { headers: request.headers });
      await res.arrayBuffer();
      // Each service ends its SERVER span as it answers (and each tracing sidecar, when it exports here); wait for them all.
      const servers = kind === 'caddy' && jaeger === undefined ? 2 * SERVICES.length : SERVICES.length;
      run.results.push({ status: res.status, spans: await run.telemetry.waitForServerSpans(servers) });
    }
  }
  if (jaeger !== undefined) {
    // The waterfalls are what Jaeger holds for each request's traces: the sidecars' spans included.
    out.line(`reading the traces back from Jaeger's query API (${jaeger.queryUrl})`);
    for (const run of runs) {
      const ids = [...new Set(run.results.flatMap((r) => r.spans.map((s) => s.traceId)))];
      const held = await readBack(jaeger.queryUrl, ids);
      // Both copies continue the same caller's trace id: a copy's spans are those that name its sidecars' ports
      // (a SERVER span the port it was called at, a CLIENT span the port it called).
      const ports = new Set(SERVICES.map((s) => run.mesh!.sidecars[s].port));
      const ours = (span: Span): boolean => ports.has(Number(span.attributes['server.port']));
      for (const result of run.results)
        result.spans = [...new Set(result.spans.map((s) => s.traceId))].flatMap((id) =>
          (held.get(id) ?? []).filter(ours),
        );
    }
  }
  const describe = (port: number): string | undefined =>
    runs.map((r) => r.mesh!.describePort(port)).find((d) => d !== undefined);
  // The doctor's verdict on each copy, printed last: what `npx meshtrace probe <entry>` answers.
  const probes: Array<{ code: number; lines: string[] }> = [];
  for (const run of runs) {
    const lines: string[] = [];
    const code = await runProbe(
      {
        url: `${run.mesh!.entry}/checkout/probe`,
        ...(jaeger === undefined
          ? { source: receivedSpanSource(run.telemetry.receiver) }
          : { backend: 'jaeger' as const, endpoint: jaeger.queryUrl }),
        waitMs: 10_000,
        // The demo's services export each span as it ends (SimpleSpanProcessor): no batch to wait for.
        batchDelayMs: 500,
      },
      { line: (text = '') => void lines.push(text), color: out.color, width: out.width - 2 },
    );
    probes.push({ code, lines });
  }
  if (map !== undefined) {
    out.line(`the mesh map: ${map.url}/?by=meshtrace.demo.run`);
    out.line(
      `  probe ${runs[0].mesh!.entry}/checkout/1 (with meshtrace) or ${runs[1].mesh!.entry}/checkout/1 (plain fetch) from it`,
    );
    out.line('  the meshes keep running for it; Ctrl-C stops everything');
    // Until a signal: main's handler stops what the stopper holds and exits.
    await new Promise<never>(() => undefined);
  }
  await stopper.stop();
  if (args.otlpUrl !== undefined) out.line(`flushing the spans to OTLP ${args.otlpUrl}`);
  await Promise.all(runs.map((r) => r.telemetry.shutdown()));

  const failed = runs.flatMap((r) => r.results.filter((x) => x.status !== 200).map((x) => x.status));
  if (args.otlpUrl === undefined) {
    for (const [i, request] of REQUESTS.entries()) {
      out.line();
      const tp = request.headers.traceparent;
      out.line(`── request ${i + 1} of ${REQUESTS.length}: ${request.label}${tp ? ` ${tp}` : ''}`);
      for (const run of runs) {
        const { status, spans } = run.results[i];
        const summary = summarize(spans, ANALYSIS);
        out.line(
          `${run.title}: HTTP ${status}, ${plural(summary.traces, 'trace')}, ${plural(summary.orphans.length, 'orphaned root')}`,
        );
        for (const line of renderTraces(spans, {
          color: out.color,
          width: out.width - 2,
          orphans: summary.orphans,
          describePort: describe,
        }))
          out.line(`  ${line}`);
      }
    }
  }

  out.line();
  const width = Math.max(...runs.map((r) => r.title.length)) + 1;
  for (const run of runs) {
    const summary = summarize(
      run.results.flatMap((r) => r.spans),
      ANALYSIS,
    );
    out.line(
      `${`${run.title}:`.padEnd(width + 1)} ${REQUESTS.length} requests → ${plural(summary.traces, 'trace')}, ${plural(summary.spans, 'span')}, ${plural(summary.orphans.length, 'orphaned root')}`,
    );
  }
  out.line('(an orphaned root is a service inside the mesh starting a new trace although its caller was traced)');
  out.line();
  out.line(
    'meshtrace probe, the doctor, against the entry of each copy (exit code 0 whole, 1 broken, 2 unknown, 3 incomplete):',
  );
  for (const [i, run] of runs.entries()) {
    out.line(`${run.title}: exit ${probes[i].code}`);
    for (const line of probes[i].lines) out.line(`  ${line}`);
  }
  const otlp = jaeger === undefined ? runs[0].telemetry.otlp : undefined;
  if (otlp !== undefined) {
    const exported = runs.reduce((n, r) => n + r.telemetry.otlp!.exported, 0);
    const lost = runs.reduce((n, r) => n + r.telemetry.otlp!.failed, 0);
    const error = runs.map((r) => r.telemetry.otlp!.lastError).find((e) => e !== undefined);
    out.line(
      `spans went to OTLP ${otlp.url}: ${exported} exported${lost > 0 ? `, ${lost} failed (${error ?? 'unknown error'})` : ''}`,
    );
    out.line(
      `look for services ${SERVICES.join(', ')}; the resource attribute meshtrace.demo.run is with-meshtrace or plain-fetch`,
    );
    const ids = [...new Set(runs[0].results.flatMap((r) => r.spans.map((s) => s.traceId)))];
    out.line(`traces with meshtrace: ${ids.join(', ')}`);
    if (lost > 0) return 1;
  }
  if (failed.length > 0) {
    out.line(`some requests failed: HTTP ${failed.join(', ')}`);
    return 1;
  }
  // The copy with meshtrace must come through whole; the plain copy breaking is the point of the demo.
  return probes[0].code === 0 ? 0 : 1;
}

/** A receiver serving the mesh map (`--ui`), passing every export on to `forward` when given. */
async function startMap(forward: string | undefined): Promise<{ url: string; stop(): Promise<void> }> {
  let page: MeshMapUi | undefined;
  const receiver = await startReceiver({ port: 0, forward, route: (req, res) => page?.route(req, res) ?? false });
  const ui = meshMapUi({ receiver, host: '127.0.0.1', entryServices: ANALYSIS.entryServices });
  page = ui;
  return {
    url: receiver.url,
    stop: async () => {
      ui.close();
      await receiver.close();
    },
  };
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** Registers what is process-wide; the tracer providers are per service, made by `createTelemetry`. */
function registerGlobals(): string[] {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new MeshPropagator());
  // meshtrace reports lost traces through diag; they are shown after the waterfalls, not in between.
  const logged: string[] = [];
  const keep = (message: string): void => void (logged.includes(message) || logged.push(message));
  diag.setLogger(
    { error: keep, warn: keep, info: () => undefined, debug: () => undefined, verbose: () => undefined },
    DiagLogLevel.WARN,
  );
  return logged;
}

/** How long a failed run waits for a signal that may explain the failure. */
const SIGNAL_GRACE_MS = 1000;

function main(): void {
  let stdoutOpen = true;
  const write = (text = ''): void => {
    if (stdoutOpen) process.stdout.write(`${text}\n`);
  };
  const parsed = parseArgs(process.argv.slice(2), process.env);
  if (typeof parsed === 'string') {
    process.stderr.write(`${parsed}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  if (parsed.help) {
    write(USAGE);
    return;
  }
  if (parsed.sidecars === 'nginx' && !hasNginx()) {
    process.stderr.write('nginx is not on the PATH: install it, or run with --sidecar node\n');
    process.exitCode = 2;
    return;
  }
  const missing = missingPeers(parsed);
  if (missing !== undefined) {
    process.stderr.write(`${missing}\n`);
    process.exitCode = 2;
    return;
  }
  const env = process.env;
  const color = process.stdout.isTTY === true && env.NO_COLOR === undefined && env.TERM !== 'dumb';
  const out: Output = { line: write, color, width: process.stdout.isTTY ? (process.stdout.columns ?? 100) : 110 };
  const logged = registerGlobals();
  const stopper = new Stopper();

  // Every way out goes through here, so nginx never outlives the program.
  let leaving: string | undefined;
  const leave = (why: string, code: number, report: () => void): void => {
    if (leaving !== undefined) return;
    leaving = why;
    void stopper.stop().then(() => {
      report();
      for (const e of stopper.errors) process.stderr.write(`could not stop: ${e}\n`);
      process.exit(code);
    });
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    if (leaving === undefined) write(`\n${signal}: stopping the sidecars and services`);
    leave(signal, 0, () => write('stopped; nothing is left running'));
  };
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onSignal);
  // The reader went away (`pnpm demo | head`): stop quietly instead of dying on EPIPE.
  process.stdout.on('error', () => {
    stdoutOpen = false;
    leave('stdout closed', 0, () => undefined);
  });
  const fatal = (err: unknown): void =>
    leave('error', 1, () =>
      process.stderr.write(`demo failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`),
    );
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);

  runDemo(parsed, out, stopper).then(
    (code) => {
      if (leaving !== undefined) return;
      if (logged.length > 0) {
        write();
        write('logged through OpenTelemetry diag (meshtrace writes one line per reason every 10 s):');
        for (const line of logged) write(`  ${line}`);
      }
      for (const e of stopper.errors) process.stderr.write(`could not stop: ${e}\n`);
      process.exitCode = code;
    },
    (err: unknown) => {
      if (leaving !== undefined) return;
      // Ctrl-C signals the whole process group: nginx can die and fail a request before our handler
      // runs (on a busy machine the signal reached this process's handler up to 200 ms after the
      // failure). So stop, give a signal a moment to arrive, and only then call it a failure.
      void stopper
        .stop()
        .then(() => new Promise((resolve) => setTimeout(resolve, SIGNAL_GRACE_MS)))
        .then(() => fatal(err));
    },
  );
}

if (require.main === module) main();
