// Instructions per request in the steady state, counted by valgrind (callgrind): each server runs in one
// process under valgrind with V8's tiering thresholds lowered, a fixed young generation, no memory reducer,
// fixed seeds and the batch processor exporting only when a batch is full. It answers `base` requests
// (start-up, compiles and deopts land there), callgrind's counters are zeroed, and the count over the next `window` requests, divided by `window`, is one request's cost.
// base and window are multiples of the batch size (512), so every window holds the same number of exports.
//   node bench/dist/steady.js [--frameworks=express,http] [--candidates=bare,attr-floor,meshtrace]
//     [--base=3072] [--window=2048] [--repeat=2] [--keep=<dir>]
// --keep leaves each window's callgrind dump in <dir> for callgrind_annotate.
import { spawn, execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'node:http';
import { FRAMEWORKS, PATH, ALL_CANDIDATES } from './server';
import type { AnyCandidate, Framework, FromServer, ToServer } from './server';
import { fmt, sleep, table } from './stats';
import type { Check, Section } from './stats';

/**
 * V8 and Node flags of a steady-state count; each is accepted by Node 22 (V8 12.4) and Node 24 (V8 13.6)
 * (`node --v8-options`; neither has an `--interrupt-budget` flag any more: the invocation counts set it).
 */
export const STEADY_FLAGS: readonly string[] = [
  // No background threads: compiles and GC run on the main thread, where the count sees them, at the same
  // request in every run.
  '--single-threaded',
  // Tier up after fewer calls (defaults: Maglev 400, Turbofan 3000, where per-request functions still reach
  // Turbofan after 9,000 requests), so compiles and the deopts they bring are over before the window; the
  // same numbers on both Node versions. Much lower Turbofan counts optimize on thin feedback and deopt more.
  '--invocation-count-for-maglev=100',
  '--invocation-count-for-turbofan=600',
  // Node 24 turns this heuristic on by default, Node 22 off: one setting for both.
  '--no-efficiency-mode-for-tiering-heuristics',
  // A fixed young generation (16 MB semi-spaces, never resized), no memory reducer: scavenges come every
  // so many bytes allocated, not when a heuristic decides.
  '--min-semi-space-size=16',
  '--max-semi-space-size=16',
  '--no-memory-reducer',
  // Bytecode of functions not run for a few major GCs is dropped and compiled again later: not in a count.
  '--no-flush-bytecode',
  '--random-seed=20261206',
  '--hash-seed=20261206',
  // No forced GC before the window: a full GC from gc() throws away optimized code and feedback, and the
  // process tiers up all over again (hundreds of compiles and deopts every 1,000 requests after it).
];

const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

/** Options of a steady-state count. */
export interface SteadyOptions {
  /** Requests answered before the window (start-up, compiles, deopts). A multiple of 512. */
  readonly base: number;
  /** Requests counted. A multiple of 512. */
  readonly window: number;
  readonly frameworks: readonly Framework[];
  readonly candidates: readonly AnyCandidate[];
  /** Processes per candidate; more than one shows how far the counts repeat. */
  readonly repeat: number;
  /** Where to keep each window's callgrind dump, if anywhere. */
  readonly keep?: string;
  /** Windows counted one after another in each process (default 1); the last one is the count, the others show whether it settled. */
  readonly windows?: number;
}

/** One process's count. */
export interface WindowCount {
  /** Instructions per request over the window. */
  readonly perRequest: number;
  /** Spans exported during the window per request (full batches only). */
  readonly spansPerRequest: number;
  /** Instructions per request of every window, in order (the last is `perRequest`). */
  readonly series: readonly number[];
}

function callgrindControl(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('callgrind_control', args, { timeout: 60_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`callgrind_control ${args.join(' ')}: ${err.message} ${stdout} ${stderr}`));
      else resolve();
    });
  });
}

/**
 * One keep-alive connection for the whole process's life, request after response: every run splits the work
 * into the same event-loop turns, and the window runs on the connection the warm-up ran on (a new connection
 * costs far more than one request for its first few thousand requests: its objects take new shapes and the
 * code optimized for the old ones deopts and tiers up again).
 */
