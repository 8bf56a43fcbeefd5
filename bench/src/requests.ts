// Throughput and tail latency per request: the bare framework, the floor under any tracer,
// meshtrace and the official OpenTelemetry instrumentation, each server in its own child process,
// driven from this process by autocannon over loopback with a traceparent on every request,
// candidates alternated.
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import autocannon from 'autocannon';
import { CANDIDATES, FRAMEWORKS, PATH, ROUTE } from './server';
import type { Candidate, Framework, FromServer, ToServer } from './server';
import { fmt, median, rotate, table } from './stats';
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

export const REQUESTS_FULL: RequestsOptions = { rounds: 5, seconds: 3, warmupSeconds: 3, rewarmSeconds: 1, connections: 10, frameworks: FRAMEWORKS };
export const REQUESTS_QUICK: RequestsOptions = { rounds: 2, seconds: 2, warmupSeconds: 1, rewarmSeconds: 0.5, connections: 10, frameworks: FRAMEWORKS };

const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
const NAMES: Record<Framework, string> = { express: 'Express 5', fastify: 'Fastify 5', koa: 'Koa 3 + @koa/router', http: 'node:http' };
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
  const child = fork(require.resolve('./server'), [framework, candidate], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`${framework}/${candidate}: server did not start within 30 s`)), 30_000);
    const fail = (err: Error) => {
      clearTimeout(timer);
      child.kill();
      reject(err);
    };
    child.once('exit', (code) => fail(new Error(`${framework}/${candidate}: server exited with ${code} before it was ready`)));
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
  return { rps: result.requests.total / seconds, p99: result.latency.p99, errors: result.errors + result.timeouts + result.non2xx };
}

interface Measured {
  readonly rps: number[];
  readonly p99: number[];
  /** Server CPU time (user + system) per request served, in microseconds. */
  readonly cpu: number[];
  errors: number;
  spansPerRequest: number;
}

