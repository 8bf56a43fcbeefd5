// What a collector outage costs a traced service: a node:http service with meshHttp under autocannon
// load while the OTLP collector is healthy, refusing, blackholed, 2 s slow and answering 503, one run
// each in one service process; and heap + external memory after a full GC (RSS beside them) over a long run
// against a refusing collector.
//   node bench/dist/outage.js [latency|memory|all] [--seconds N] [--rounds N] [--connections N]
// The service runs in a child process so the load generator, fault proxy and collector do not share
// its event loop; the child reports its memory and exportStats() over IPC.
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import autocannon from 'autocannon';
import { trace } from '@opentelemetry/api';
import { exportStats, setupMeshTracing } from '@meshtrace/node';
import type { ExportStats } from '@meshtrace/node';
import { meshHttp } from '@meshtrace/http';
import { startCollector, startFaultProxy, stopChild } from '@meshtrace/testkit';
import type { FaultMode } from '@meshtrace/testkit';
import { fmt, median, rotate, sleep, table } from './stats';
import type { Check, Section } from './stats';

/** What a service child reports when asked. */
export interface ServiceStats {
  readonly rss: number;
  readonly heapUsed: number;
  /** Memory of C++ objects bound to JavaScript ones (Buffers included), in bytes. */
  readonly external: number;
  /** ArrayBuffers and SharedArrayBuffers (Buffers included; part of `external`), in bytes. */
  readonly arrayBuffers: number;
  /** True when the service ran a full GC before measuring (it was started with --expose-gc and asked to). */
  readonly collected: boolean;
  readonly export: ExportStats;
  /** Whatever else the service keeps (span counts, diag lines). */
  readonly extra: Record<string, number>;
}

/** A service running in a child process, queried over IPC. */
export interface ServiceProcess {
  readonly port: number;
  /** The service's counts; with `collect`, after a full GC, so heap and external hold only what is still referenced. */
  stats(collect?: boolean): Promise<ServiceStats>;
  stop(): Promise<void>;
}

/** Forks `script` with `args`; the child calls {@link serveChild} and reports its port. */
export async function startService(
  script: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  execArgv: string[] = [],
): Promise<ServiceProcess> {
  const child: ChildProcess = fork(script, args, {
    env: { ...process.env, ...env },
    execArgv,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const waiting = new Map<number, (s: ServiceStats) => void>();
  let next = 0;
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const port = await new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    void exited.then((code) => reject(new Error(`service exited with ${code} before it listened`)));
    child.on('message', (m: { type: string; port?: number; id?: number; stats?: ServiceStats }) => {
      if (m.type === 'ready') resolve(m.port!);
      else if (m.type === 'stats') waiting.get(m.id!)?.(m.stats!);
    });
  });
  return {
    port,
    stats: (collect = false) =>
      new Promise((resolve) => {
        const id = next++;
        waiting.set(id, (s) => {
          waiting.delete(id);
          resolve(s);
        });
        child.send({ type: 'stats', id, collect });
      }),
    stop: async () => {
      await stopChild(child, 10_000);
    },
  };
}

