import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { diag } from '@opentelemetry/api';
import type { Span } from '../model';
import { OtlpDecodeError, decodeTraces, otlpEncoding } from '../otlp/decode';
import type { OtlpEncoding } from '../otlp/decode';
import { RPC_CODE, statusBody, successBody } from '../otlp/response';
import type { OtlpBody } from '../otlp/response';
import { SpanWindow } from './window';
import type { QuietTrace } from './window';

/** Options of {@link startReceiver}; all optional. */
export interface ReceiverOptions {
  /** Interface to listen on. Default `127.0.0.1`. */
  host?: string;
  /** Port to listen on; 0 picks a free one. Default 4318, the OTLP/HTTP port. */
  port?: number;
  /** Largest body accepted, compressed and decompressed, in bytes; larger ones get 413. Default 4 MiB. */
  maxBodyBytes?: number;
  /** Spans kept; past it the oldest traces are evicted (and counted). Default 100 000. */
  maxSpans?: number;
  /** A trace is quiet, and handed to `onQuiet`, once no span of it arrived for this long. Default 2000 ms. */
  quietMs?: number;
  /**
   * Pass every request to `/v1/traces` whose body is within the cap on, unchanged (body bytes,
   * `Content-Type`, `Content-Encoding`), to this collector: a base URL gets `/v1/traces` appended.
   * Its answers and failures are counted and never change the answer to the sender.
   */
  forward?: string;
  /** Traces that went quiet together, each with the spans the window holds of it. */
  onQuiet?: (traces: readonly QuietTrace[]) => void;
  /** The spans of each accepted request, as they arrive. */
  onSpans?: (spans: readonly Span[]) => void;
  /** Offered every request first (a span query, say); returns true when it answered it. */
  route?: (req: IncomingMessage, res: ServerResponse) => boolean;
}

/** What the receiver has seen so far. */
export interface ReceiverStats {
  /** Requests answered, by HTTP status (200, 400, 404, 405, 413, 415). */
  readonly responses: Readonly<Record<number, number>>;
  /** Spans accepted. */
  readonly spans: number;
  /** Spans and traces the window holds now. */
  readonly windowSpans: number;
  readonly windowTraces: number;
  /** Spans and traces evicted to keep the window under `maxSpans`. */
  readonly evictedSpans: number;
  readonly evictedTraces: number;
  /** Requests passed on to `forward`, and how they went (a failure is a network error or a non-2xx answer). */
  readonly forward: {
    readonly url: string | undefined;
    readonly ok: number;
    readonly failed: number;
    readonly okSpans: number;
    readonly failedSpans: number;
    readonly lastError: string | undefined;
  };
}

/** A running OTLP/HTTP trace receiver. */
export interface Receiver {
  /** The base URL to give exporters as `OTEL_EXPORTER_OTLP_ENDPOINT` (they append `/v1/traces`). */
  readonly url: string;
  readonly port: number;
  /** The spans in the window, oldest trace first. */
  spans(): Span[];
  stats(): ReceiverStats;
  /** Hands every trace not yet quiet to `onQuiet` now. */
  flush(): void;
  /** Stops listening, waits for forwards in flight, and flushes. */
  close(): Promise<void>;
}

/** The OTLP/HTTP path for traces (OTLP spec, "OTLP/HTTP Request"). */
const TRACES_PATH = '/v1/traces';
const FORWARD_TIMEOUT_MS = 10_000;

const DEFAULTS = { host: '127.0.0.1', port: 4318, maxBodyBytes: 4 * 1024 * 1024, maxSpans: 100_000, quietMs: 2000 };

function check(name: string, value: number, min: number): void {
  if (!Number.isInteger(value) || value < min)
    throw new TypeError(`@meshtrace/doctor: ${name} must be an integer of at least ${min}, not ${String(value)}`);
}