class Client {
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 1 });
  constructor(
    private readonly port: number,
    private readonly what: string,
  ) {}

  private sent = 0;

  private once(): Promise<void> {
    const first = this.sent++ === 0;
    return new Promise((resolve, reject) => {
      const req = request(
        { host: '127.0.0.1', port: this.port, path: PATH, agent: this.agent, headers: { traceparent: TRACEPARENT } },
        (res) => {
          res.resume();
          res.on('end', () =>
            res.statusCode === 200 ? resolve() : reject(new Error(`${this.what}: status ${res.statusCode}`)),
          );
        },
      );
      req.setTimeout(120_000, () => req.destroy(new Error(`${this.what}: no answer within 120 s`)));
      req.on('error', reject);
      req.on('socket', () => {
        if (!first && !req.reusedSocket) req.destroy(new Error(`${this.what}: the keep-alive connection was replaced`));
      });
      req.end();
    });
  }

  /** Sends `amount` requests one after another; throws if one fails or the connection was replaced. */
  async send(amount: number): Promise<void> {
    for (let i = 0; i < amount; i++) await this.once();
  }

  close(): void {
    this.agent.destroy();
  }
}

/** Instructions per request of one server process over requests base+1 … base+window. */
export function countWindow(
  framework: Framework,
  candidate: AnyCandidate,
  options: Pick<SteadyOptions, 'base' | 'window' | 'keep' | 'windows'>,
  tag = '',
): Promise<WindowCount> {
  const what = `${framework}/${candidate}`;
  const dir = mkdtempSync(join(tmpdir(), 'meshtrace-steady-'));
  const out = join(dir, 'callgrind.out');
  const child = spawn(
    'valgrind',
    [
      '--tool=callgrind',
      // Not instrumented until the window: the warm-up requests run several times faster.
      '--instr-atstart=no',
      `--callgrind-out-file=${out}`,
      process.execPath,
      ...(process.env.MESHTRACE_STEADY_FLAGS?.split(' ').filter((f) => f.length > 0) ?? STEADY_FLAGS),
      require.resolve('./server'),
      framework,
      candidate,
    ],
    { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env: { ...process.env, MESHTRACE_BENCH_STEADY: '1' } },
  );
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-4000);
  });
  const waiting: Array<(m: FromServer) => void> = [];
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const ask = (message: ToServer, reply: FromServer['type']) =>
    new Promise<FromServer>((resolve, reject) => {
      waiting.push((m) => (m.type === reply ? resolve(m) : reject(new Error(`${what}: ${JSON.stringify(m)}`))));
      child.send(message);
    });
  const ready = new Promise<number>((resolve, reject) => {
    child.on('message', (m: FromServer) => {
      if (m.type === 'ready') resolve(m.port);
      else if (m.type === 'error') reject(new Error(`${what}: ${m.message}`));
      else waiting.shift()?.(m);
    });
    void exited.then(() => reject(new Error(`${what}: exited before it listened; valgrind said: ${stderr}`)));
  });
  let client: Client | undefined;
  const run = async (): Promise<WindowCount> => {
    client = new Client(await ready, what);
    await client.send(options.base);
    // The last response is out before its 'finish' work (span end, a batch export) is done: let it finish.
    await sleep(500);
    const before = (await ask({ type: 'stats', flush: false }, 'stats')) as Extract<FromServer, { type: 'stats' }>;
    await callgrindControl(['-i', 'on', String(child.pid)]);
    await callgrindControl(['-z', String(child.pid)]);
    const series: number[] = [];
    const windows = options.windows ?? 1;
    let spansBefore = before.spans;
    let spansPerRequest = NaN;
    for (let w = 1; w <= windows; w++) {
      await client.send(options.window);
      await sleep(500);
      // A dump holds what ran since the last zero or dump, and zeroes the counters.
      await callgrindControl(['-d', String(child.pid)]);
      const after = (await ask({ type: 'stats', flush: false }, 'stats')) as Extract<FromServer, { type: 'stats' }>;
      spansPerRequest = (after.spans - spansBefore) / options.window;
      spansBefore = after.spans;
      const dump = `${out}.${w}`;
      for (let i = 0; i < 100 && !existsSync(dump); i++) await sleep(100);
      const summary = /^summary: (\d+)/m.exec(readFileSync(dump, 'utf8'));
      if (summary === null) throw new Error(`${what}: no summary line in callgrind's dump`);
      if (options.keep !== undefined)
        copyFileSync(dump, join(options.keep, `callgrind.${framework}.${candidate}${tag}.w${w}`));
      series.push(Number(summary[1]) / options.window);
    }
    return { perRequest: series[series.length - 1], spansPerRequest, series };
  };
  const timer = setTimeout(() => child.kill('SIGKILL'), 900_000);
  return run().finally(async () => {
    clearTimeout(timer);
    client?.close();
    if (child.exitCode === null && child.signalCode === null) {
      child.send({ type: 'stop' } satisfies ToServer);
      const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(killer);
    }
    rmSync(dir, { recursive: true, force: true });
  });
}

