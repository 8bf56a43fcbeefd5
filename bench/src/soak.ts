// Load soak per adapter (node:http via meshHttp, Express, Fastify, Koa) at saturation: every request
// carries its own random traceparent and the handler answers with the trace id it sees after an
// await, so any context leaking between concurrent requests shows as a mismatch. Alongside the load,
// clients abort requests mid-flight (every span must still end exactly once) and one request in 16
// makes the requestHook throw (the request must still succeed, the error reported through diag,
// rate-limited). RSS is sampled every second after warm-up.
//   node bench/dist/soak.js [--seconds N] [--connections N] [--adapters http,express,fastify,koa]
// Exits non-zero when a check fails.
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { connect } from 'node:net';
import autocannon from 'autocannon';
import { DiagLogLevel, diag, trace } from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace';
import { setupMeshTracing } from '@meshtrace/node';
import { MB, serveChild, startService } from './outage';
import { fmt, sleep, table } from './stats';
import type { Check, Section } from './stats';

export const ADAPTERS = ['http', 'express', 'fastify', 'koa'] as const;
export type Adapter = (typeof ADAPTERS)[number];
const NAMES: Record<Adapter, string> = {
  http: 'node:http (meshHttp)',
  express: 'Express',
  fastify: 'Fastify',
  koa: 'Koa',
};

/** Options of {@link runSoak}; all optional. */
export interface SoakOptions {
  /** Seconds of load per adapter. Default 60. */
  seconds?: number;
  /** Concurrent connections. Default 50. */
  connections?: number;
  adapters?: readonly Adapter[];
}

/** What one adapter did under the soak. */
export interface SoakRow {
  readonly adapter: Adapter;
  readonly requests: number;
  readonly requestsPerSecond: number;
  readonly p99Ms: number;
  readonly non2xx: number;
  readonly errors: number;
  /** Responses whose trace id was the request's own. */
  readonly verified: number;
  /** Responses carrying another request's trace id (or none). */
  readonly leaks: number;
  readonly hookThrows: number;
  readonly hookWarnings: number;
  readonly abortsSent: number;
  /** Spans that ended with the client-aborted event. */
  readonly abortedSpans: number;
  readonly spansStarted: number;
  readonly spansEnded: number;
  /** Spans still open once the load stopped and in-flight requests finished. */
  readonly spansOpen: number;
  /** Ends of a span that had already ended (or never started). */
  readonly doubleEnds: number;
  readonly warmupSeconds: number;
  readonly rssWarmMb: number;
  readonly rssGrowthMb: number;
}

const HOOK_EVERY = 16;
const HOOK_INTERVAL_S = 10;

/** Fresh ids each call: a 32-digit trace id and a 16-digit parent id. */
function ids(): [string, string] {
  const hex = randomBytes(24).toString('hex');
  return [hex.slice(0, 32), hex.slice(32)];
}

/** Opens a request to the slow route and abandons it mid-flight. */
function abortingRequest(port: number): Promise<void> {
  return new Promise((resolve) => {
    const [traceId, parentId] = ids();
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => resolve());
    socket.once('connect', () => {
      socket.write(`GET /slow HTTP/1.1\r\nhost: 127.0.0.1\r\ntraceparent: 00-${traceId}-${parentId}-01\r\n\r\n`);
      setTimeout(() => {
        socket.destroy();
        resolve();
      }, 20);
    });
  });
}