export async function runRequests(options: RequestsOptions, log: (line: string) => void = () => undefined): Promise<Section> {
  const rows: string[][] = [];
  const checks: Check[] = [];
  const notes: string[] = [];
  for (const [f, framework] of options.frameworks.entries()) {
    const children: Child[] = [];
    const measured = new Map<Candidate, Measured>(CANDIDATES.map((c) => [c, { rps: [], p99: [], cpu: [], errors: 0, spansPerRequest: 0 }]));
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
          log(`  ${framework} round ${r + 1}/${options.rounds} ${child.candidate}: ${fmt(m.rps)} req/s, p99 ${m.p99} ms, ${fmt(out.cpu[out.cpu.length - 1], 1)} µs CPU per request`);
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
    const ctx = measured.get('context')!;
    const floor = measured.get('floor')!;
    const mesh = measured.get('meshtrace')!;
    const otel = measured.get('otel')!;
    // Ratios within a round compare runs made seconds apart; their median is what the targets use.
    const perRound = (a: Measured, b: Measured) => median(a.rps.map((x, r) => x / b.rps[r]));
    const meshToBare = perRound(mesh, bare);
    const otelToBare = perRound(otel, bare);
    const meshToOtel = perRound(mesh, otel);
    // Context only, no target: the share of the floor's throughput each tracer keeps.
    const ofFloor = (m: Measured) => `${fmt(perRound(m, floor) * 100)}%`;
    const row = (label: string, m: Measured, toBare: string, toFloor: string, extra: string) => [
      NAMES[framework],
      label,
      fmt(median(m.rps)),
      fmt(median(m.p99), 1),
      fmt(median(m.cpu), 1),
      toBare,
      toFloor,
      extra,
      m === bare || m === ctx ? '—' : fmt(m.spansPerRequest, 2),
    ];
    rows.push(row('bare', bare, '100%', '', ''));
    rows.push(row('bare + context manager ²', ctx, `${fmt(perRound(ctx, bare) * 100)}%`, '', ''));
    rows.push(row('floor ³', floor, `${fmt(perRound(floor, bare) * 100)}%`, '100%', ''));
    rows.push(row('meshtrace', mesh, `${fmt(meshToBare * 100)}%`, ofFloor(mesh), `${fmt(meshToOtel, 2)}x OTel`));
    rows.push(row(`OTel (${OTEL[framework]})`, otel, `${fmt(otelToBare * 100)}%`, ofFloor(otel), ''));
    checks.push({ target: `${NAMES[framework]}: meshtrace ≥ 85% of bare throughput`, measured: `${fmt(meshToBare * 100)}%`, met: meshToBare >= 0.85 });
    checks.push({ target: `${NAMES[framework]}: meshtrace ≥ 2x the official instrumentation's throughput`, measured: `${fmt(meshToOtel, 2)}x`, met: meshToOtel >= 2 });
    for (const [c, m] of measured) if (m.errors > 0) notes.push(`- ${NAMES[framework]} ${c}: ${m.errors} errors, timeouts or non-2xx answers during measured runs.`);
  }
  const o = options;
  const lines = [
    ...table(['framework', 'candidate', 'req/s', 'p99 (ms)', 'server CPU per request (µs)', 'of bare', 'of floor', 'meshtrace / OTel', 'spans per request'], ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r'], rows),
    '',
    `autocannon on loopback, ${o.connections} connections, no pipelining, \`GET ${PATH}\` with a \`traceparent\` (sampled) on every request; each server in its own child process, started once and warmed for ${o.warmupSeconds} s; then ${o.rounds} rounds of ${o.seconds} s per candidate (each after ${o.rewarmSeconds} s of discarded load), the candidate order rotated every round. req/s and p99 are medians over rounds; "of bare", "of floor" and "meshtrace / OTel" are medians of the ratios within each round.`,
    '',
    `- Same handler (\`${ROUTE}\` answering a small JSON body), same SDK setup for every traced candidate: SDK 3's \`TracerProvider\` with a \`BatchSpanProcessor\` (SDK defaults) and an exporter that counts spans and discards them; sampling is the SDK default (parent-based, and every request arrives sampled).`,
    '- meshtrace: the adapter (`meshTrace` for Express, Fastify and Koa, `meshHttp` for node:http) and `MeshPropagator` as the global propagator; no other instrumentation.',
    '- OTel: the instrumentations named, with their default configuration, and the SDK\'s default propagator (W3C trace context + baggage). They record more than one span per request (middleware, router and handler spans), which is part of their cost; spans per request is measured (exported spans / requests served).',
    '- ² No tracing, but an `AsyncLocalStorageContextManager` registered and used once, so Node runs its async hooks for every async resource: part of the floor under any tracer that carries context across `await` on Node 20. It makes no span and enters no context per request.',
    '- ³ Not a tracer: the least that any tracer carrying the request\'s context through `AsyncLocalStorage` and recording one SERVER span per request can cost, for comparison only (no target). The same SDK setup with the SDK\'s default propagator, and a hand-written wrapper around the server\'s request listener (the Express app, Koa\'s `app.callback()`, the node:http handler, Fastify\'s handler through `serverFactory`) that extracts, starts a span named `GET`, ends it on `finish` and calls the listener inside `context.with`. It is a floor: no attributes, no route, no binding of req/res, so its spans are not named by route and body and `finish` listeners added later do not run in the request\'s context, both of which a tracer has to do. "of floor" is the share of the floor\'s throughput a tracer keeps.',
    '- Server CPU per request is the server process\'s user + system CPU time over a measured run divided by the requests it served: unlike req/s it does not depend on how fast the load generator, which shares the machine, can send. A bare server that leaves part of its core idle is limited by the load generator, which flattens its req/s.',
    ...notes,
  ];
  return { title: 'Per request (req/s, p99 latency)', lines, checks };
}

if (require.main === module) {
  const quick = process.argv.includes('--quick');
  const only = process.argv.find((a) => a.startsWith('--frameworks='))?.slice('--frameworks='.length).split(',') as Framework[] | undefined;
  const options = { ...(quick ? REQUESTS_QUICK : REQUESTS_FULL), ...(only ? { frameworks: only } : {}) };
  runRequests(options, console.log).then(
    (s) => {
      console.log(s.lines.join('\n'));
      for (const c of s.checks) console.log(`${c.met ? 'met' : 'MISSED'}: ${c.target}: ${c.measured}`);
    },
    (err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