/** Runs `jobs` `width` at a time. */
export async function parallel<T>(jobs: ReadonlyArray<() => Promise<T>>, width = 2): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  };
  await Promise.all(Array.from({ length: width }, worker));
  return results;
}

/** Every process's count, keyed `framework/candidate`, `repeat` processes each. */
export async function countAll(
  options: SteadyOptions,
  log: (line: string) => void = () => undefined,
): Promise<Map<string, WindowCount[]>> {
  const jobs: Array<readonly [Framework, AnyCandidate, number]> = [];
  for (let r = 0; r < options.repeat; r++)
    for (const f of options.frameworks) for (const c of options.candidates) jobs.push([f, c, r]);
  const counts = new Map<string, WindowCount[]>();
  await parallel(
    jobs.map(([f, c, r]) => async () => {
      let n: WindowCount;
      try {
        n = await countWindow(f, c, options, `.${r}`);
      } catch (err) {
        // Under valgrind on a loaded machine a request can time out: count that process again, once.
        log(`  ${f}/${c}: ${(err as Error).message}; counting again`);
        n = await countWindow(f, c, options, `.${r}`);
      }
      const key = `${f}/${c}`;
      counts.set(key, [...(counts.get(key) ?? []), n]);
      log(
        `  ${key} (${r + 1}/${options.repeat}): ${fmt(n.perRequest)} instructions per request${n.series.length > 1 ? ` (windows: ${n.series.map((x) => fmt(x)).join(', ')})` : ''}`,
      );
    }),
  );
  return counts;
}

export const LABELS: Record<AnyCandidate, string> = {
  bare: 'bare',
  context: 'bare + context manager',
  floor: 'floor',
  'attr-floor': 'attribute floor',
  meshtrace: '**meshtrace**',
  'public-api': 'meshtrace, shortcuts off',
  'sdk-disabled': 'meshtrace, propagate only (OTEL_SDK_DISABLED)',
  nodesdk: 'NodeSDK alone (+ http, undici)',
  'in-nodesdk': 'NodeSDK + meshtrace (enriches its span)',
  'nodesdk-own': 'NodeSDK, incoming off, + meshtrace (own span)',
  otel: 'OTel (official route)',
};
export const NAMES: Record<Framework, string> = {
  express: 'Express 5',
  fastify: 'Fastify 5',
  koa: 'Koa 3 + @koa/router',
  http: 'node:http',
};

/** Mean of the processes' counts, and their spread (highest − lowest) as a share of the mean. */
export function summarize(counts: readonly WindowCount[] | undefined): { mean: number; spread: number } {
  if (counts === undefined || counts.length === 0) return { mean: NaN, spread: NaN };
  const values = counts.map((c) => c.perRequest);
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return { mean, spread: (Math.max(...values) - Math.min(...values)) / mean };
}