function forwardUrl(forward: string | undefined): string | undefined {
  if (forward === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(forward);
  } catch {
    throw new TypeError(`@meshtrace/doctor: forward must be an http(s) URL, not ${JSON.stringify(forward)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new TypeError(`@meshtrace/doctor: forward must be an http(s) URL, not ${JSON.stringify(forward)}`);
  // A base endpoint gets the signal path, as OTEL_EXPORTER_OTLP_ENDPOINT does (OTLP exporter spec).
  if (!url.pathname.endsWith(TRACES_PATH)) url.pathname = `${url.pathname.replace(/\/+$/, '')}${TRACES_PATH}`;
  return url.toString();
}

/** Runs a user callback so that its failure reaches `diag`, not the request or the timer that called it. */
function safely<T>(name: string, callback: ((arg: T) => void) | undefined, arg: T): void {
  try {
    callback?.(arg);
  } catch (err) {
    diag.error(`@meshtrace/doctor: ${name} threw: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** A request the receiver answers with an OTLP error. */
class Rejection extends Error {
  constructor(
    readonly status: number,
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** Reads the body, stopping at `max` bytes: a longer one is a {@link Rejection} (413). */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) {
        req.removeAllListeners('data');
        // Drain what is left so the answer reaches the sender instead of a reset connection.
        req.resume();
        reject(new Rejection(413, RPC_CODE.resourceExhausted, `body over ${max} bytes`));
      } else chunks.push(chunk);
    });
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
}

/** The body as sent, decompressed per `Content-Encoding` up to `max` bytes (a gzip bomb stops there). */
function decompress(raw: Buffer, encoding: string | undefined, max: number): Buffer {
  const coding = (encoding ?? 'identity').trim().toLowerCase();
  if (coding === 'identity' || coding === '') return raw;
  if (coding !== 'gzip')
    throw new Rejection(415, RPC_CODE.invalidArgument, `unsupported Content-Encoding ${JSON.stringify(encoding)}`);
  try {
    return gunzipSync(raw, { maxOutputLength: max });
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE')
      throw new Rejection(413, RPC_CODE.resourceExhausted, `decompressed body over ${max} bytes`);
    throw new Rejection(400, RPC_CODE.invalidArgument, `invalid gzip: ${(err as Error).message}`);
  }
}

/**
 * Starts an OTLP/HTTP trace receiver: POST `/v1/traces` with protobuf or JSON bodies, gzip or not,
 * answered as the OTLP spec says; spans kept in a bounded window and handed on once quiet.
 */
export async function startReceiver(options: ReceiverOptions = {}): Promise<Receiver> {
  const o = { ...DEFAULTS, ...options };
  check('port', o.port, 0);
  check('maxBodyBytes', o.maxBodyBytes, 1);
  check('maxSpans', o.maxSpans, 1);
  check('quietMs', o.quietMs, 1);
  const forward = forwardUrl(o.forward);
  const window = new SpanWindow(o.maxSpans, o.quietMs, (traces) => safely('onQuiet', o.onQuiet, traces));
  const responses: Record<number, number> = {};
  const fwd = {
    url: forward,
    ok: 0,
    failed: 0,
    okSpans: 0,
    failedSpans: 0,
    lastError: undefined as string | undefined,
  };
  const inFlight = new Set<Promise<void>>();
  let accepted = 0;

  const answer = (res: ServerResponse, status: number, reply: OtlpBody, extra: Record<string, string> = {}): void => {
    responses[status] = (responses[status] ?? 0) + 1;
    res
      .writeHead(status, { 'content-type': reply.contentType, 'content-length': String(reply.body.length), ...extra })
      .end(reply.body);
  };

  const pass = (req: IncomingMessage, raw: Buffer, spans: number): void => {
    const headers: Record<string, string> = {};
    for (const name of ['content-type', 'content-encoding'] as const)
      if (req.headers[name] !== undefined) headers[name] = req.headers[name];
    const done = fetch(forward!, {
      method: 'POST',
      headers,
      body: raw,
      signal: AbortSignal.timeout(FORWARD_TIMEOUT_MS),
    })
      .then(async (res) => {
        await res.arrayBuffer();
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        fwd.ok++;
        fwd.okSpans += spans;
      })
      .catch((err: unknown) => {
        fwd.failed++;
        fwd.failedSpans += spans;
        const cause = (err as { cause?: { code?: string } }).cause?.code;
        fwd.lastError = [(err as Error).message, cause].filter(Boolean).join(': ');
      })
      .finally(() => inFlight.delete(done));
    inFlight.add(done);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    // Answers are encoded as the request was; anything but JSON gets protobuf, OTLP's default.
    const encoding: OtlpEncoding = otlpEncoding(req.headers['content-type']) ?? 'protobuf';
    const path = (req.url ?? '').split('?')[0];
    try {
      if (o.route?.(req, res) === true) return;
      if (path !== TRACES_PATH)
        throw new Rejection(
          404,
          RPC_CODE.notFound,
          `no such path ${JSON.stringify(path)}; traces go to ${TRACES_PATH}`,
        );
      if (req.method !== 'POST')
        throw new Rejection(405, RPC_CODE.unimplemented, `method ${req.method ?? ''} not allowed; use POST`);
      if (Number(req.headers['content-length'] ?? 0) > o.maxBodyBytes)
        throw new Rejection(413, RPC_CODE.resourceExhausted, `body over ${o.maxBodyBytes} bytes`);
      const raw = await readBody(req, o.maxBodyBytes);
      let spans: Span[] = [];
      try {
        if (otlpEncoding(req.headers['content-type']) === undefined) {
          throw new Rejection(
            415,
            RPC_CODE.invalidArgument,
            `unsupported Content-Type ${JSON.stringify(req.headers['content-type'] ?? '')}; send application/x-protobuf or application/json`,
          );
        }
        const body = decompress(raw, req.headers['content-encoding'], o.maxBodyBytes);
        spans = decodeTraces(body, req.headers['content-type']!);
      } finally {
        if (forward !== undefined) pass(req, raw, spans.length);
      }
      accepted += spans.length;
      window.add(spans);
      safely('onSpans', o.onSpans, spans);
      answer(res, 200, successBody(encoding));
    } catch (err) {
      const rejection =
        err instanceof Rejection
          ? err
          : err instanceof OtlpDecodeError
            ? new Rejection(400, RPC_CODE.invalidArgument, err.message)
            : new Rejection(400, RPC_CODE.invalidArgument, `could not read the request: ${(err as Error).message}`);
      if (!res.headersSent)
        answer(
          res,
          rejection.status,
          statusBody(encoding, rejection.code, rejection.message),
          rejection.status === 405 ? { allow: 'POST' } : {},
        );
    }
  };

  const server = createServer((req, res) => void handle(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = o.host.includes(':') ? `[${o.host}]` : o.host;
  return {
    url: `http://${host}:${port}`,
    port,
    spans: () => window.spans(),
    stats: () => ({
      responses: { ...responses },
      spans: accepted,
      windowSpans: window.size,
      windowTraces: window.traceCount,
      evictedSpans: window.evictedSpans,
      evictedTraces: window.evictedTraces,
      forward: { ...fwd },
    }),
    flush: () => window.flush(),
    close: async () => {
      server.closeIdleConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.all([...inFlight]);
      window.flush();
      window.stop();
    },
  };
}
