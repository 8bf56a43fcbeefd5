import { request } from 'node:http';
import { gzipSync } from 'node:zlib';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { OTLPTraceExporter as HttpJsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as ProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';
import type { IncomingHttpHeaders } from 'node:http';
import { decodeStatus } from '../otlp/response';
import type { QuietTrace } from './window';
import { startReceiver } from './receiver';
import type { Receiver, ReceiverOptions } from './receiver';

const open: Receiver[] = [];
async function receiver(options: ReceiverOptions = {}): Promise<Receiver> {
  const r = await startReceiver({ port: 0, ...options });
  open.push(r);
  return r;
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((r) => r.close()));
});

/** `traces` traces of `spansEach` spans (a SERVER root and CLIENT children), made by the SDK. */
function sdkTraces(traces: number, spansEach: number): ReadableSpan[] {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'orders' }),
    spanProcessors: [new SimpleSpanProcessor({ exporter })],
  });
  const tracer = provider.getTracer('test');
  for (let t = 0; t < traces; t++) {
    const root = tracer.startSpan('GET /orders/:id', { kind: SpanKind.SERVER });
    for (let c = 1; c < spansEach; c++)
      tracer.startSpan('GET', { kind: SpanKind.CLIENT }, trace.setSpan(ROOT_CONTEXT, root)).end();
    root.end();
  }
  return exporter.getFinishedSpans();
}

// The exporters type `compression` as an enum of a package this one does not depend on; its values are these strings.
type Compression = NonNullable<NonNullable<ConstructorParameters<typeof ProtoExporter>[0]>['compression']>;
const compression = (gzip: boolean): Compression => (gzip ? 'gzip' : 'none') as Compression;

const protobuf = (spans: ReadableSpan[]): Buffer => Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!);

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** Sends a request with node:http, chunked when `chunked` (no Content-Length), and reads the answer. */
function send(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: Buffer; chunked?: boolean },
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers = {
      ...options.headers,
      ...(options.body !== undefined && !options.chunked ? { 'content-length': String(options.body.length) } : {}),
    };
    const req = request(url, { method: options.method ?? 'POST', headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    if (options.chunked && options.body !== undefined) {
      // Several writes without Content-Length: the cap must hold while the body streams.
      for (let i = 0; i < options.body.length; i += 64 * 1024) req.write(options.body.subarray(i, i + 64 * 1024));
    } else if (options.body !== undefined) req.write(options.body);
    req.end();
  });
}

describe('the real OTLP exporters, pointed at the receiver', () => {
  test.each<[string, (url: string, gzip: boolean) => SpanExporter, string]>([
    [
      'exporter-trace-otlp-proto',
      (url, gzip) => new ProtoExporter({ url, compression: compression(gzip) }),
      'application/x-protobuf',
    ],
    [
      'exporter-trace-otlp-http (JSON)',
      (url, gzip) => new HttpJsonExporter({ url, compression: compression(gzip) }),
      'application/json',
    ],
  ])('%s, plain and gzip: every span arrives as it was made', async (_name, make, type) => {
    const seen: Array<string | undefined> = [];
    const r = await receiver({
      route: (req) => (
        seen.push(`${req.headers['content-type']} ${req.headers['content-encoding'] ?? 'identity'}`), false
      ),
    });
    for (const gzip of [false, true]) {
      const memory = new InMemorySpanExporter();
      const provider = new TracerProvider({
        resource: resourceFromAttributes({ 'service.name': 'inventory' }),
        spanProcessors: [
          new SimpleSpanProcessor({ exporter: make(`${r.url}/v1/traces`, gzip) }),
          new SimpleSpanProcessor({ exporter: memory }),
        ],
      });
      const tracer = provider.getTracer('test');
      const root = tracer.startSpan('GET /stock/:sku', {
        kind: SpanKind.SERVER,
        attributes: { 'meshtrace.propagation.outcome': 'missing', 'server.port': 8080 },
      });
      tracer
        .startSpan(
          'SELECT',
          { kind: SpanKind.CLIENT, attributes: { 'db.system': 'postgresql' } },
          trace.setSpan(ROOT_CONTEXT, root),
        )
        .end();
      root.setStatus({ code: SpanStatusCode.ERROR, message: 'out of stock' });
      root.end();
      await provider.forceFlush();
      for (const made of memory.getFinishedSpans()) {
        const got = r.spans().find((s) => s.spanId === made.spanContext().spanId);
        expect(got).toMatchObject({
          traceId: made.spanContext().traceId,
          parentSpanId: made.parentSpanContext?.spanId,
          name: made.name,
          service: 'inventory',
          attributes: made.attributes,
        });
        expect(got!.kind).toBe(made.kind === SpanKind.SERVER ? 'server' : 'client');
        expect(got!.status).toEqual(
          made.kind === SpanKind.SERVER ? { code: 'error', message: 'out of stock' } : { code: 'unset' },
        );
        expect(Math.abs(got!.startMs - (made.startTime[0] * 1e3 + made.startTime[1] / 1e6))).toBeLessThan(1e-3);
      }
      await provider.shutdown();
    }
    expect(new Set(seen)).toEqual(new Set([`${type} identity`, `${type} gzip`]));
    expect(r.stats()).toMatchObject({ responses: { 200: seen.length }, spans: 4, windowSpans: 4, windowTraces: 2 });
  });
});