/** The steady-state table (one row per framework and candidate) and one check per target. */
export function steadySection(options: SteadyOptions, counts: Map<string, WindowCount[]>): Section {
  const node = `Node ${process.versions.node}`;
  const major = Number(process.versions.node.split('.')[0]);
  const rows: string[][] = [];
  const checks: Check[] = [];
  for (const f of options.frameworks) {
    const of = (c: AnyCandidate) => summarize(counts.get(`${f}/${c}`)).mean;
    const has = (c: AnyCandidate) => counts.has(`${f}/${c}`);
    const added = (c: AnyCandidate) => of(c) - of('bare');
    for (const c of options.candidates) {
      if (!has(c)) continue;
      const s = summarize(counts.get(`${f}/${c}`));
      const spans = counts.get(`${f}/${c}`)?.[0]?.spansPerRequest ?? NaN;
      rows.push([
        NAMES[f],
        LABELS[c],
        fmt(s.mean / 1000, 1),
        c === 'bare' ? '—' : fmt(added(c) / 1000, 1),
        has('attr-floor') && c !== 'bare' && c !== 'attr-floor' ? `${fmt(added(c) / added('attr-floor'), 2)}x` : '',
        (counts.get(`${f}/${c}`)?.length ?? 0) > 1 ? `${fmt(s.spread * 100, 2)}%` : '',
        c === 'bare' || c === 'context' || c === 'sdk-disabled' ? '—' : fmt(spans, 2),
      ]);
    }
    const name = `${NAMES[f]} (${node})`;
    if (has('meshtrace') && has('attr-floor')) {
      const r = added('meshtrace') / added('attr-floor');
      checks.push({
        target: `${name}: meshtrace ≤ 1.3x the attribute floor`,
        measured: `${fmt(r, 2)}x`,
        met: r <= 1.3,
      });
    }
    if (has('meshtrace') && has('otel')) {
      const limit = f === 'http' ? 1 / 2 : 1 / 3;
      const r = added('meshtrace') / added('otel');
      checks.push({
        target: `${name}: meshtrace ≤ ${f === 'http' ? '1/2' : '1/3'} of the official route`,
        measured: fmt(r, 2),
        met: r <= limit,
      });
    }
    if (has('nodesdk') && has('in-nodesdk')) {
      const r = (of('in-nodesdk') - of('nodesdk')) / added('nodesdk');
      checks.push({
        target: `${name}: (NodeSDK + meshtrace) − NodeSDK ≤ 15% of what NodeSDK adds`,
        measured: `${fmt(r * 100, 1)}% (${fmt((of('in-nodesdk') - of('nodesdk')) / 1000, 1)}k of ${fmt(added('nodesdk') / 1000, 1)}k)`,
        met: r <= 0.15,
      });
    }
    if (has('in-nodesdk') && has('nodesdk-own')) {
      const d = of('nodesdk-own') - of('in-nodesdk');
      checks.push({
        target: `${name}: same spans, incoming off + meshtrace's own span against enriching instrumentation-http's (information)`,
        measured: `${d < 0 ? 'own span' : 'enriching'} costs less by ${fmt(Math.abs(d) / 1000, 1)}k`,
        met: true,
      });
    }
    if (has('sdk-disabled')) {
      const limit = major >= 24 ? 15_000 : 40_000;
      checks.push({
        target: `${name}: propagate only (OTEL_SDK_DISABLED) adds ≤ 15k instructions on Node 24, ≤ 40k on Node 22`,
        measured: `${fmt(added('sdk-disabled') / 1000, 1)}k`,
        met: added('sdk-disabled') <= limit,
      });
    }
  }
  const lines = [
    ...table(
      [
        'framework',
        'candidate',
        'instructions per request (thousands)',
        'added over bare',
        "added ÷ attribute floor's",
        'spread between processes',
        'spans per request',
      ],
      ['l', 'l', 'r', 'r', 'r', 'r', 'r'],
      rows,
    ),
    '',
    `${node}, in the steady state (a negative "added" means the candidate made the framework itself cheaper: on Node 22 meshtrace's Express adapter turns Express's per-request objects into dictionaries, which the official route and the attribute floor do not): callgrind counts each server process's instructions (JIT-compiled code, GC and the event loop included) over requests ${options.base + 1}–${options.base + options.window}, after ${options.base} requests in the same process; one keep-alive connection for the whole run, \`GET /users/42\` with a sampled \`traceparent\`. V8 flags: \`${STEADY_FLAGS.join(' ')}\`; the batch processor's timer is off, so it exports when 512 spans are queued. Where a spread is shown the candidate ran in more than one process: the count is their mean, the spread (highest − lowest) ÷ mean.`,
  ];
  return { title: `Steady state: instructions added per request over the bare framework (${node})`, lines, checks };
}

function arg(name: string): string | undefined {
  return process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
}

