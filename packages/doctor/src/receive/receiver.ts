import { optionError } from '@meshtrace/core/adapter';
import { PACKAGE, httpUrl, numbers } from '../options';
import { fetchFailure } from '../output';
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
  /**
   * Bytes of request bodies held at once: being read, decoded, or passed on to `forward`. A request
   * that would go past it gets 429 with `Retry-After` (OTLP/HTTP "Throttling"), which exporters retry.
   * At least `maxBodyBytes`. Default 32 MiB, or `maxBodyBytes` when that is larger.
   */
  maxInFlightBytes?: number;
  /** Spans kept; past it the oldest traces are evicted (and counted). Default 100 000. */
  maxSpans?: number;
  /**
   * Heap the kept spans may take, as estimated from their strings and attributes; past it the oldest
   * traces are evicted too, so that a few huge spans cannot hold more memory than many small ones.
   * Default 32 MiB (about 25 000 spans of ten attributes).
   */
  maxWindowBytes?: number;
  /**
   * Characters kept of each string attribute value (and of each string in an array value); longer
   * ones are cut on ingest, as an SDK's attribute value length limit would. Default 4096.
   */
  maxAttributeLength?: number;
  /** A trace is quiet, and handed to `onQuiet`, once no span of it arrived for this long. Default 2000 ms. */
  quietMs?: number;
  /**
   * Pass every request to `/v1/traces` whose body is within the cap on, unchanged (body bytes,
   * `Content-Type`, `Content-Encoding`), to this collector: a base URL gets `/v1/traces` appended.
   * Its answers and failures are counted and never change the answer to the sender. A request whose
   * every span the window already held is not passed on again: it is a retry of one passed on, or
   * one that came back round a loop of forwarding receivers.
   */
  forward?: string;
  /** Traces that went quiet together, each with the spans the window holds of it. */
  onQuiet?: (traces: readonly QuietTrace[]) => void;
  /** The spans of each accepted request that the window did not already hold, as they arrive. */
  onSpans?: (spans: readonly Span[]) => void;
  /** Offered every request first (a span query, say); returns true when it answered it. */
  route?: (req: IncomingMessage, res: ServerResponse) => boolean;
}

