// Throughput and tail latency per request: the bare framework, the floor under any tracer,
// meshtrace and the official OpenTelemetry instrumentation, each server in its own child process,
// driven from this process by autocannon over loopback with a traceparent on every request,
// candidates alternated.
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import autocannon from 'autocannon';
import { CANDIDATES, FRAMEWORKS, PATH, ROUTE } from './server';
import type { Candidate, Framework, FromServer, ToServer } from './server';
import { fmt, median, printSection, rotate, table } from './stats';
import type { Check, Section } from './stats';

export interface RequestsOptions {
  /** Measured runs per candidate; medians are reported. */
  rounds: number;
  /** Seconds of one measured run. */
  seconds: number;
  /** Seconds of load each server gets once after it starts, discarded (JIT, connection pools). */
  warmupSeconds: number;
  /** Seconds of load before every measured run, discarded (reopens connections, wakes the process). */
  rewarmSeconds: number;
  connections: number;
  frameworks: readonly Framework[];
}

export const REQUESTS_FULL: RequestsOptions = {
  rounds: 5,
  seconds: 2,
  warmupSeconds: 3,
  rewarmSeconds: 0.5,
  connections: 10,
  frameworks: FRAMEWORKS,
};
export const REQUESTS_QUICK: RequestsOptions = {
  rounds: 2,
  seconds: 2,
  warmupSeconds: 1,
  rewarmSeconds: 0.5,
  connections: 10,
  frameworks: FRAMEWORKS,
};

const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
const NAMES: Record<Framework, string> = {
  express: 'Express 5',
  fastify: 'Fastify 5',
  koa: 'Koa 3 + @koa/router',
  http: 'node:http',
};
const LABELS: Record<Candidate, (f: Framework) => string> = {
  bare: () => 'bare',
  context: () => 'bare + context manager',
  floor: () => 'floor',
  meshtrace: () => '**meshtrace**',
  'public-api': () => 'meshtrace, shortcuts off',
  'sdk-disabled': () => 'meshtrace, SDK disabled',
  'in-nodesdk': () => 'meshtrace in NodeSDK (+ http, undici)',
  otel: (f) => `OTel (${OTEL[f]})`,
};
const OTEL: Record<Framework, string> = {
  express: 'instrumentation-http + instrumentation-express',
  fastify: 'instrumentation-http + @fastify/otel',
  koa: 'instrumentation-http + instrumentation-koa',
  http: 'instrumentation-http',
};

interface Child {
  readonly candidate: Candidate;
  readonly process: ChildProcess;
  readonly port: number;
}

function startServer(framework: Framework, candidate: Candidate): Promise<Child> {
  const child = fork(require.resolve('./server'), [framework, candidate], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => fail(new Error(`${framework}/${candidate}: server did not start within 30 s`)),
      30_000,
    );
    const fail = (err: Error) => {
      clearTimeout(timer);
      child.kill();
      reject(err);
    };
    child.once('exit', (code) =>
      fail(new Error(`${framework}/${candidate}: server exited with ${code} before it was ready`)),
    );
    child.on('message', (m: FromServer) => {
      if (m.type === 'ready') {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        resolve({ candidate, process: child, port: m.port });
      } else if (m.type === 'error') {
        fail(new Error(`${framework}/${candidate}: ${m.message}`));
      }
    });
  });
}

function ask(child: Child, message: ToServer): void {
  if (child.process.connected) child.process.send(message);
}

interface Stats {
  readonly served: number;
  readonly spans: number;
  readonly rssBytes: number;
  readonly cpuMicros: number;
}

function stats(child: Child, flush = false): Promise<Stats> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${child.candidate}: no stats within 10 s`)), 10_000);
    const onMessage = (m: FromServer) => {
      if (m.type !== 'stats') return;
      clearTimeout(timer);
      child.process.off('message', onMessage);
      resolve(m);
    };
    child.process.on('message', onMessage);
    ask(child, { type: 'stats', flush });
  });
}

async function stopServer(child: Child): Promise<void> {
  if (child.process.exitCode !== null || child.process.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.process.once('exit', () => resolve()));
  ask(child, { type: 'stop' });
  const timer = setTimeout(() => child.process.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

interface Load {
  readonly rps: number;
  readonly p99: number;
  readonly errors: number;
}

async function load(port: number, seconds: number, connections: number): Promise<Load> {
  const result = await autocannon({
    url: `http://127.0.0.1:${port}${PATH}`,
    connections,
    pipelining: 1,
    duration: seconds,
    headers: { traceparent: TRACEPARENT },
  });
  return {
    rps: result.requests.total / seconds,
    p99: result.latency.p99,
    errors: result.errors + result.timeouts + result.non2xx,
  };
}