/** In the child: listens on 127.0.0.1, tells the parent its port and answers stats requests. */
export function serveChild(
  server: ReturnType<typeof createServer>,
  extra: () => Record<string, number> = () => ({}),
  onStop: () => Promise<void> = async () => undefined,
): void {
  server.listen(0, '127.0.0.1', () => process.send?.({ type: 'ready', port: (server.address() as AddressInfo).port }));
  process.on('message', (m: { type: string; id: number; collect?: boolean }) => {
    if (m.type !== 'stats') return;
    const gc = (globalThis as { gc?: () => void }).gc;
    const collected = m.collect === true && gc !== undefined;
    if (collected) gc();
    const { rss, heapUsed, external, arrayBuffers } = process.memoryUsage();
    process.send?.({
      type: 'stats',
      id: m.id,
      stats: {
        rss,
        heapUsed,
        external,
        arrayBuffers,
        collected,
        export: exportStats(),
        extra: extra(),
      } satisfies ServiceStats,
    });
  });
  const stop = () => {
    server.closeAllConnections();
    server.close();
    void onStop().finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('disconnect', stop);
}

export const MB = 1024 * 1024;

/** Options of {@link runOutage} and {@link runOutageMemory}; all optional. */
export interface OutageOptions {
  /** Seconds of one measured run (latency) or of the whole run (memory). Default 5 and 60. */
  seconds?: number;
  /** Runs per collector mode, the mode order rotated every round (latency). Default 2. */
  rounds?: number;
  /** Concurrent connections. Default 50. */
  connections?: number;
}

/** One collector mode under load, over all rounds. */
export interface OutageRow {
  readonly mode: string;
  /** Median over rounds. */
  readonly requestsPerSecond: number;
  /** Median over rounds, in ms. */
  readonly p99Ms: number;
  /** Median over rounds of req/s against the healthy run of the same round. */
  readonly requestsRatio: number;
  /** Median over rounds of p99 against the healthy run of the same round. */
  readonly p99Ratio: number;
  readonly non2xx: number;
  readonly errors: number;
  /** The service's RSS after its last run in this mode. */
  readonly rssMb: number;
  readonly exported: number;
  readonly failed: number;
  readonly dropped: number;
}

const MODES: Array<{ name: string; mode: FaultMode; delayMs?: number }> = [
  { name: 'healthy', mode: 'pass' },
  { name: 'refused', mode: 'refuse' },
  { name: 'blackholed', mode: 'blackhole' },
  { name: 'delayed 2 s', mode: 'delay', delayMs: 2000 },
  { name: 'http 503', mode: 'http-503' },
];

async function until(ok: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await ok()) return true;
    await sleep(100);
  }
  return false;
}

interface Run {
  readonly rps: number;
  readonly p99: number;
  readonly non2xx: number;
  readonly errors: number;
  readonly rss: number;
  readonly exported: number;
  readonly failed: number;
  readonly dropped: number;
}

/**
 * Runs the service under load in every collector mode, `rounds` times with the order rotated, and
 * returns a row per mode (healthy first).
 */
export async function runOutage(
  options: OutageOptions = {},
  log: (line: string) => void = () => undefined,
): Promise<OutageRow[]> {
  const seconds = options.seconds ?? 5;
  const rounds = options.rounds ?? 2;
  const connections = options.connections ?? 50;
  const collector = await startCollector();
  const proxy = await startFaultProxy({ targetPort: collector.port });
  // A short schedule, so the healthy run really exports while it is measured.
  const service = await startService(__filename, ['--serve'], {
    OTEL_EXPORTER_OTLP_ENDPOINT: proxy.url,
    OTEL_BSP_SCHEDULE_DELAY: process.env.OTEL_BSP_SCHEDULE_DELAY ?? '1000',
  });
  const url = `http://127.0.0.1:${service.port}/`;
  const runs = new Map<string, Run[]>(MODES.map((m) => [m.name, []]));
  try {
    await autocannon({ url, connections, duration: Math.min(3, seconds) });
    for (let r = 0; r < rounds; r++) {
      for (const m of rotate(MODES, r)) {
        // Each run starts from a healthy, drained pipeline, so one outage's backlog is not the next one's.
        await proxy.setMode('pass');
        await until(async () => {
          const s = await service.stats();
          return s.export.queued === 0 && s.export.inFlight === 0;
        }, 15_000);
        await proxy.setMode(m.mode, m.delayMs);
        const before = (await service.stats()).export;
        const result = await autocannon({ url, connections, duration: seconds });
        const after = await service.stats();
        const run = {
          rps: result.requests.total / seconds,
          p99: result.latency.p99,
          non2xx: result.non2xx,
          errors: result.errors + result.timeouts,
          rss: after.rss,
          exported: after.export.exported - before.exported,
          failed: after.export.failed - before.failed,
          dropped: after.export.dropped - before.dropped,
        };
        runs.get(m.name)!.push(run);
        log(`  round ${r + 1}/${rounds} ${m.name}: ${fmt(run.rps)} req/s, p99 ${run.p99} ms, dropped ${run.dropped}`);
      }
    }
  } finally {
    await service.stop();
    await proxy.close();
    await collector.close();
  }
  const healthy = runs.get('healthy')!;
  const sum = (list: Run[], key: 'non2xx' | 'errors' | 'exported' | 'failed' | 'dropped') =>
    list.reduce((n, x) => n + x[key], 0);
  return MODES.map(({ name }) => {
    const list = runs.get(name)!;
    return {
      mode: name,
      requestsPerSecond: median(list.map((x) => x.rps)),
      p99Ms: median(list.map((x) => x.p99)),
      // Runs of one round are seconds apart; their ratios are what drift on a shared machine disturbs least.
      requestsRatio: median(list.map((x, i) => x.rps / healthy[i].rps)),
      p99Ratio: median(list.map((x, i) => x.p99 / healthy[i].p99)),
      non2xx: sum(list, 'non2xx'),
      errors: sum(list, 'errors'),
      rssMb: list[list.length - 1].rss / MB,
      exported: sum(list, 'exported'),
      failed: sum(list, 'failed'),
      dropped: sum(list, 'dropped'),
    };
  });
}

