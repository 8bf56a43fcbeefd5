import { createServer as createHttpServer } from 'node:http';
import type { IncomingMessage } from 'node:http';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { optionError } from '@meshtrace/core/adapter';

const PACKAGE = '@meshtrace/testkit';

/**
 * How the proxy treats connections:
 * - `pass`: forwards bytes both ways;
 * - `refuse`: stops listening, so connecting fails with ECONNREFUSED (a collector that is down);
 * - `blackhole`: accepts and reads, never answers (a partition, a hung collector);
 * - `delay`: forwards, with every chunk of the answer held back `delayMs` (a slow collector);
 * - `http-503`: answers every HTTP request with 503 without reaching the target (an overloaded collector).
 */
export type FaultMode = 'pass' | 'refuse' | 'blackhole' | 'delay' | 'http-503';

/** Options of {@link startFaultProxy}. */
export interface FaultProxyOptions {
  /** The port on `targetHost` that `pass` and `delay` forward to. */
  targetPort: number;
  /** Default `127.0.0.1`. */
  targetHost?: string;
  /** The mode to start in. Default `pass`. */
  mode?: FaultMode;
  /** How long `delay` holds each chunk of the answer. Default 1000 ms. */
  delayMs?: number;
}

/** A TCP proxy on 127.0.0.1 whose failure mode can be switched while it runs. */
export interface FaultProxy {
  /** The proxy's port; it stays the same across `refuse`. */
  readonly port: number;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  readonly mode: FaultMode;
  /** Connections accepted so far, in every mode. */
  readonly accepted: number;
  /** Connections open now (client side). */
  readonly open: number;
  /**
   * Switches mode. Connections opened under the previous mode are reset, so a keep-alive client
   * cannot keep using a connection that the new mode would not have accepted.
   */
  setMode(mode: FaultMode, delayMs?: number): Promise<void>;
  /** Stops listening and destroys every socket it holds. */
  close(): Promise<void>;
}

const MODES: readonly FaultMode[] = ['pass', 'refuse', 'blackhole', 'delay', 'http-503'];

function checkMode(mode: unknown): FaultMode {
  if (!MODES.includes(mode as FaultMode)) throw optionError(PACKAGE, 'mode', `one of ${MODES.join(', ')}`, mode);
  return mode as FaultMode;
}

function checkDelay(delayMs: unknown): number {
  if (typeof delayMs !== 'number' || !Number.isInteger(delayMs) || delayMs < 0)
    throw optionError(PACKAGE, 'delayMs', 'a non-negative integer', delayMs);
  return delayMs;
}

const ignore = (): void => undefined;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

class LoopbackFaultProxy implements FaultProxy {
  mode: FaultMode;
  accepted = 0;
  port = 0;
  private delayMs: number;
  private listener: Server | undefined;
  private closed = false;
  /** Client sockets, which a mode switch resets. */
  private readonly clients = new Set<Socket>();
  /** Upstream sockets and timers of `pass`/`delay` connections. */
  private readonly upstreams = new Set<Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Answers `http-503` connections; Node's parser copes with keep-alive and chunked bodies. */
  private readonly unavailable = createHttpServer((req, res) => {
    req.on('error', ignore);
    req.resume();
    req.once('end', () => res.writeHead(503, { 'content-type': 'text/plain' }).end('service unavailable'));
  });

