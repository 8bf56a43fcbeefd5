import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { receivedSpanSource } from '../backends/receiver';
import type { Span } from '../model';
import { runProbe } from '../probe/command';
import { buildMap, splitCandidates } from './graph';
import type { EdgeExample, MeshMap } from './graph';
import { layOut } from './layout';
import type { MapLayout } from './layout';
import { waterfall } from './waterfall';

/** What the map needs of a running receiver (`startReceiver`'s answer has it). */
export interface MappedReceiver {
  readonly url: string;
  readonly port: number;
  /** The spans in the window. */
  spans(): Span[];
  /** Spans accepted and evicted so far, and what the window holds now. */
  stats(): {
    readonly spans: number;
    readonly evictedSpans: number;
    readonly windowSpans: number;
    readonly windowTraces: number;
  };
}

/** Options of {@link meshMapUi}. */
export interface MeshMapUiOptions {
  /** The receiver whose window the map shows, and which the probe form reads spans from. */
  readonly receiver: MappedReceiver;
  /** The interface the receiver listens on: the probe form runs only on a loopback one. */
  readonly host: string;
  /** Services requests enter at (see `AnalyzeOptions.entryServices`). */
  readonly entryServices?: readonly string[];
  /** How often the page is told that spans arrived, at most. Default 1000 ms. */
  readonly liveMs?: number;
}

/** The page and its API, answered from a receiver's `route` hook. */
export interface MeshMapUi {
  /** Answers the page's paths (`/`, `/ui/…`, `/api/doctor/graph|edge|events|probe`); false for any other. */
  route(req: IncomingMessage, res: ServerResponse): boolean;
  /** Ends the live streams and any probe in flight, so the receiver can close. */
  close(): void;
}

/** Where the page's files are: `ui/` beside `dist/` (and `src/`) in the package. */
const ASSET_DIR = join(__dirname, '..', '..', 'ui');
const ASSETS: Readonly<Record<string, { file: string; type: string }>> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/map.js': { file: 'map.js', type: 'text/javascript; charset=utf-8' },
  '/ui/map.css': { file: 'map.css', type: 'text/css; charset=utf-8' },
};
/** Span data is shown only through textContent; the policy makes sure nothing else runs even if that slipped. */
const SECURITY_HEADERS = {
  'content-security-policy': [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; '),
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};
const MAX_STREAMS = 16;
const MAX_PROBE_BODY = 4096;
const HEARTBEAT_MS = 15_000;
const PROBE_WAIT_MS = 15_000;
const PROBE_TIMEOUT_MS = 10_000;
const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/i;

function send(res: ServerResponse, status: number, type: string, body: string | Buffer, extra = {}): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...SECURITY_HEADERS, ...extra }).end(body);
}

const json = (res: ServerResponse, status: number, body: unknown, extra = {}): void =>
  send(res, status, 'application/json; charset=utf-8', JSON.stringify(body), extra);

/** A broken or whole example, with the waterfall of its traces as they are in the window now. */
function withWaterfall(example: EdgeExample | null, spans: readonly Span[]): unknown {
  if (example === null) return null;
  const traces = new Set(example.traces);
  const orphans = new Set<string>();
  if (example.callee !== null && example.state !== 'continued' && example.traces.length > 1)
    orphans.add(example.callee.spanId);
  return {
    ...example,
    waterfall: waterfall(
      spans.filter((s) => traces.has(s.traceId)),
      orphans,
    ),
  };
}

/**
 * The mesh map page and its JSON API over a receiver's window. Serve it from the receiver's `route`
 * hook: `route: (req, res) => ui.route(req, res)`. The page is for 127.0.0.1: on any other interface
 * the map is served but the probe form is refused.
 */