async function soakOne(
  adapter: Adapter,
  seconds: number,
  connections: number,
  log: (line: string) => void,
): Promise<SoakRow> {
  const service = await startService(__filename, ['--serve', adapter]);
  const warmupSeconds = Math.max(1, Math.min(10, Math.floor(seconds / 4)));
  let sent = 0;
  let hookThrows = 0;
  let verified = 0;
  let leaks = 0;
  let abortsSent = 0;
  const rss: number[] = [];
  try {
    const load = autocannon({
      url: `http://127.0.0.1:${service.port}`,
      connections,
      pipelining: 1,
      duration: seconds,
      requests: [
        {
          method: 'GET',
          path: '/trace',
          setupRequest: (request, context) => {
            const [traceId, parentId] = ids();
            (context as { traceId?: string }).traceId = traceId;
            const headers: Record<string, string> = { traceparent: `00-${traceId}-${parentId}-01` };
            if (++sent % HOOK_EVERY === 0) {
              headers['x-hook-throw'] = '1';
              hookThrows++;
            }
            return { ...request, headers };
          },
          onResponse: (status, body, context) => {
            // One request per connection at a time, so the context is this response's request.
            if (status >= 200 && status < 300 && body === (context as { traceId?: string }).traceId) verified++;
            else if (status >= 200 && status < 300) leaks++;
          },
        },
      ],
    });
    let loading = true;
    const aborts = (async () => {
      while (loading) {
        await Promise.all(Array.from({ length: 5 }, () => abortingRequest(service.port)));
        abortsSent += 5;
        await sleep(50);
      }
    })();
    const started = Date.now();
    for (let i = 1; i <= seconds; i++) {
      await sleep(started + i * 1000 - Date.now());
      rss.push((await service.stats()).rss / MB);
    }
    const result = await load;
    loading = false;
    await aborts;
    // The slow route answers 200 ms after it is called; give the last aborted requests time to finish.
    let stats = await service.stats();
    for (let waited = 0; stats.extra.open > 0 && waited < 5000; waited += 100) {
      await sleep(100);
      stats = await service.stats();
    }
    const x = stats.extra;
    const base = rss[warmupSeconds - 1];
    const row: SoakRow = {
      adapter,
      requests: result.requests.total,
      requestsPerSecond: result.requests.total / seconds,
      p99Ms: result.latency.p99,
      non2xx: result.non2xx,
      errors: result.errors + result.timeouts,
      verified,
      leaks,
      hookThrows,
      hookWarnings: x.hookWarnings,
      abortsSent,
      abortedSpans: x.aborted,
      spansStarted: x.started,
      spansEnded: x.ended,
      spansOpen: x.open,
      doubleEnds: x.doubleEnds + x.endedSpanWarnings,
      warmupSeconds,
      rssWarmMb: base,
      rssGrowthMb: Math.max(0, ...rss.slice(warmupSeconds).map((v) => v - base)),
    };
    log(
      `  ${NAMES[adapter]}: ${fmt(row.requestsPerSecond)} req/s, p99 ${row.p99Ms} ms, ${row.leaks} leaks, ${row.spansOpen} spans open, RSS +${fmt(row.rssGrowthMb, 1)} MB`,
    );
    return row;
  } finally {
    await service.stop();
  }
}

/** Soaks each adapter in turn, each in a fresh service process. */
export async function runSoak(
  options: SoakOptions = {},
  log: (line: string) => void = () => undefined,
): Promise<SoakRow[]> {
  const rows: SoakRow[] = [];
  for (const adapter of options.adapters ?? ADAPTERS)
    rows.push(await soakOne(adapter, options.seconds ?? 60, options.connections ?? 50, log));
  return rows;
}

/** The checks one row must pass. */
export function soakChecks(r: SoakRow, seconds: number): Check[] {
  const name = NAMES[r.adapter];
  // The warner logs at most once per interval, plus the first one.
  const maxWarnings = Math.ceil(seconds / HOOK_INTERVAL_S) + 1;
  return [
    {
      target: `${name}: every response 2xx, no connection errors`,
      measured: `${r.non2xx} non-2xx, ${r.errors} errors`,
      met: r.non2xx === 0 && r.errors === 0,
    },
    {
      target: `${name}: every response carries its own request's trace id`,
      measured: `${fmt(r.verified)} verified, ${r.leaks} leaked`,
      met: r.leaks === 0 && r.verified > 0 && r.verified === r.requests,
    },
    {
      target: `${name}: every span ends exactly once, aborted requests included`,
      measured: `${r.spansStarted} started, ${r.spansEnded} ended, ${r.spansOpen} open, ${r.doubleEnds} ended twice, ${r.abortedSpans} ended as aborted`,
      met: r.spansOpen === 0 && r.doubleEnds === 0 && r.spansStarted === r.spansEnded && r.abortedSpans > 0,
    },
    {
      target: `${name}: a throwing requestHook is reported through diag, rate-limited`,
      measured: `${r.hookThrows} throws, ${r.hookWarnings} warnings`,
      met: r.hookThrows > 0 && r.hookWarnings >= 1 && r.hookWarnings <= maxWarnings,
    },
    {
      target: `${name}: RSS growth after warm-up ≤ 64 MB`,
      measured: `${fmt(r.rssGrowthMb, 1)} MB`,
      met: r.rssGrowthMb <= 64,
    },
  ];
}