  constructor(
    private readonly targetPort: number,
    private readonly targetHost: string,
    mode: FaultMode,
    delayMs: number,
  ) {
    this.mode = mode;
    this.delayMs = delayMs;
    this.unavailable.on('clientError', (_err, socket) => socket.destroy());
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get open(): number {
    return this.clients.size;
  }

  async listen(): Promise<void> {
    // Re-binding the same port after `refuse` can race the kernel briefly releasing it.
    for (let attempt = 0; ; attempt++) {
      const server = createServer((socket) => this.accept(socket));
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(this.port, '127.0.0.1', () => {
            server.off('error', reject);
            resolve();
          });
        });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || this.port === 0 || attempt >= 40) throw err;
        await sleep(50);
        continue;
      }
      this.port = (server.address() as AddressInfo).port;
      this.listener = server;
      return;
    }
  }

  async unlisten(): Promise<void> {
    const server = this.listener;
    this.listener = undefined;
    if (server !== undefined) await new Promise((resolve) => server.close(resolve));
  }

  private accept(client: Socket): void {
    this.accepted++;
    client.on('error', ignore);
    if (this.closed || this.mode === 'refuse') {
      client.resetAndDestroy();
      return;
    }
    this.clients.add(client);
    client.once('close', () => this.clients.delete(client));
    switch (this.mode) {
      case 'blackhole':
        // Read and discard, so the client's writes complete and it waits for an answer that never comes.
        client.on('data', ignore);
        return;
      case 'http-503':
        this.unavailable.emit('connection', client);
        return;
      default:
        this.forward(client, this.mode === 'delay' ? this.delayMs : 0);
    }
  }

  private forward(client: Socket, delayMs: number): void {
    const upstream = connect(this.targetPort, this.targetHost);
    this.upstreams.add(upstream);
    upstream.on('error', ignore);
    const drop = () => {
      upstream.destroy();
      client.destroy();
    };
    upstream.once('close', () => {
      this.upstreams.delete(upstream);
      if (delayMs === 0) client.destroy();
      else this.later(delayMs, () => client.destroy());
    });
    client.once('close', drop);
    client.pipe(upstream);
    if (delayMs === 0) {
      upstream.pipe(client);
      return;
    }
    // Timers of one duration fire in the order they were set, so the answer keeps its byte order.
    upstream.on('data', (chunk: Buffer) => this.later(delayMs, () => client.write(chunk)));
    upstream.once('end', () => this.later(delayMs, () => client.end()));
  }

  private later(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(timer);
  }

  private resetAll(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const socket of this.upstreams) socket.destroy();
    for (const socket of this.clients) {
      // An RST, not a FIN: the client sees its connection fail, as it would if the peer died.
      if (socket.destroyed) continue;
      if (socket.readyState === 'open') socket.resetAndDestroy();
      else socket.destroy();
    }
    this.clients.clear();
    this.upstreams.clear();
  }

  async setMode(mode: FaultMode, delayMs: number = this.delayMs): Promise<void> {
    checkMode(mode);
    checkDelay(delayMs);
    if (this.closed) throw new Error(`${PACKAGE}: the fault proxy is closed`);
    const was = this.mode;
    this.mode = mode;
    this.delayMs = delayMs;
    this.resetAll();
    if (mode === 'refuse' && was !== 'refuse') await this.unlisten();
    else if (mode !== 'refuse' && was === 'refuse') await this.listen();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.resetAll();
    this.unavailable.closeAllConnections();
    this.unavailable.close();
    await this.unlisten();
  }
}

/**
 * Starts a TCP proxy on 127.0.0.1 (a free port) in front of `targetPort`, for testing how a client
 * copes when what it talks to goes away, hangs, slows down or answers 503.
 * @example
 * const proxy = await startFaultProxy({ targetPort: collectorPort });
 * await proxy.setMode('blackhole');
 */
export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  if (options === null || typeof options !== 'object') throw optionError(PACKAGE, 'options', 'an object', options);
  const { targetPort, targetHost = '127.0.0.1', mode = 'pass', delayMs = 1000 } = options;
  if (!Number.isInteger(targetPort) || targetPort < 1 || targetPort > 65535)
    throw optionError(PACKAGE, 'targetPort', 'a port number', targetPort);
  if (typeof targetHost !== 'string' || targetHost.length === 0)
    throw optionError(PACKAGE, 'targetHost', 'a host name or address', targetHost);
  const proxy = new LoopbackFaultProxy(targetPort, targetHost, checkMode(mode), checkDelay(delayMs));
  // Starting in `refuse` still reserves the port, so `url` is known before the target is reachable.
  await proxy.listen();
  if (mode === 'refuse') await proxy.unlisten();
  return proxy;
}