function listArg<T extends string>(name: string, allowed: readonly T[]): T[] | undefined {
  const value = arg(name);
  if (value === undefined) return undefined;
  const items = value.split(',');
  for (const item of items)
    if (!allowed.includes(item as T)) throw new TypeError(`--${name}: unknown ${item}; expected ${allowed.join(', ')}`);
  return items as T[];
}

/** Batch-size multiples only: a window that ends mid-batch would count a share of one export. */
export function checkBatchMultiple(name: string, n: number): number {
  if (!Number.isInteger(n) || n <= 0 || n % 512 !== 0)
    throw new TypeError(`--${name} must be a positive multiple of 512 (the batch size), got ${n}`);
  return n;
}

export const STEADY_FULL: SteadyOptions = {
  base: 8192,
  window: 2048,
  frameworks: FRAMEWORKS,
  candidates: ['bare', 'attr-floor', 'meshtrace', 'otel', 'nodesdk', 'in-nodesdk', 'nodesdk-own', 'sdk-disabled'],
  repeat: 1,
};

/** What a run saves (`--save=<file>`) so runs of one Node version can be put in one table (`--load=<file,file>`). */
interface Saved {
  readonly node: string;
  readonly base: number;
  readonly window: number;
  readonly counts: Record<string, WindowCount[]>;
}

function load(files: readonly string[]): {
  options: Pick<SteadyOptions, 'base' | 'window'>;
  counts: Map<string, WindowCount[]>;
} {
  const counts = new Map<string, WindowCount[]>();
  let options: Pick<SteadyOptions, 'base' | 'window'> | undefined;
  for (const file of files) {
    const saved = JSON.parse(readFileSync(file, 'utf8')) as Saved;
    if (saved.node !== process.versions.node)
      throw new TypeError(`${file} was counted on Node ${saved.node}, not ${process.versions.node}`);
    if (options !== undefined && (options.base !== saved.base || options.window !== saved.window))
      throw new TypeError(`${file} counted another window`);
    options = { base: saved.base, window: saved.window };
    for (const [key, list] of Object.entries(saved.counts)) counts.set(key, [...(counts.get(key) ?? []), ...list]);
  }
  if (options === undefined) throw new TypeError('--load: no file');
  return { options, counts };
}

/** The frameworks and candidates of some counts, in their usual order. */
function present(counts: Map<string, WindowCount[]>): Pick<SteadyOptions, 'frameworks' | 'candidates' | 'repeat'> {
  const keys = [...counts.keys()];
  return {
    frameworks: FRAMEWORKS.filter((f) => keys.some((k) => k.startsWith(`${f}/`))),
    candidates: [
      ...STEADY_FULL.candidates,
      ...ALL_CANDIDATES.filter((c) => !STEADY_FULL.candidates.includes(c)),
    ].filter((c) => keys.some((k) => k.endsWith(`/${c}`))),
    repeat: Math.max(...[...counts.values()].map((l) => l.length)),
  };
}

function print(section: Section): void {
  console.log(section.lines.join('\n'));
  for (const c of section.checks) console.log(`${c.met ? 'met' : 'MISSED'}: ${c.target}: ${c.measured}`);
}

if (require.main === module && arg('load') !== undefined) {
  const { options, counts } = load(arg('load')!.split(','));
  print(steadySection({ ...options, ...present(counts) }, counts));
} else if (require.main === module) {
  const options: SteadyOptions = {
    base: checkBatchMultiple('base', Number(arg('base') ?? STEADY_FULL.base)),
    window: checkBatchMultiple('window', Number(arg('window') ?? STEADY_FULL.window)),
    frameworks: listArg('frameworks', FRAMEWORKS) ?? STEADY_FULL.frameworks,
    candidates: listArg('candidates', ALL_CANDIDATES) ?? STEADY_FULL.candidates,
    repeat: Number(arg('repeat') ?? 1),
    keep: arg('keep'),
    windows: Number(arg('windows') ?? 1),
  };
  const started = Date.now();
  countAll(options, console.log).then(
    (counts) => {
      const save = arg('save');
      if (save !== undefined)
        writeFileSync(
          save,
          JSON.stringify({
            node: process.versions.node,
            base: options.base,
            window: options.window,
            counts: Object.fromEntries(counts),
          } satisfies Saved),
        );
      print(steadySection(options, counts));
      console.log(`(${Math.round((Date.now() - started) / 1000)} s)`);
    },
    (err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
