import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
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
import { runReceive } from './command';
import type { PrintChoice } from './command';
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
      body: gzipSync(Buffer.from(JsonTraceSerializer.serializeRequest(sdkTraces(2, 3))!)),
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
    new TypeError('@meshtrace/doctor: option "maxSpans" must be a positive integer, got 0'),
  );
  await expect(startReceiver({ forward: 'localhost:4318' })).rejects.toThrow(
    '@meshtrace/doctor: option "forward" must be an http(s) URL',
  );
});

/** Polls `check` until it holds, for at most `ms`. */
async function until(check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${check.toString()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const PROTOBUF = { 'content-type': 'application/x-protobuf' };

describe('duplicates: a span already held is stored once and counted', () => {
  test('a retried export, in another encoding, and a span twice in one export', async () => {
    const handed: number[] = [];
    const r = await receiver({ onSpans: (spans) => handed.push(spans.length) });
    const spans = sdkTraces(2, 3);
    expect((await send(`${r.url}/v1/traces`, { headers: PROTOBUF, body: protobuf(spans) })).status).toBe(200);
    const json = Buffer.from(JsonTraceSerializer.serializeRequest(spans)!);
    expect(
      (await send(`${r.url}/v1/traces`, { headers: { 'content-type': 'application/json' }, body: json })).status,
    ).toBe(200);
    const extra = sdkTraces(1, 2);
    const twice = protobuf([...extra, extra[0]]);
    expect((await send(`${r.url}/v1/traces`, { headers: PROTOBUF, body: twice })).status).toBe(200);
    expect(r.stats()).toMatchObject({ spans: 15, duplicateSpans: 7, windowSpans: 8, windowTraces: 3 });
    expect(new Set(r.spans().map((s) => `${s.traceId}-${s.spanId}`)).size).toBe(8);
    // onSpans hears of each span once.
    expect(handed).toEqual([6, 2]);
  });

  test('two receivers forwarding to each other pass a request on once each, then stop', async () => {
    // A free port for `a`, so that `b` can forward to it before `a` runs.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    const b = await receiver({ forward: `http://127.0.0.1:${port}` });
    const a = await receiver({ port, forward: b.url });
    expect((await send(`${a.url}/v1/traces`, { headers: PROTOBUF, body: protobuf(sdkTraces(1, 3)) })).status).toBe(200);
    await until(() => a.stats().duplicateSpans === 3);
    // Time for another round, were there one.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(a.stats()).toMatchObject({ spans: 6, duplicateSpans: 3, windowSpans: 3, forward: { ok: 1, failed: 0 } });
    expect(b.stats()).toMatchObject({ spans: 3, duplicateSpans: 0, windowSpans: 3, forward: { ok: 1, failed: 0 } });
  });
});

/** A request whose body is sent in two parts: it holds its place at the receiver until `finish`. */
function started(
  url: string,
  body: Buffer,
  headers: Record<string, string>,
): { finish(): Promise<Answer>; abort(): void } {
  let answered: Promise<Answer>;
  const req = request(`${url}/v1/traces`, { method: 'POST', headers }, (res) => {
    answered = new Promise((resolve) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
  });
  const response = new Promise<void>((resolve) => req.once('response', () => resolve()));
  req.on('error', () => {});
  req.write(body.subarray(0, 1024));
  return {
    finish: async () => {
      req.end(body.subarray(1024));
      await response;
      return answered;
    },
    abort: () => req.destroy(),
  };
}

describe('throttling: past maxInFlightBytes, 429 with Retry-After, which a sender can retry', () => {
  const KIB = 1024;
  /** An export of about `kib` KiB: one span with a long attribute. */
  function exportOf(kib: number): Buffer {
    const exporter = new InMemorySpanExporter();
    const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });
    provider
      .getTracer('test')
      .startSpan('big', { attributes: { 'db.statement': 'x'.repeat(kib * KIB) } })
      .end();
    return protobuf(exporter.getFinishedSpans());
  }

  test('a declared length that does not fit is refused before a byte is read, and goes in once there is room', async () => {
    const r = await receiver({ maxBodyBytes: 256 * KIB, maxInFlightBytes: 256 * KIB, maxAttributeLength: 100 });
    const first = exportOf(200);
    const held = started(r.url, first, { ...PROTOBUF, 'content-length': String(first.length) });
    await until(() => r.stats().inFlightBytes === first.length);
    const second = exportOf(100);
    const refused = await send(`${r.url}/v1/traces`, { headers: PROTOBUF, body: second });
    expect(refused.status).toBe(429);
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(refused.headers['content-type']).toBe('application/x-protobuf');
    expect(decodeStatus('protobuf', refused.body)).toEqual({ code: 8, message: expect.stringMatching(/^busy: /) });
    // JSON senders get a JSON Status.
    const refusedJson = await send(`${r.url}/v1/traces`, {
      headers: { 'content-type': 'application/json' },
      body: Buffer.alloc(100 * KIB, 0x20),
    });
    expect(refusedJson.status).toBe(429);
    expect(decodeStatus('json', refusedJson.body).code).toBe(8);

    expect((await held.finish()).status).toBe(200);
    expect((await send(`${r.url}/v1/traces`, { headers: PROTOBUF, body: second })).status).toBe(200);
    expect(r.stats()).toMatchObject({
      responses: { 200: 2, 429: 2 },
      inFlightBytes: 0,
      peakInFlightBytes: first.length,
      spans: 2,
      truncatedValues: 2,
    });
    expect(r.spans().map((s) => (s.attributes['db.statement'] as string).length)).toEqual([100, 100]);
  });

  test('a chunked body is refused once its chunks no longer fit', async () => {
    const r = await receiver({ maxBodyBytes: 256 * KIB, maxInFlightBytes: 256 * KIB });
    const first = exportOf(200);
    const held = started(r.url, first, { ...PROTOBUF, 'content-length': String(first.length) });
    await until(() => r.stats().inFlightBytes === first.length);
    const refused = await send(`${r.url}/v1/traces`, { headers: PROTOBUF, body: exportOf(100), chunked: true });
    expect(refused.status).toBe(429);
    expect(refused.headers['retry-after']).toMatch(/^\d+$/);
    expect((await held.finish()).status).toBe(200);
    expect(r.stats()).toMatchObject({ inFlightBytes: 0, responses: { 200: 1, 429: 1 } });
  });

  test('refused senders are told to come back one after another, not all at once', async () => {
    const r = await receiver({ maxBodyBytes: 256 * KIB, maxInFlightBytes: 256 * KIB });
    const first = exportOf(200);
    const held = started(r.url, first, { ...PROTOBUF, 'content-length': String(first.length) });
    await until(() => r.stats().inFlightBytes === first.length);
    const body = exportOf(200);
    const waits: number[] = [];
    for (let i = 0; i < 6; i++) {
      const answer = await send(`${r.url}/v1/traces`, { headers: PROTOBUF, body });
      expect(answer.status).toBe(429);
      waits.push(Number(answer.headers['retry-after']));
    }
    expect([...waits].sort((x, y) => x - y)).toEqual(waits);
    expect(waits[5]).toBeGreaterThan(waits[0]);
    expect((await held.finish()).status).toBe(200);
  });

  test('a sender that goes away mid-body gives its room back', async () => {
    const r = await receiver({ maxBodyBytes: 256 * KIB, maxInFlightBytes: 256 * KIB });
    const first = exportOf(200);
    const held = started(r.url, first, { ...PROTOBUF, 'content-length': String(first.length) });
    await until(() => r.stats().inFlightBytes === first.length);
    held.abort();
    await until(() => r.stats().inFlightBytes === 0);
    expect((await send(`${r.url}/v1/traces`, { headers: PROTOBUF, body: first })).status).toBe(200);
  });

  test('a body passed on to a collector holds its room until the collector answered', async () => {
    let answerCollector: (() => void) | undefined;
    const collector = await receiver({
      route: (_req, res) => {
        answerCollector = () => res.writeHead(200).end();
        return true;
      },
    });
    const r = await receiver({ maxBodyBytes: 256 * KIB, maxInFlightBytes: 256 * KIB, forward: collector.url });
    const body = exportOf(200);
    expect((await send(`${r.url}/v1/traces`, { headers: PROTOBUF, body })).status).toBe(200);
    expect(r.stats().inFlightBytes).toBe(body.length);
    expect((await send(`${r.url}/v1/traces`, { headers: PROTOBUF, body: exportOf(100) })).status).toBe(429);
    await until(() => answerCollector !== undefined);
    expect(r.stats().inFlightBytes).toBe(body.length);
    answerCollector!();
    await until(() => r.stats().forward.ok === 1);
    expect(r.stats().inFlightBytes).toBe(0);
  });

  test('setup: maxInFlightBytes below maxBodyBytes could never take a whole body in', async () => {
    await expect(startReceiver({ maxBodyBytes: 1024, maxInFlightBytes: 512 })).rejects.toThrow(
      new TypeError(
        '@meshtrace/doctor: option "maxInFlightBytes" must be an integer of at least maxBodyBytes (1024), got 512',
      ),
    );
  });
});

describe('meshtrace receive --print: which quiet traces get a waterfall', () => {
  /** OTLP/JSON resource spans of one SERVER root span of `service`, started `at` ms after the others. */
  function root(service: string, traceId: string, at: number, attributes: Record<string, string> = {}): object {
    const start = BigInt(1_700_000_000_000 + at) * 1_000_000n;
    return {
      resource: { attributes: [{ key: 'service.name', value: { stringValue: service } }] },
      scopeSpans: [
        {
          spans: [
            {
              traceId,
              spanId: traceId.slice(0, 16),
              name: 'GET /',
              kind: 2,
              startTimeUnixNano: String(start),
              endTimeUnixNano: String(start + 5_000_000n),
              attributes: Object.entries(attributes).map(([key, value]) => ({ key, value: { stringValue: value } })),
            },
          ],
        },
      ],
    };
  }
  const WHOLE = '1'.repeat(32);
  const CALLER = '2'.repeat(32);
  const ORPHAN = '3'.repeat(32);
  const MALFORMED = '4'.repeat(32);
  // The gateway is where requests enter; inventory's root shares the probe id of a request that entered
  // there: it is an orphan. Whether the caller's trace is shown with it is the analysis's to say.
  const body = Buffer.from(
    JSON.stringify({
      resourceSpans: [
        root('gateway', WHOLE, 0),
        root('gateway', CALLER, 10, { 'meshtrace.probe': 'p-1' }),
        root('inventory', ORPHAN, 11, { 'meshtrace.probe': 'p-1' }),
        root('gateway', MALFORMED, 20, { 'meshtrace.propagation.outcome': 'malformed' }),
      ],
    }),
  );

  test.each<[PrintChoice | undefined, string[], string[]]>([
    [undefined, [ORPHAN, MALFORMED], [WHOLE]],
    ['broken', [ORPHAN, MALFORMED], [WHOLE]],
    ['all', [WHOLE, CALLER, ORPHAN, MALFORMED], []],
    ['none', [], [WHOLE, CALLER, ORPHAN, MALFORMED]],
  ])('%s', async (print, printed, notPrinted) => {
    const lines: string[] = [];
    const r = await runReceive(
      { port: 0, quietMs: 50, entryServices: ['gateway'], ...(print === undefined ? {} : { print }) },
      { line: (text = '') => lines.push(text), color: false, width: 120 },
    );
    open.push(r);
    expect((await send(`${r.url}/v1/traces`, { headers: { 'content-type': 'application/json' }, body })).status).toBe(
      200,
    );
    await until(() => lines.some((l) => l.startsWith('── 4 traces')));
    const shown = (id: string): boolean => lines.some((l) => l.includes(`trace ${id}`));
    expect(printed.filter(shown)).toEqual(printed);
    expect(notPrinted.filter(shown)).toEqual([]);
    expect(lines.filter((l) => l.startsWith('──'))).toHaveLength(1);
  });

  test('an unknown choice is a setup error', async () => {
    await expect(
      runReceive({ port: 0, print: 'some' as PrintChoice }, { line: () => {}, color: false, width: 80 }),
    ).rejects.toThrow(new TypeError('@meshtrace/doctor: option "print" must be one of all, broken, none, got "some"'));
  });
});