/** The rows as a section for the bench report. */
export function soakSection(rows: readonly SoakRow[], options: SoakOptions = {}): Section {
  const seconds = options.seconds ?? 60;
  const body = rows.map((r) => [
    NAMES[r.adapter],
    fmt(r.requestsPerSecond),
    fmt(r.p99Ms, 1),
    fmt(r.non2xx + r.errors),
    `${fmt(r.verified)} / ${r.leaks}`,
    `${fmt(r.abortsSent)} / ${fmt(r.abortedSpans)}`,
    `${fmt(r.spansStarted)} / ${fmt(r.spansEnded)} / ${r.spansOpen} / ${r.doubleEnds}`,
    `${fmt(r.hookThrows)} / ${r.hookWarnings}`,
    fmt(r.rssWarmMb),
    fmt(r.rssGrowthMb, 1),
  ]);
  const lines = [
    ...table(
      [
        'adapter',
        'req/s',
        'p99 (ms)',
        'errors + non-2xx',
        'verified / leaked',
        'aborts sent / spans aborted',
        'spans started / ended / open / twice',
        'hook throws / warnings',
        'RSS warm (MB)',
        'RSS growth (MB)',
      ],
      ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
      body,
    ),
    '',
    `autocannon, ${options.connections ?? 50} connections, no pipelining, ${seconds} s per adapter, each in a fresh process with \`setupMeshTracing\` and a span processor that tracks open spans by id; a random sampled traceparent per request, the handler answering with the trace id active after an await. Alongside, 5 clients every 50 ms send a request to a 200 ms route and disconnect after 20 ms; one request in ${HOOK_EVERY} makes the requestHook throw. RSS growth is the highest sample after the warm-up minus the sample at its end.`,
  ];
  return {
    title: 'Soak per adapter (context leaks, span ends, hook errors, RSS)',
    lines,
    checks: rows.flatMap((r) => soakChecks(r, seconds)),
  };
}

/** Tracks open spans by span id: an end of a span not open is a double end. Memory stays at the requests in flight. */
class SpanTracker implements SpanProcessor {
  readonly open = new Set<string>();
  started = 0;
  ended = 0;
  doubleEnds = 0;
  aborted = 0;
  onStart(span: Span, _parent: Context): void {
    this.started++;
    this.open.add(span.spanContext().spanId);
  }
  onEnd(span: ReadableSpan): void {
    this.ended++;
    if (!this.open.delete(span.spanContext().spanId)) this.doubleEnds++;
    if (span.events.some((e) => e.name === 'meshtrace.client_aborted')) this.aborted++;
  }
  async forceFlush(): Promise<void> {}
  async shutdown(): Promise<void> {}
}

function traceId(): string {
  return trace.getActiveSpan()?.spanContext().traceId ?? 'none';
}

const hop = () => new Promise((resolve) => setImmediate(resolve));
const slow = () => sleep(200);

function throwsFor(header: unknown): void {
  if (header !== undefined) throw new Error('soak: requestHook failure');
}