/** What the receiver has seen so far. */
export interface ReceiverStats {
  /** Requests answered, by HTTP status (200, 400, 404, 405, 413, 415, and 429 when too much was in flight). */
  readonly responses: Readonly<Record<number, number>>;
  /** Spans in accepted requests, duplicates included. */
  readonly spans: number;
  /** Spans received again (same trace id and span id as one the window held), stored once. */
  readonly duplicateSpans: number;
  /** Attribute values cut to `maxAttributeLength`. */
  readonly truncatedValues: number;
  /** Spans and traces the window holds now, and their estimated heap. */
  readonly windowSpans: number;
  readonly windowTraces: number;
  readonly windowBytes: number;
  /** Bytes of request bodies held now, and the most held at once. */
  readonly inFlightBytes: number;
  readonly peakInFlightBytes: number;
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
const MIB = 1024 * 1024;
/**
 * The longest wait a refused sender is told. The OpenTelemetry JS exporter gives an export 10 s in
 * all and waits exactly what Retry-After says: told more than 5 s, it could not retry even once.
 */
const MAX_RETRY_AFTER_S = 5;

const DEFAULTS = {
  host: '127.0.0.1',
  port: 4318,
  maxBodyBytes: 4 * MIB,
  maxSpans: 100_000,
  maxWindowBytes: 32 * MIB,
  maxAttributeLength: 4096,
  quietMs: 2000,
};

function forwardUrl(forward: string | undefined): string | undefined {
  if (forward === undefined) return undefined;
  const url = httpUrl(forward, 'forward');
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
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/**
 * Reads the body, stopping at `max` bytes (a longer one is a 413 {@link Rejection}) or when `take`
 * refuses a chunk (its rejection). A sender that goes away mid-body rejects it too, so nothing waits on it.
 */
function readBody(
  req: IncomingMessage,
  max: number,
  length: number,
  take: (bytes: number) => Rejection | undefined,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // A declared length is read into one buffer of that size: no second copy to join the chunks.
    const whole = length > 0 ? Buffer.allocUnsafeSlow(length) : undefined;
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const stop = (err: Error): void => {
      done = true;
      req.removeAllListeners('data');
      // Drain what is left so the answer reaches the sender instead of a reset connection.
      req.resume();
      reject(err);
    };
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) return stop(new Rejection(413, RPC_CODE.resourceExhausted, `body over ${max} bytes`));
      const refused = take(chunk.length);
      if (refused !== undefined) return stop(refused);
      if (whole === undefined) chunks.push(chunk);
      else if (size <= whole.length) chunk.copy(whole, size - chunk.length);
      else return stop(new Rejection(400, RPC_CODE.invalidArgument, 'body longer than its Content-Length'));
    });
    req.once('end', () => {
      done = true;
      resolve(whole === undefined ? Buffer.concat(chunks) : whole.subarray(0, size));
    });
    req.once('error', (err) => {
      if (!done) stop(err);
    });
    req.once('close', () => {
      if (!done) stop(new Error('the sender closed the connection before the body ended'));
    });
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
  numbers(o, {
    port: ['port', 0],
    maxBodyBytes: ['positive integer', 0],
    maxSpans: ['positive integer', 0],
    maxWindowBytes: ['positive integer', 0],
    maxAttributeLength: ['positive integer', 0],
    quietMs: ['positive integer', 0],
  });
  const maxInFlightBytes = o.maxInFlightBytes ?? Math.max(32 * MIB, o.maxBodyBytes);
  // Smaller, and a body that fits maxBodyBytes could never be taken in.
  if (!Number.isInteger(maxInFlightBytes) || maxInFlightBytes < o.maxBodyBytes)
    throw optionError(
      PACKAGE,
      'maxInFlightBytes',
      `an integer of at least maxBodyBytes (${o.maxBodyBytes})`,
      maxInFlightBytes,
    );
  const forward = forwardUrl(o.forward);
  const window = new SpanWindow(
    {
      maxSpans: o.maxSpans,
      maxBytes: o.maxWindowBytes,
      maxAttributeLength: o.maxAttributeLength,
      quietMs: o.quietMs,
    },
    (traces) => safely('onQuiet', o.onQuiet, traces),
  );
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
  let duplicateSpans = 0;
  let truncatedValues = 0;
  let heldBytes = 0;
  let peakHeldBytes = 0;
  /** When (monotonic ms) the senders refused so far have been told to come back, one after another. */
  let retrySlot = 0;
  // How fast bodies have been getting through: bytes released over the time any were held (halved now and then, to
  // follow changes).
  let drainedBytes = 0;
  let busyMs = 0;
  let busySince = 0;

  /** Bytes a millisecond taken in of late; before any was, `maxInFlightBytes` a second. */
  const drainRate = (now: number): number => {
    const ms = busyMs + (heldBytes > 0 ? now - busySince : 0);
    return drainedBytes > 0 && ms > 0 ? drainedBytes / ms : maxInFlightBytes / 1000;
  };

  /**
   * The 429 for a request of `bytes` that does not fit. Its Retry-After spreads refused senders over
   * the seconds ahead at the rate bodies have been getting through, so that they do not all come back
   * at once (OTLP exporters wait exactly what Retry-After says).
   */
  const busy = (bytes: number): Rejection => {
    const now = performance.now();
    retrySlot = Math.max(retrySlot, now) + bytes / drainRate(now);
    const seconds = Math.min(MAX_RETRY_AFTER_S, Math.max(1, Math.ceil((retrySlot - now) / 1000)));
    return new Rejection(
      429,
      RPC_CODE.resourceExhausted,
      `busy: ${heldBytes} bytes of requests in flight, at most ${maxInFlightBytes}; retry after ${seconds} s`,
      { 'retry-after': String(seconds) },
    );
  };
  /** Holds `bytes` more of request bodies, or says why not. */
  const take = (bytes: number): Rejection | undefined => {
    if (heldBytes + bytes > maxInFlightBytes) return busy(bytes);
    if (heldBytes === 0 && bytes > 0) busySince = performance.now();
    heldBytes += bytes;
    peakHeldBytes = Math.max(peakHeldBytes, heldBytes);
    return undefined;
  };
  const release = (bytes: number): void => {
    if (bytes === 0) return;
    heldBytes -= bytes;
    drainedBytes += bytes;
    if (heldBytes === 0) {
      busyMs += performance.now() - busySince;
      if (busyMs > 10_000) {
        busyMs /= 2;
        drainedBytes /= 2;
      }
    }
  };

  const answer = (res: ServerResponse, status: number, reply: OtlpBody, extra: Record<string, string> = {}): void => {
    responses[status] = (responses[status] ?? 0) + 1;
    res
      .writeHead(status, { 'content-type': reply.contentType, 'content-length': String(reply.body.length), ...extra })
      .end(reply.body);
  };

  /** Passes the body on; the bytes it holds are released once the collector answered or failed. */
  const pass = (req: IncomingMessage, raw: Buffer, spans: number, held: number): void => {
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
        fwd.lastError = fetchFailure(err);
      })
      .finally(() => {
        release(held);
        inFlight.delete(done);
      });
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
      const length = Number(req.headers['content-length'] ?? 0);
      if (length > o.maxBodyBytes)
        throw new Rejection(413, RPC_CODE.resourceExhausted, `body over ${o.maxBodyBytes} bytes`);
      let held = 0;
      try {
        // A declared length is held whole before a byte is read; a chunked body chunk by chunk.
        const busyNow = take(length);
        if (busyNow !== undefined) {
          req.resume();
          throw busyNow;
        }
        held = length;
        let read = 0;
        const raw = await readBody(req, o.maxBodyBytes, length, (bytes) => {
          read += bytes;
          if (read <= held) return undefined;
          const refused = take(read - held);
          if (refused === undefined) held = read;
          return refused;
        });
        let spans: Span[] = [];
        let added: ReturnType<typeof window.add> | undefined;
        try {
          if (otlpEncoding(req.headers['content-type']) === undefined) {
            const contentType = JSON.stringify(req.headers['content-type'] ?? '');
            throw new Rejection(
              415,
              RPC_CODE.invalidArgument,
              `unsupported Content-Type ${contentType}; send application/x-protobuf or application/json`,
            );
          }
          // Decompressing, decoding and storing run without a pause, so one decoded body is alive at a time.
          const body = decompress(raw, req.headers['content-encoding'], o.maxBodyBytes);
          spans = decodeTraces(body, req.headers['content-type']!);
          added = window.add(spans);
        } finally {
          // A request whose every span was held already is not passed on again: that ends a forward loop.
          if (forward !== undefined && (added === undefined || spans.length === 0 || added.spans.length > 0)) {
            pass(req, raw, spans.length, held);
            held = 0;
          }
        }
        accepted += spans.length;
        duplicateSpans += added.duplicates;
        truncatedValues += added.truncated;
        if (added.spans.length > 0) safely('onSpans', o.onSpans, added.spans);
        answer(res, 200, successBody(encoding));
      } finally {
        release(held);
      }
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
          rejection.status === 405 ? { allow: 'POST', ...rejection.headers } : rejection.headers,
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
      duplicateSpans,
      truncatedValues,
      windowSpans: window.size,
      windowTraces: window.traceCount,
      windowBytes: window.bytes,
      inFlightBytes: heldBytes,
      peakInFlightBytes: peakHeldBytes,
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