/** The rows as a section for the bench report: each mode's ratio to the healthy run; p99 within 10% meets the target. */
export function outageSection(rows: readonly OutageRow[], options: OutageOptions = {}): Section {
  const checks: Check[] = [];
  const body = rows.map((r) => {
    if (r.mode !== 'healthy')
      checks.push({
        target: `collector ${r.mode}: p99 within 10% of the healthy run`,
        measured: `${fmt(r.p99Ratio, 2)}x`,
        met: r.p99Ratio <= 1.1,
      });
    return [
      r.mode,
      fmt(r.requestsPerSecond),
      fmt(r.requestsRatio, 2),
      fmt(r.p99Ms, 1),
      fmt(r.p99Ratio, 2),
      fmt(r.non2xx + r.errors),
      fmt(r.rssMb),
      fmt(r.exported),
      fmt(r.failed),
      fmt(r.dropped),
    ];
  });
  const lines = [
    ...table(
      [
        'collector',
        'req/s',
        'of healthy',
        'p99 (ms)',
        'of healthy',
        'errors + non-2xx',
        'RSS (MB)',
        'exported',
        'failed',
        'dropped',
      ],
      ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
      body,
    ),
    '',
    `node:http with \`meshHttp\` and \`setupMeshTracing\` (OTLP/HTTP through a fault proxy to a loopback collector; batch processor defaults but a 1 s schedule), autocannon with ${options.connections ?? 50} connections, ${options.rounds ?? 2} rounds of ${options.seconds ?? 5} s per collector mode in one service process, the mode order rotated every round and the pipeline drained before every run. req/s and p99 are medians over rounds, "of healthy" the median of the ratios to the healthy run of the same round; exported, failed and dropped are totals over rounds. Spans are counted by \`exportStats()\` in the service: exported, failed (export error or timeout) and dropped (queue full).`,
    '',
    '- During an outage the queue fills within a second and later spans are dropped before they are serialized, so the service does less work than when healthy: an outage mode slower than healthy would point at retry storms, pile-ups of hung exports or memory pressure.',
    "- The fault proxy and the collector run in the load generator's process; the service has a process of its own.",
    '- Failed counts stay low in short runs: the OTLP exporter retries one batch for up to its 10 s timeout, and a batch still retrying when the proxy heals is delivered.',
  ];
  return { title: 'Collector outage (req/s, p99 latency, spans lost)', lines, checks };
}

/** Memory over a long run against a collector that refuses connections. */
export interface MemoryResult {
  /** The Node version the service ran on (`v24.21.0`). */
  readonly node: string;
  readonly seconds: number;
  readonly warmupSeconds: number;
  /** RSS in MB, one sample per second (information: it includes what the allocator keeps). */
  readonly rssMb: readonly number[];
  /** V8 heap in use in MB after a full GC, sampled with RSS. */
  readonly heapMb: readonly number[];
  /** External memory (Buffers included) in MB after the same GC. */
  readonly externalMb: readonly number[];
  /** ArrayBuffers in MB (part of external). */
  readonly arrayBuffersMb: readonly number[];
  /** Heap + external: last sample minus the sample at the end of warm-up, in MB. */
  readonly growthMb: number;
  /** Heap + external: highest sample after warm-up minus the sample at the end of warm-up, in MB. */
  readonly peakGrowthMb: number;
  /** RSS: last sample minus the sample at the end of warm-up, in MB (information). */
  readonly rssGrowthMb: number;
  /** RSS: highest sample after warm-up minus the sample at the end of warm-up, in MB (information). */
  readonly rssPeakGrowthMb: number;
  readonly requests: number;
  readonly dropped: number;
  readonly failed: number;
  readonly peakQueued: number;
  /** Why the last export failed. */
  readonly lastError: string | undefined;
}