describe('bad input: an OTLP error answer and a count, never a crash', () => {
  const good = protobuf(sdkTraces(1, 1));
  test.each<[string, Parameters<typeof send>[1], number, 'protobuf' | 'json', RegExp]>([
    [
      'a garbage protobuf body',
      { headers: { 'content-type': 'application/x-protobuf' }, body: Buffer.from('not protobuf, only text') },
      400,
      'protobuf',
      /invalid protobuf/,
    ],
    [
      'a truncated protobuf body',
      { headers: { 'content-type': 'application/x-protobuf' }, body: good.subarray(0, good.length - 5) },
      400,
      'protobuf',
      /invalid protobuf/,
    ],
    [
      'invalid JSON',
      { headers: { 'content-type': 'application/json' }, body: Buffer.from('{"resourceSpans":[') },
      400,
      'json',
      /invalid JSON/,
    ],
    [
      'broken gzip',
      {
        headers: { 'content-type': 'application/x-protobuf', 'content-encoding': 'gzip' },
        body: Buffer.from('not gzip'),
      },
      400,
      'protobuf',
      /invalid gzip/,
    ],
    [
      'a body over the cap (Content-Length)',
      { headers: { 'content-type': 'application/x-protobuf' }, body: Buffer.alloc(300 * 1024) },
      413,
      'protobuf',
      /over 262144 bytes/,
    ],
    [
      'a body over the cap (chunked)',
      { headers: { 'content-type': 'application/json' }, body: Buffer.alloc(300 * 1024, 0x20), chunked: true },
      413,
      'json',
      /over 262144 bytes/,
    ],
    [
      'a gzip bomb: small, but over the cap once decompressed',
      {
        headers: { 'content-type': 'application/x-protobuf', 'content-encoding': 'gzip' },
        body: gzipSync(Buffer.alloc(64 * 1024 * 1024)),
      },
      413,
      'protobuf',
      /decompressed body over/,
    ],
    [
      'text/plain',
      { headers: { 'content-type': 'text/plain' }, body: Buffer.from('hello') },
      415,
      'protobuf',
      /unsupported Content-Type/,
    ],
    ['no content type', { body: good }, 415, 'protobuf', /unsupported Content-Type/],
    [
      'Content-Encoding br',
      { headers: { 'content-type': 'application/json', 'content-encoding': 'br' }, body: Buffer.from('{}') },
      415,
      'json',
      /unsupported Content-Encoding/,
    ],
    ['GET /v1/traces', { method: 'GET', headers: { 'content-type': 'application/json' } }, 405, 'json', /use POST/],
    [
      'POST /v1/metrics',
      { headers: { 'content-type': 'application/x-protobuf' }, body: good },
      404,
      'protobuf',
      /no such path/,
    ],
  ])('%s', async (name, options, status, encoding, message) => {
    const r = await receiver({ maxBodyBytes: 256 * 1024 });
    const path = name.includes('/v1/metrics') ? '/v1/metrics' : '/v1/traces';
    const answer = await send(`${r.url}${path}`, options);
    expect(answer.status).toBe(status);
    expect(answer.headers['content-type']).toBe(encoding === 'json' ? 'application/json' : 'application/x-protobuf');
    const decoded = decodeStatus(encoding, answer.body);
    expect(decoded.message).toMatch(message);
    expect(decoded.code).toBeGreaterThan(0);
    if (status === 405) expect(answer.headers.allow).toBe('POST');
    // Still serving, and it counted the answer.
    expect(
      (await send(`${r.url}/v1/traces`, { headers: { 'content-type': 'application/x-protobuf' }, body: good })).status,
    ).toBe(200);
    expect(r.stats()).toMatchObject({ responses: { [status]: 1, 200: 1 }, spans: 1 });
  });
});