/** A loopback OTLP/HTTP trace collector: what reached it, decoded down to span ids. */
export interface TestCollector {
  readonly port: number;
  /** `http://127.0.0.1:<port>`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`. */
  readonly url: string;
  /** Export requests received on `POST /v1/traces`. */
  readonly requests: number;
  /** Spans received. */
  readonly spans: number;
  /** Whether a span of this trace (32 hex digits) has arrived. */
  hasTrace(traceId: string): boolean;
  close(): Promise<void>;
}

/** Reads a protobuf varint at `at`; returns [value, next offset]. Lengths here stay far below 2^53. */
function varint(buf: Buffer, at: number): [number, number] {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (at >= buf.length) throw new Error('truncated varint');
    const byte = buf[at++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, at];
    scale *= 128;
  }
}

/** The length-delimited fields numbered `field` of one protobuf message, skipping every other field. */
function fields(buf: Buffer, field: number): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  while (at < buf.length) {
    const [key, next] = varint(buf, at);
    at = next;
    const wire = key & 7;
    if (wire === 0) at = varint(buf, at)[1];
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      const [length, start] = varint(buf, at);
      if (key >>> 3 === field) out.push(buf.subarray(start, start + length));
      at = start + length;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
  return out;
}

/**
 * Trace ids of the spans in an OTLP `ExportTraceServiceRequest`: resource_spans (1) > scope_spans
 * (2) > spans (2) > trace_id (1), per opentelemetry-proto trace/v1/trace.proto.
 */
function protobufTraceIds(body: Buffer): string[] {
  const ids: string[] = [];
  for (const resourceSpans of fields(body, 1)) {
    for (const scopeSpans of fields(resourceSpans, 2)) {
      for (const span of fields(scopeSpans, 2)) ids.push(fields(span, 1)[0]?.toString('hex') ?? '');
    }
  }
  return ids;
}

function jsonTraceIds(body: Buffer): string[] {
  const parsed = JSON.parse(body.toString('utf8')) as {
    resourceSpans?: Array<{ scopeSpans?: Array<{ spans?: Array<{ traceId?: string }> }> }>;
  };
  return (parsed.resourceSpans ?? []).flatMap((r) =>
    (r.scopeSpans ?? []).flatMap((s) => (s.spans ?? []).map((span) => String(span.traceId ?? '').toLowerCase())),
  );
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
}

/**
 * Starts an OTLP/HTTP collector on 127.0.0.1 (a free port) that accepts protobuf or JSON traces on
 * `POST /v1/traces`, gzip or not, and answers 200 with an empty `ExportTraceServiceResponse`.
 * @example
 * const collector = await startCollector();
 * setupMeshTracing({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: collector.url } });
 */
export async function startCollector(): Promise<TestCollector> {
  let requests = 0;
  let spans = 0;
  const traces = new Set<string>();
  const server = createHttpServer((req, res) => {
    req.on('error', ignore);
    if (req.method !== 'POST' || req.url !== '/v1/traces') {
      req.resume();
      res.writeHead(404).end();
      return;
    }
    readBody(req).then(
      (raw) => {
        const body = /gzip/i.test(String(req.headers['content-encoding'] ?? '')) ? gunzipSync(raw) : raw;
        const json = /json/i.test(String(req.headers['content-type'] ?? ''));
        let ids: string[];
        try {
          ids = json ? jsonTraceIds(body) : protobufTraceIds(body);
        } catch {
          res.writeHead(400).end();
          return;
        }
        requests++;
        spans += ids.length;
        for (const id of ids) traces.add(id);
        if (json) res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
        else res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
      },
      () => res.destroy(),
    );
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    get requests() {
      return requests;
    },
    get spans() {
      return spans;
    },
    hasTrace: (traceId) => traces.has(traceId.toLowerCase()),
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