/** V8 flags of the memory run's service: a fixed young generation (its size is not a leak), gc() to sample after a full GC. */
export const MEMORY_FLAGS = ['--max-semi-space-size=16', '--expose-gc'];

/**
 * Sustained load while the OTLP endpoint refuses connections, sampling the service's heap and external memory
 * after a full GC every second, with RSS beside them.
 */
export async function runOutageMemory(
  options: OutageOptions = {},
  log: (line: string) => void = () => undefined,
): Promise<MemoryResult> {
  const seconds = options.seconds ?? 60;
  const connections = options.connections ?? 50;
  const warmupSeconds = Math.max(1, Math.min(10, Math.floor(seconds / 4)));
  const collector = await startCollector();
  const proxy = await startFaultProxy({ targetPort: collector.port, mode: 'refuse' });
  const service = await startService(__filename, ['--serve'], { OTEL_EXPORTER_OTLP_ENDPOINT: proxy.url }, MEMORY_FLAGS);
  const rssMb: number[] = [];
  const heapMb: number[] = [];
  const externalMb: number[] = [];
  const arrayBuffersMb: number[] = [];
  try {
    const before = (await service.stats()).export;
    const load = autocannon({ url: `http://127.0.0.1:${service.port}/`, connections, duration: seconds });
    const started = Date.now();
    for (let i = 1; i <= seconds; i++) {
      await sleep(started + i * 1000 - Date.now());
      const s = await service.stats(true);
      if (!s.collected) throw new Error('the service could not run a full GC (no --expose-gc)');
      rssMb.push(s.rss / MB);
      heapMb.push(s.heapUsed / MB);
      externalMb.push(s.external / MB);
      arrayBuffersMb.push(s.arrayBuffers / MB);
      const e = s.export;
      log(
        `  ${i} s: RSS ${fmt(s.rss / MB)} MB, heap ${fmt(s.heapUsed / MB, 1)} MB, external ${fmt(s.external / MB, 1)} MB, queued ${e.queued}, in flight ${e.inFlight}, failed ${e.failed - before.failed}, dropped ${e.dropped - before.dropped}`,
      );
    }
    const result = await load;
    const after = (await service.stats()).export;
    const retained = heapMb.map((h, i) => h + externalMb[i]);
    const growth = (series: readonly number[]) => ({
      last: series[series.length - 1] - series[warmupSeconds - 1],
      peak: Math.max(0, ...series.slice(warmupSeconds).map((r) => r - series[warmupSeconds - 1])),
    });
    const kept = growth(retained);
    const rss = growth(rssMb);
    return {
      node: process.version,
      seconds,
      warmupSeconds,
      rssMb,
      heapMb,
      externalMb,
      arrayBuffersMb,
      growthMb: kept.last,
      peakGrowthMb: kept.peak,
      rssGrowthMb: rss.last,
      rssPeakGrowthMb: rss.peak,
      requests: result.requests.total,
      dropped: after.dropped - before.dropped,
      failed: after.failed - before.failed,
      peakQueued: after.peakQueued,
      lastError: after.lastError,
    };
  } finally {
    await service.stop();
    await proxy.close();
    await collector.close();
  }
}

/** Heap + external growth after warm-up that a leak-free service stays under (the span queue is full by then). */
export const RETAINED_GROWTH_LIMIT_MB = 8;

/**
 * The memory result as a section for the bench report: heap + external after a full GC is what a leak grows,
 * so its growth after warm-up is the check ({@link RETAINED_GROWTH_LIMIT_MB}); RSS is information.
 */