interface Measured {
  readonly rps: number[];
  readonly p99: number[];
  /** Server CPU time (user + system) per request served, in microseconds. */
  readonly cpu: number[];
  errors: number;
  spansPerRequest: number;
}

export async function runRequests(
  options: RequestsOptions,
  log: (line: string) => void = () => undefined,
): Promise<Section> {
  const rows: string[][] = [];
  const shortcuts: string[][] = [];
  const checks: Check[] = [];
  const notes: string[] = [];
  for (const [f, framework] of options.frameworks.entries()) {
    const children: Child[] = [];
    const measured = new Map<Candidate, Measured>(
      CANDIDATES.map((c) => [c, { rps: [], p99: [], cpu: [], errors: 0, spansPerRequest: 0 }]),
    );
    try {
      for (const candidate of CANDIDATES) children.push(await startServer(framework, candidate));
      for (const child of rotate(children, f)) await load(child.port, options.warmupSeconds, options.connections);
      for (let r = 0; r < options.rounds; r++) {
        // Each candidate takes every position in the order in turn, so warming and drift spread over all of them.
        for (const child of rotate(children, r + f)) {
          if (options.rewarmSeconds > 0) await load(child.port, options.rewarmSeconds, options.connections);
          const before = await stats(child);
          const m = await load(child.port, options.seconds, options.connections);
          const after = await stats(child);
          const out = measured.get(child.candidate)!;
          out.rps.push(m.rps);
          out.cpu.push((after.cpuMicros - before.cpuMicros) / Math.max(1, after.served - before.served));
          out.p99.push(m.p99);
          out.errors += m.errors;
          log(
            `  ${framework} round ${r + 1}/${options.rounds} ${child.candidate}: ${fmt(m.rps)} req/s, p99 ${m.p99} ms, ${fmt(out.cpu[out.cpu.length - 1], 1)} µs CPU per request`,
          );
        }
      }
      for (const child of children) {
        const s = await stats(child, true);
        measured.get(child.candidate)!.spansPerRequest = s.served > 0 ? s.spans / s.served : 0;
      }
    } finally {
      await Promise.all(children.map(stopServer));
    }

    const bare = measured.get('bare')!;
    const get = (c: Candidate) => measured.get(c)!;
    // CPU per request added over bare, per round: runs seconds apart, so drift cancels within a round.
    const added = (m: Measured) => m.cpu.map((x, r) => x - bare.cpu[r]);
    // A ratio of two small differences is noisy round by round: ratios are of the medians of the added CPU.
    const ratioOfAdded = (a: Measured, b: Measured) => median(added(a)) / median(added(b));
    const spread = (values: number[], digits: number, unit = '') =>
      `${fmt(median(values), digits)}${unit} (${fmt(Math.min(...values), digits)}–${fmt(Math.max(...values), digits)})`;
    // A ratio to a yardstick that adds nothing measurable over bare says nothing.
    const ratioCell = (a: Measured, b: Measured) => (median(added(b)) > 0 ? `${fmt(ratioOfAdded(a, b), 2)}x` : 'n/a');
    const mesh = get('meshtrace');
    const toFloor = ratioOfAdded(mesh, get('floor'));
    const toOtel = ratioOfAdded(mesh, get('otel'));
    const disabledToContext = ratioOfAdded(get('sdk-disabled'), get('context'));
    const shortcutSaving = get('public-api').cpu.map((x, r) => x - mesh.cpu[r]);
    for (const c of CANDIDATES) {
      const m = get(c);
      const isBare = c === 'bare';
      rows.push([
        NAMES[framework],
        LABELS[c](framework),
        fmt(median(m.rps)),
        fmt(median(m.cpu), 1),
        isBare ? '—' : spread(added(m), 1),
        isBare || c === 'floor' ? '' : ratioCell(m, get('floor')),
        isBare || c === 'otel' ? '' : ratioCell(m, get('otel')),
        isBare || c === 'context' || c === 'sdk-disabled' ? '—' : fmt(m.spansPerRequest, 2),
      ]);
    }
    shortcuts.push([
      NAMES[framework],
      spread(shortcutSaving, 1, ' µs'),
      fmt(median(get('public-api').cpu) / median(mesh.cpu), 2),
    ]);
    checks.push({
      target: `${NAMES[framework]}: meshtrace's added CPU per request ≤ 1.2x the floor's`,
      measured: `${fmt(toFloor, 2)}x`,
      met: toFloor <= 1.2,
    });
    checks.push({
      target: `${NAMES[framework]}: meshtrace's added CPU per request ≤ 1/3 of the official route's`,
      measured: `${fmt(toOtel, 2)}`,
      met: toOtel <= 1 / 3,
    });
    // With the context manager's added CPU at or below zero (within noise of bare) no ratio means anything: the target is then missed unless the SDK-disabled row adds nothing either.
    const ctxAdded = median(added(get('context')));
    const disabledAdded = median(added(get('sdk-disabled')));
    checks.push({
      target: `${NAMES[framework]}: SDK disabled, added CPU ≤ 1.1x that of bare + context manager`,
      measured:
        ctxAdded > 0 ? `${fmt(disabledToContext, 2)}x` : `${fmt(disabledAdded, 1)} µs against ${fmt(ctxAdded, 1)} µs`,
      met: ctxAdded > 0 ? disabledToContext <= 1.1 : disabledAdded <= 0,
    });
    for (const [c, m] of measured)
      if (m.errors > 0)
        notes.push(`- ${NAMES[framework]} ${c}: ${m.errors} errors, timeouts or non-2xx answers during measured runs.`);
  }
  const o = options;
  const lines = [
    ...table(
      [
        'framework',
        'candidate',
        'req/s',
        'server CPU per request (µs)',
        'added over bare (µs)',
        "added ÷ floor's added",
        "added ÷ OTel's added",
        'spans per request',
      ],
      ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r'],
      rows,
    ),
    '',
    `autocannon on loopback, ${o.connections} connections, no pipelining, \`GET ${PATH}\` with a \`traceparent\` (sampled) on every request; each server in its own child process, started once and warmed for ${o.warmupSeconds} s; then ${o.rounds} rounds of ${o.seconds} s per candidate (each after ${o.rewarmSeconds} s of discarded load), the candidate order rotated every round. Server CPU per request is the server process's user + system CPU over a measured run divided by the requests it served: unlike req/s it does not depend on how fast the load generator, which shares the two cores, can send. "Added" is a candidate's CPU per request minus bare's in the same round; each added cell is the median over rounds, with the lowest and highest round in brackets, and the ratios are of those medians.`,
    '',
    '- Same handler (`' +
      ROUTE +
      "` answering a small JSON body), same SDK setup for every traced candidate: SDK 3's `TracerProvider` with a `BatchSpanProcessor` (SDK defaults) and an exporter that counts spans and discards them; sampling is the SDK default (parent-based, and every request arrives sampled).",
    "- meshtrace: the adapter (`meshTrace` for Express, Fastify and Koa, `meshHttp` for node:http) and `MeshPropagator` as the global propagator; no other instrumentation. Shortcuts off: the same with `MESHTRACE_PUBLIC_API_ONLY=1`, which takes the public API's route where core otherwise reads OpenTelemetry internals or relies on V8 behaviour (the emitter binding, Express's dictionary step). SDK disabled: `setupMeshTracing()` under `OTEL_SDK_DISABLED=true` (context manager and propagator, no SDK, no spans) and the adapter. In NodeSDK: `NodeSDK` with instrumentation-http and instrumentation-undici, `MeshPropagator` as its propagator, and the adapter, which enriches instrumentation-http's SERVER span instead of making one.",
    "- OTel: the instrumentations named, with their default configuration, and the SDK's default propagator (W3C trace context + baggage). They record more than one span per request (middleware, router and handler spans), which is part of their cost; spans per request is measured (exported spans / requests served).",
    '- Bare + context manager: no tracing, but an `AsyncLocalStorageContextManager` registered and used once, so Node runs its async hooks for every async resource. It makes no span and enters no context per request.',
    "- Floor: not a tracer but the least any tracer carrying the request's context through `AsyncLocalStorage` and recording one SERVER span per request can cost. The same SDK setup with the SDK's default propagator, and a wrapper around the server's request listener (the Express app, Koa's `app.callback()`, the node:http handler, Fastify's handler through `serverFactory`) that extracts, starts a span named `GET`, ends it on `finish` and calls the listener inside `context.with`: no attributes, no route, no binding of req/res.",
    ...notes,
    '',
    '### What the shortcuts save',
    '',
    ...table(['framework', 'CPU per request, shortcuts off minus on', 'off ÷ on'], ['l', 'r', 'r'], shortcuts),
    '',
    'A positive saving is what the shortcuts through OpenTelemetry internals and V8 behaviour buy on this Node version; a shortcut stays only while this row shows it pays on every Node version supported.',
  ];
  return { title: 'Per request: CPU added over the bare framework', lines, checks };
}

if (require.main === module) {
  const quick = process.argv.includes('--quick');
  const only = process.argv
    .find((a) => a.startsWith('--frameworks='))
    ?.slice('--frameworks='.length)
    .split(',') as Framework[] | undefined;
  const options = { ...(quick ? REQUESTS_QUICK : REQUESTS_FULL), ...(only ? { frameworks: only } : {}) };
  printSection(runRequests(options, console.log));
}