test('forward: a second receiver gets byte-identical bodies with their Content-Type and Content-Encoding; a dead collector fails nothing', async () => {
  const teed: Array<{ type: string | undefined; encoding: string | undefined; body: Buffer }> = [];
  const second = await receiver({
    route: (req) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () =>
        teed.push({
          type: req.headers['content-type'],
          encoding: req.headers['content-encoding'],
          body: Buffer.concat(chunks),
        }),
      );
      return false;
    },
  });
  const first = await receiver({ forward: second.url });
  const spans = sdkTraces(2, 3);
  const bodies: Array<{ 'content-type': string; 'content-encoding'?: string; body: Buffer }> = [
    { 'content-type': 'application/x-protobuf', body: protobuf(spans) },
    {
      'content-type': 'application/json',
      'content-encoding': 'gzip',
      body: gzipSync(Buffer.from(JsonTraceSerializer.serializeRequest(spans)!)),
    },
  ];
  for (const { body, ...headers } of bodies)
    expect((await send(`${first.url}/v1/traces`, { headers, body })).status).toBe(200);
  await first.close();
  expect(teed).toEqual(bodies.map((b) => ({ type: b['content-type'], encoding: b['content-encoding'], body: b.body })));
  expect(second.spans()).toHaveLength(12);
  expect(first.stats().forward).toMatchObject({ url: `${second.url}/v1/traces`, ok: 2, okSpans: 12, failed: 0 });

  const port = second.port;
  await second.close();
  const third = await receiver({ forward: `http://127.0.0.1:${port}/v1/traces` });
  expect(
    (
      await send(`${third.url}/v1/traces`, {
        headers: { 'content-type': 'application/x-protobuf' },
        body: protobuf(spans),
      })
    ).status,
  ).toBe(200);
  await third.close();
  expect(third.stats().forward).toMatchObject({
    ok: 0,
    failed: 1,
    failedSpans: 6,
    lastError: expect.stringContaining('ECONNREFUSED'),
  });
  expect(third.spans()).toHaveLength(6);
});

test('the window keeps at most maxSpans, evicting the oldest traces, and counts them', async () => {
  const r = await receiver({ maxSpans: 7 });
  const traces = sdkTraces(5, 3);
  const ids = [...new Set(traces.map((s) => s.spanContext().traceId))];
  for (const id of ids)
    expect(
      (
        await send(`${r.url}/v1/traces`, {
          headers: { 'content-type': 'application/x-protobuf' },
          body: protobuf(traces.filter((s) => s.spanContext().traceId === id)),
        })
      ).status,
    ).toBe(200);
  expect(r.stats()).toMatchObject({ spans: 15, windowSpans: 6, windowTraces: 2, evictedSpans: 9, evictedTraces: 3 });
  expect(new Set(r.spans().map((s) => s.traceId))).toEqual(new Set(ids.slice(3)));
});

test('a trace is handed on once, after quietMs without a span of it', async () => {
  const quiet: QuietTrace[][] = [];
  const r = await receiver({ quietMs: 150, onQuiet: (traces) => quiet.push([...traces]) });
  const spans = sdkTraces(1, 3);
  const post = (part: ReadableSpan[]): Promise<Answer> =>
    send(`${r.url}/v1/traces`, { headers: { 'content-type': 'application/x-protobuf' }, body: protobuf(part) });
  await post(spans.slice(0, 1));
  await new Promise((resolve) => setTimeout(resolve, 75));
  await post(spans.slice(1));
  // Half-way through the second quiet period: the first span alone did not make it quiet.
  await new Promise((resolve) => setTimeout(resolve, 100));
  expect(quiet).toEqual([]);
  await new Promise((resolve) => setTimeout(resolve, 400));
  expect(quiet).toHaveLength(1);
  expect(quiet[0].map((t) => [t.traceId, t.spans.length])).toEqual([[spans[0].spanContext().traceId, 3]]);
});

test('setup errors name the option', async () => {
  await expect(startReceiver({ maxSpans: 0 })).rejects.toThrow(
    new TypeError('@meshtrace/doctor: maxSpans must be an integer of at least 1, not 0'),
  );
  await expect(startReceiver({ forward: 'localhost:4318' })).rejects.toThrow(
    '@meshtrace/doctor: forward must be an http(s) URL',
  );
});