export function memorySection(r: MemoryResult, options: OutageOptions = {}): Section {
  const every = Math.max(1, Math.round(r.seconds / 12));
  const seconds = r.rssMb.map((_, i) => i + 1).filter((second) => second % every === 0 || second === r.warmupSeconds);
  const row = (label: string, series: readonly number[], digits: number) => [
    `${label}, Node ${r.node}`,
    ...seconds.map((second) => fmt(series[second - 1], digits)),
  ];
  const lines = [
    ...table(
      ['second', ...seconds.map((second) => (second === r.warmupSeconds ? `${second} (warm)` : String(second)))],
      ['l', ...seconds.map(() => 'r' as const)],
      [
        row(
          'heap used + external (MB)',
          r.heapMb.map((h, i) => h + r.externalMb[i]),
          1,
        ),
        row('heap used (MB)', r.heapMb, 1),
        row('external (MB)', r.externalMb, 1),
        row('array buffers (MB)', r.arrayBuffersMb, 1),
        row('RSS (MB, information)', r.rssMb, 0),
      ],
    ),
    '',
    `The OTLP endpoint refuses connections for ${r.seconds} s of autocannon load (${options.connections ?? 50} connections) on a node:http service with meshHttp and setupMeshTracing, started with \`${MEMORY_FLAGS.join(' ')}\`: ${fmt(r.requests)} requests, ${fmt(r.dropped)} spans dropped, ${fmt(r.failed)} failed (last: ${r.lastError ?? 'none'}), queue peak ${fmt(r.peakQueued)} spans. Every second the service runs a full GC and reports heap used, external memory (array buffers are part of it) and RSS. Heap + external growth after the ${r.warmupSeconds} s warm-up: ${fmt(r.growthMb, 1)} MB at the end, ${fmt(r.peakGrowthMb, 1)} MB at most; RSS (information: the allocator keeps freed pages, and a 16 MB young generation is two 16 MB semi-spaces) ${fmt(r.rssGrowthMb, 1)} MB at the end, ${fmt(r.rssPeakGrowthMb, 1)} MB at most.`,
  ];
  const checks: Check[] = [
    {
      target: `collector refusing under sustained load (Node ${r.node}): heap + external growth after warm-up ≤ ${RETAINED_GROWTH_LIMIT_MB} MB`,
      measured: `${fmt(r.peakGrowthMb, 1)} MB`,
      met: r.peakGrowthMb <= RETAINED_GROWTH_LIMIT_MB,
    },
    {
      target: `collector refusing under sustained load (Node ${r.node}): RSS growth after warm-up (information)`,
      measured: `${fmt(r.rssPeakGrowthMb, 1)} MB`,
      met: true,
    },
  ];
  return { title: `Memory while the collector refuses (Node ${r.node})`, lines, checks };
}

function print(section: Section): void {
  console.log(
    [
      `## ${section.title}`,
      '',
      ...section.lines,
      '',
      ...section.checks.map((c) => `${c.met ? 'met' : 'MISSED'}: ${c.target}: ${c.measured}`),
    ].join('\n'),
  );
}

function serve(): void {
  setupMeshTracing({ serviceName: 'bench-outage', log: false, env: process.env });
  const server = createServer(
    meshHttp((_req, res) => {
      res.end(trace.getActiveSpan()?.spanContext().traceId ?? 'none');
    }),
  );
  serveChild(server);
}

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  const value = Number(process.argv[i + 1]);
  if (!Number.isFinite(value) || value <= 0)
    throw new TypeError(`${name} must be a positive number, got ${process.argv[i + 1]}`);
  return value;
}

async function main(): Promise<void> {
  const what = process.argv[2] && !process.argv[2].startsWith('--') ? process.argv[2] : 'latency';
  if (!['latency', 'memory', 'all'].includes(what)) throw new TypeError(`unknown mode ${what}: latency, memory or all`);
  const connections = flag('--connections', 50);
  if (what !== 'memory') {
    const options = { seconds: flag('--seconds', 5), rounds: flag('--rounds', 2), connections };
    print(outageSection(await runOutage(options, console.log), options));
  }
  if (what !== 'latency') {
    if (what === 'all') console.log('');
    const options = { seconds: flag('--seconds', 60), connections };
    print(memorySection(await runOutageMemory(options, console.log), options));
  }
}

if (require.main === module) {
  if (process.argv.includes('--serve')) serve();
  else
    main().catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
}