async function serve(adapter: Adapter): Promise<void> {
  const warnings = { hook: 0, endedSpan: 0, other: 0 };
  diag.setLogger(
    {
      error: () => undefined,
      warn: (message: string) => {
        if (message.includes('requestHook threw')) warnings.hook++;
        else if (message.includes('ended Span')) warnings.endedSpan++;
        else warnings.other++;
      },
      info: () => undefined,
      debug: () => undefined,
      verbose: () => undefined,
    },
    DiagLogLevel.WARN,
  );
  const tracker = new SpanTracker();
  const tracing = setupMeshTracing({ serviceName: `soak-${adapter}`, log: false, env: {}, spanProcessors: [tracker] });
  const http = require('node:http') as typeof import('node:http');
  let server: Server;
  if (adapter === 'fastify') {
    const { fastify } = require('fastify') as typeof import('fastify');
    const { meshTrace } = require('@meshtrace/fastify') as typeof import('@meshtrace/fastify');
    const app = fastify();
    await app.register(meshTrace, { requestHook: (_span, request) => throwsFor(request.headers['x-hook-throw']) });
    app.get('/trace', async () => {
      await hop();
      return traceId();
    });
    app.get('/slow', async () => {
      await slow();
      return 'slow';
    });
    await app.ready();
    server = app.server;
  } else if (adapter === 'express') {
    const express = require('express') as typeof import('express');
    const { meshTrace } = require('@meshtrace/express') as typeof import('@meshtrace/express');
    const app = express();
    app.use(meshTrace({ requestHook: (_span, req) => throwsFor(req.headers['x-hook-throw']) }));
    app.get('/trace', async (_req, res) => {
      await hop();
      res.send(traceId());
    });
    app.get('/slow', async (_req, res) => {
      await slow();
      res.send('slow');
    });
    server = http.createServer(app);
  } else if (adapter === 'koa') {
    const Koa = require('koa') as typeof import('koa');
    const { meshTrace } = require('@meshtrace/koa') as typeof import('@meshtrace/koa');
    const app = new Koa();
    app.use(meshTrace({ requestHook: (_span, ctx) => throwsFor(ctx.headers['x-hook-throw']) }));
    app.use(async (ctx) => {
      if (ctx.path === '/trace') {
        await hop();
        ctx.body = traceId();
      } else if (ctx.path === '/slow') {
        await slow();
        ctx.body = 'slow';
      }
    });
    server = http.createServer(app.callback());
  } else {
    const { meshHttp } = require('@meshtrace/http') as typeof import('@meshtrace/http');
    const listener = (req: IncomingMessage, res: ServerResponse) => {
      if (req.url === '/slow') void slow().then(() => res.end('slow'));
      else void hop().then(() => res.end(traceId()));
    };
    server = http.createServer(
      meshHttp(listener, { requestHook: (_span, req) => throwsFor(req.headers['x-hook-throw']) }),
    );
  }
  serveChild(
    server,
    () => ({
      started: tracker.started,
      ended: tracker.ended,
      open: tracker.open.size,
      doubleEnds: tracker.doubleEnds,
      aborted: tracker.aborted,
      hookWarnings: warnings.hook,
      endedSpanWarnings: warnings.endedSpan,
      otherWarnings: warnings.other,
    }),
    () => tracing.shutdown(),
  );
}

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
}

async function main(): Promise<void> {
  const seconds = Number(flag('--seconds') ?? 60);
  const connections = Number(flag('--connections') ?? 50);
  if (!(Number.isInteger(seconds) && seconds >= 2))
    throw new TypeError(`--seconds must be an integer of at least 2, got ${flag('--seconds')}`);
  if (!(Number.isInteger(connections) && connections > 0))
    throw new TypeError(`--connections must be a positive integer, got ${flag('--connections')}`);
  const adapters = (flag('--adapters')?.split(',') ?? ADAPTERS) as Adapter[];
  for (const a of adapters)
    if (!ADAPTERS.includes(a)) throw new TypeError(`unknown adapter ${a}: ${ADAPTERS.join(', ')}`);
  const options = { seconds, connections, adapters };
  const section = soakSection(await runSoak(options, console.log), options);
  console.log([`## ${section.title}`, '', ...section.lines, ''].join('\n'));
  for (const c of section.checks) console.log(`${c.met ? 'met' : 'FAILED'}: ${c.target}: ${c.measured}`);
  const failed = section.checks.filter((c) => !c.met).length;
  if (failed > 0) {
    console.log(`\n${failed} check(s) failed.`);
    process.exitCode = 1;
  }
}

if (require.main === module) {
  const i = process.argv.indexOf('--serve');
  if (i >= 0)
    serve(process.argv[i + 1] as Adapter).catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
  else
    main().catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
}