export function meshMapUi(options: MeshMapUiOptions): MeshMapUi {
  const { receiver } = options;
  const loopback = LOOPBACK.test(options.host.replace(/^\[|\]$/g, ''));
  const liveMs = options.liveMs ?? 1000;
  const files = new Map<string, Buffer>();
  const streams = new Set<ServerResponse>();
  const probes = new Set<ServerResponse>();
  let probing = false;
  let timer: NodeJS.Timeout | undefined;
  let lastSeen = '';
  let lastBeat = Date.now();
  const cache = new Map<string, { version: string; map: MeshMap; layout: MapLayout }>();

  /** What changes when the window does: spans accepted and evicted. */
  const version = (): string => {
    const s = receiver.stats();
    return `${s.spans}/${s.evictedSpans}/${s.windowSpans}`;
  };
  const mapOf = (by: string): { map: MeshMap; layout: MapLayout; spans: Span[] } => {
    const v = version();
    const spans = receiver.spans();
    const held = cache.get(by);
    if (held !== undefined && held.version === v) return { ...held, spans };
    const map = buildMap(spans, { by, entryServices: options.entryServices });
    const fresh = { version: v, map, layout: layOut(map) };
    if (cache.size >= 4) cache.clear();
    cache.set(by, fresh);
    return { ...fresh, spans };
  };

  /** DNS rebinding: a page of another site that resolves its name to 127.0.0.1 must not read the API. */
  const ownHost = (req: IncomingMessage): boolean => {
    if (!loopback) return true;
    const host = (req.headers.host ?? '').toLowerCase();
    const port = String(receiver.port);
    return [
      `127.0.0.1:${port}`,
      `localhost:${port}`,
      `[::1]:${port}`,
      `${options.host.toLowerCase()}:${port}`,
    ].includes(host);
  };

  const tick = (): void => {
    if (streams.size === 0) {
      clearInterval(timer);
      timer = undefined;
      return;
    }
    const v = version();
    const now = Date.now();
    if (v !== lastSeen) {
      lastSeen = v;
      lastBeat = now;
      const s = receiver.stats();
      const counts = JSON.stringify({ window: s.windowSpans, received: s.spans, evicted: s.evictedSpans });
      const data = `event: spans\ndata: ${counts}\n\n`;
      for (const res of streams) res.write(data);
    } else if (now - lastBeat >= HEARTBEAT_MS) {
      lastBeat = now;
      for (const res of streams) res.write(': still here\n\n');
    }
  };

  const events = (req: IncomingMessage, res: ServerResponse): void => {
    if (streams.size >= MAX_STREAMS) {
      json(res, 503, { error: `at most ${MAX_STREAMS} pages follow at once` });
      return;
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'close',
      ...SECURITY_HEADERS,
    });
    res.write('retry: 2000\n\n');
    streams.add(res);
    req.once('close', () => streams.delete(res));
    lastSeen = '';
    if (timer === undefined) {
      timer = setInterval(tick, liveMs);
      timer.unref();
    }
    tick();
  };

  const graph = (url: URL, res: ServerResponse): void => {
    const by = url.searchParams.get('by') ?? '';
    const { map, layout, spans } = mapOf(by);
    const s = receiver.stats();
    json(res, 200, {
      map,
      layout,
      splitBy: splitCandidates(spans),
      window: { spans: s.windowSpans, traces: s.windowTraces, evicted: s.evictedSpans, received: s.spans },
      probe: loopback
        ? { enabled: true, reason: null }
        : { enabled: false, reason: `the receiver listens on ${options.host}, not 127.0.0.1: the probe form is off` },
    });
  };

  const edge = (url: URL, res: ServerResponse): void => {
    const { map, spans } = mapOf(url.searchParams.get('by') ?? '');
    const id = url.searchParams.get('id') ?? '';
    const found = map.edges.find((e) => e.id === id);
    if (found === undefined) {
      json(res, 404, { error: 'no such edge in the window now' });
      return;
    }
    json(res, 200, {
      edge: found,
      from: map.nodes.find((n) => n.id === found.from) ?? null,
      to: map.nodes.find((n) => n.id === found.to) ?? null,
      whole: withWaterfall(found.whole, spans),
      broken: withWaterfall(found.broken, spans),
    });
  };

  const probe = (req: IncomingMessage, res: ServerResponse, by: string): void => {
    if (!loopback) {
      json(res, 403, { error: `the probe form runs only on 127.0.0.1; this receiver listens on ${options.host}` });
      return;
    }
    // A form of another site can post here; a JSON body needs a preflight, which this server never grants.
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `http://${req.headers.host ?? ''}`) {
      json(res, 403, { error: 'the probe is run from this page only' });
      return;
    }
    if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) {
      json(res, 415, { error: 'send application/json' });
      return;
    }
    if (probing) {
      json(res, 429, { error: 'a probe is running; wait for its verdict' });
      return;
    }
    probing = true;
    let started = false;
    // A page that went away before its body ended must not leave the form refused.
    res.once('close', () => {
      if (!started) probing = false;
    });
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= MAX_PROBE_BODY) chunks.push(c);
    });
    req.once('end', () => {
      started = true;
      probes.add(res);
      // The receiver may close (and answer 503) while a probe waits for spans: answer once only.
      const reply = (status: number, body: unknown): void => {
        if (!res.headersSent) json(res, status, body, { connection: 'close' });
      };
      void answerProbe(Buffer.concat(chunks), size, by, reply)
        .catch((err: unknown) => reply(500, { error: `the probe failed: ${(err as Error).message}` }))
        .finally(() => {
          probes.delete(res);
          probing = false;
        });
    });
  };

  const answerProbe = async (
    raw: Buffer,
    size: number,
    by: string,
    reply: (status: number, body: unknown) => void,
  ): Promise<void> => {
    if (size > MAX_PROBE_BODY) return reply(413, { error: `body over ${MAX_PROBE_BODY} bytes` });
    let body: { url?: unknown; batchDelayMs?: unknown };
    try {
      body = JSON.parse(raw.toString('utf8')) as typeof body;
    } catch {
      return reply(400, { error: 'the body is not JSON' });
    }
    if (typeof body !== 'object' || body === null || typeof body.url !== 'string')
      return reply(400, { error: 'give {"url": "http://…"}' });
    const batchDelayMs = body.batchDelayMs === undefined || body.batchDelayMs === '' ? 500 : Number(body.batchDelayMs);
    if (!Number.isInteger(batchDelayMs) || batchDelayMs < 1 || batchDelayMs > 60_000)
      return reply(400, { error: 'batchDelayMs must be a whole number of milliseconds from 1 to 60000' });
    const lines: string[] = [];
    let exitCode: number;
    try {
      // The same probe as `meshtrace probe --json`, reading this receiver's window.
      exitCode = await runProbe(
        {
          url: body.url,
          source: receivedSpanSource(receiver),
          json: true,
          batchDelayMs,
          waitMs: PROBE_WAIT_MS,
          timeoutMs: PROBE_TIMEOUT_MS,
        },
        { line: (text = '') => void lines.push(text), color: false, width: 100 },
      );
    } catch (err) {
      const message = (err instanceof Error ? err.message : String(err)).replace(/^@meshtrace\/doctor: /, '');
      if (err instanceof TypeError) return reply(400, { error: message });
      return reply(200, { exitCode: 2, report: null, error: message, highlight: { nodes: [], edges: [] } });
    }
    const report = JSON.parse(lines.join('\n')) as { probes: Array<{ traces: string[] }> };
    const traces = new Set(report.probes.flatMap((p) => p.traces));
    // The path: the map of the probe's traces alone, whose node and edge ids are those of the whole map.
    const path = buildMap(
      receiver.spans().filter((s) => traces.has(s.traceId)),
      { by, entryServices: options.entryServices },
    );
    reply(200, {
      exitCode,
      report,
      error: null,
      highlight: { nodes: path.nodes.map((n) => n.id), edges: path.edges.map((e) => e.id) },
    });
  };

  const asset = (path: string, res: ServerResponse): void => {
    const spec = ASSETS[path];
    let body = files.get(spec.file);
    if (body === undefined) {
      body = readFileSync(join(ASSET_DIR, spec.file));
      files.set(spec.file, body);
    }
    send(res, 200, spec.type, body);
  };

  return {
    route(req, res) {
      const url = new URL(req.url ?? '/', 'http://receiver');
      const path = url.pathname;
      const ours =
        path === '/' ||
        path === '/ui' ||
        path === '/favicon.ico' ||
        path.startsWith('/ui/') ||
        /^\/api\/doctor\/(graph|edge|events|probe)$/.test(path);
      if (!ours) return false;
      if (!ownHost(req)) {
        json(res, 421, { error: 'this page answers to 127.0.0.1 and localhost only' });
        return true;
      }
      if (path === '/api/doctor/probe') {
        if (req.method !== 'POST') json(res, 405, { error: 'use POST' }, { allow: 'POST' });
        else probe(req, res, url.searchParams.get('by') ?? '');
        return true;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        json(res, 405, { error: 'use GET' }, { allow: 'GET, HEAD' });
        return true;
      }
      if (path === '/favicon.ico') res.writeHead(204, SECURITY_HEADERS).end();
      else if (path === '/ui') send(res, 308, 'text/plain; charset=utf-8', '/ui/', { location: '/ui/' });
      else if (path === '/api/doctor/graph') graph(url, res);
      else if (path === '/api/doctor/edge') edge(url, res);
      else if (path === '/api/doctor/events') events(req, res);
      else if (ASSETS[path] !== undefined) asset(path, res);
      else json(res, 404, { error: `no such page ${JSON.stringify(path)}` });
      return true;
    },
    close() {
      clearInterval(timer);
      timer = undefined;
      for (const res of streams) res.end();
      streams.clear();
      for (const res of probes)
        if (!res.headersSent) json(res, 503, { error: 'the receiver is stopping' }, { connection: 'close' });
      probes.clear();
    },
  };
}
