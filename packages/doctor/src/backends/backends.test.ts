import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind, context, trace } from '@opentelemetry/api';
import type { Attributes } from '@opentelemetry/api';
import { JsonTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { ATTR } from '../model';
import type { Span } from '../model';
import { spansFromOtlpJson } from '../otlp/decode';
import { startReceiver } from '../receive/receiver';
import { jaegerSource } from './jaeger';
import { answerSpanQuery } from '../receive/query';
import { receivedSpanSource, receiverSource } from './receiver';
import type { SpanSource, TimeWindow } from './source';
import { tempoSource } from './tempo';

const PROBE = '7d0c5a4e-0b8e-4f0a-9a53-2f1f6f2b8c11';
const WINDOW: TimeWindow = { startMs: Date.now() - 60_000, endMs: Date.now() + 60_000 };

/**
 * Spans a real SDK recorded: gateway SERVER → gateway CLIENT → orders SERVER in one trace (whose id
 * starts with zeros, as Tempo's search drops them), and inventory starting a trace of its own,
 * tied to the probe only by its attributes.
 */
async function recordSpans(): Promise<ReadableSpan[]> {
  const exporter = new InMemorySpanExporter();
  const provider = (service: string): TracerProvider =>
    new TracerProvider({
      resource: resourceFromAttributes({ 'service.name': service, 'service.namespace': 'shop' }),
      spanProcessors: [new SimpleSpanProcessor({ exporter })],
    });
  const providers = ['gateway', 'orders', 'inventory'].map(provider);
  const [gateway, orders, inventory] = providers.map((p) => p.getTracer('test'));
  const probeAttrs: Attributes = { [ATTR.probe]: PROBE, [ATTR.requestId]: [PROBE] };
  const remote = trace.setSpanContext(context.active(), {
    traceId: '00000000000000004bf92f3577b34da6',
    spanId: '00f067aa0ba902b7',
    traceFlags: 1,
    isRemote: true,
  });
  const server = gateway.startSpan(
    'GET /checkout/:id',
    { kind: SpanKind.SERVER, attributes: { ...probeAttrs, [ATTR.outcome]: 'continued' } },
    remote,
  );
  const client = gateway.startSpan(
    'GET',
    {
      kind: SpanKind.CLIENT,
      attributes: { 'url.full': 'http://orders:8080/orders/1', 'http.response.status_code': 200 },
    },
    trace.setSpan(remote, server),
  );
  const ordersServer = orders.startSpan(
    'GET /orders/:id',
    { kind: SpanKind.SERVER, attributes: { ...probeAttrs, [ATTR.outcome]: 'continued' } },
    trace.setSpan(remote, client),
  );
  ordersServer.setStatus({ code: 2, message: 'stock unavailable' });
  const orphan = inventory.startSpan('GET /stock/:sku', {
    kind: SpanKind.SERVER,
    attributes: { ...probeAttrs, [ATTR.outcome]: 'malformed', [ATTR.reason]: 'uppercase-hex' },
  });
  const unrelated = inventory.startSpan('GET /health', { kind: SpanKind.SERVER });
  for (const s of [unrelated, orphan, ordersServer, client, server]) s.end();
  await Promise.all(providers.map((p) => p.forceFlush()));
  return exporter.getFinishedSpans();
}

const TRACE_ID = '00000000000000004bf92f3577b34da6';
let recorded: ReadableSpan[];
let ORPHAN_TRACE: string;
/** OTLP JSON of `spans`, as an exporter sends it. */
const otlp = (spans: readonly ReadableSpan[]): { resourceSpans: unknown[] } =>
  JSON.parse(Buffer.from(JsonTraceSerializer.serializeRequest([...spans])!).toString('utf8')) as {
    resourceSpans: unknown[];
  };
const ofTrace = (id: string): ReadableSpan[] => recorded.filter((s) => s.spanContext().traceId === id);
/** What the doctor should read back: the OTLP JSON through the doctor's own decoder. */
const expected = (id: string): Span[] => spansFromOtlpJson(otlp(ofTrace(id)));
const byId = (spans: readonly Span[]): Span[] => [...spans].sort((a, b) => a.spanId.localeCompare(b.spanId));

/** The same spans in Jaeger's v1 JSON model, as Jaeger's query service answers `/api/traces/{id}`. */
function jaegerModel(spans: readonly ReadableSpan[]): unknown {
  const micros = (t: [number, number]): number => t[0] * 1e6 + Math.floor(t[1] / 1e3);
  const services = [...new Set(spans.map((s) => String(s.resource.attributes['service.name'])))];
  const processes = Object.fromEntries(
    services.map((name, i) => {
      const resource = spans.find((s) => s.resource.attributes['service.name'] === name)!.resource.attributes;
      const tags = Object.entries(resource)
        .filter(([k]) => k !== 'service.name')
        .map(([key, value]) => ({ key, type: 'string', value }));
      return [`p${i + 1}`, { serviceName: name, tags }];
    }),
  );
  const kinds = ['internal', 'server', 'client', 'producer', 'consumer'];
  return {
    data: [
      {
        traceID: spans[0].spanContext().traceId.replace(/^0{16}/, ''),
        processes,
        warnings: null,
        spans: spans.map((s) => ({
          traceID: s.spanContext().traceId.replace(/^0{16}/, ''),
          spanID: s.spanContext().spanId,
          operationName: s.name,
          references: s.parentSpanContext
            ? [{ refType: 'CHILD_OF', traceID: s.spanContext().traceId, spanID: s.parentSpanContext.spanId }]
            : [],
          startTime: micros(s.startTime),
          duration: micros(s.endTime) - micros(s.startTime),
          tags: [
            { key: 'span.kind', type: 'string', value: kinds[s.kind] },
            ...(s.status.code === 2
              ? [
                  { key: 'otel.status_code', type: 'string', value: 'ERROR' },
                  { key: 'error', type: 'bool', value: true },
                  { key: 'otel.status_description', type: 'string', value: s.status.message },
                ]
              : []),
            // OpenTelemetry's Jaeger translation writes arrays as JSON text.
            ...Object.entries(s.attributes).map(([key, value]) => ({
              key,
              type: typeof value === 'number' ? 'int64' : 'string',
              value: Array.isArray(value) ? JSON.stringify(value) : value,
            })),
          ],
          logs: [],
          processID: `p${services.indexOf(String(s.resource.attributes['service.name'])) + 1}`,
          warnings: null,
        })),
      },
    ],
    total: 0,
    limit: 0,
    offset: 0,
    errors: null,
  };
}

type Handler = (url: URL, req: IncomingMessage, res: ServerResponse) => void;
let handler: Handler;
const asked: string[] = [];
const backend: Server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://backend');
  asked.push(`${url.pathname}${url.search}`);
  handler(url, req, res);
});
const json = (res: ServerResponse, status: number, body: unknown): void =>
  void res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
const text = (res: ServerResponse, status: number, body: string): void =>
  void res.writeHead(status, { 'content-type': 'text/plain' }).end(body);
let base: string;
beforeAll(async () => {
  recorded = await recordSpans();
  ORPHAN_TRACE = recorded.find((s) => s.name === 'GET /stock/:sku')!.spanContext().traceId;
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`;
});
afterAll(() => new Promise((resolve) => backend.close(resolve)));
beforeEach(() => {
  asked.length = 0;
});

test('the fixture is what the backends are asked about', () => {
  expect(
    expected(TRACE_ID)
      .map((s) => `${s.service} ${s.kind}`)
      .sort(),
  ).toEqual(['gateway client', 'gateway server', 'orders server']);
  expect(
    expected(ORPHAN_TRACE)
      .filter((s) => s.attributes[ATTR.probe] === PROBE)
      .map((s) => s.service),
  ).toEqual(['inventory']);
});

describe('jaeger', () => {
  const gatewayError = (res: ServerResponse, message: string): void =>
    json(res, 404, { error: { httpCode: 404, message } });

  test('reads a trace over API v3: OTLP JSON in "result"', async () => {
    handler = (url, _req, res) =>
      url.pathname === `/api/v3/traces/${TRACE_ID}`
        ? json(res, 200, { result: otlp(ofTrace(TRACE_ID)) })
        : text(res, 404, '404 page not found\n');
    const spans = await jaegerSource({ endpoint: `${base}/` }).trace(TRACE_ID, WINDOW);
    expect(byId(spans)).toEqual(byId(expected(TRACE_ID)));
    expect(asked).toEqual([`/api/v3/traces/${TRACE_ID}`]);
  });

  test('a trace API v3 does not have (yet) is empty, without asking v1', async () => {
    handler = (_url, _req, res) => gatewayError(res, 'trace not found');
    expect(await jaegerSource({ endpoint: base }).trace(TRACE_ID, WINDOW)).toEqual([]);
    expect(asked).toEqual([`/api/v3/traces/${TRACE_ID}`]);
  });

  test("without API v3, reads v1 /api/traces/{id}: Jaeger's model becomes the same spans", async () => {
    handler = (url, _req, res) =>
      url.pathname === `/api/traces/${TRACE_ID}`
        ? json(res, 200, jaegerModel(ofTrace(TRACE_ID)))
        : text(res, 404, '404 page not found\n');
    const source = jaegerSource({ endpoint: base });
    // Jaeger keeps whole microseconds, each time rounded on its own way: the times agree to a microsecond or two.
    const [got, want] = [byId(await source.trace(TRACE_ID, WINDOW)), byId(expected(TRACE_ID))];
    const untimed = (spans: Span[]): unknown[] => spans.map(({ startMs: _s, endMs: _e, ...rest }) => rest);
    expect(untimed(got)).toEqual(untimed(want));
    for (const [i, g] of got.entries()) {
      expect(Math.abs(g.startMs - want[i].startMs)).toBeLessThan(0.003);
      expect(Math.abs(g.endMs - want[i].endMs)).toBeLessThan(0.003);
    }
    // Once v1 has answered, v3 is not asked again.
    expect(byId(await source.trace(TRACE_ID, WINDOW))).toHaveLength(3);
    expect(asked).toEqual([`/api/v3/traces/${TRACE_ID}`, `/api/traces/${TRACE_ID}`, `/api/traces/${TRACE_ID}`]);
  });

  test("without API v3, finds the traces carrying the probe with v1's search, one service at a time", async () => {
    const traces: Record<string, ReadableSpan[]> = {
      gateway: ofTrace(TRACE_ID),
      orders: ofTrace(TRACE_ID),
      inventory: recorded.filter((s) => s.resource.attributes['service.name'] === 'inventory'),
    };
    handler = (url, _req, res) => {
      if (url.pathname.startsWith('/api/v3/')) return text(res, 404, '404 page not found\n');
      if (url.pathname === '/api/services') return json(res, 200, { data: Object.keys(traces), total: 3 });
      if (url.pathname !== '/api/traces') return text(res, 404, '404 page not found\n');
      const spans = traces[url.searchParams.get('service') ?? ''];
      // One v1 model per trace, as Jaeger answers a search.
      const ids = [...new Set(spans.map((s) => s.spanContext().traceId))];
      const models = ids.map(
        (id) => (jaegerModel(spans.filter((s) => s.spanContext().traceId === id)) as { data: unknown[] }).data,
      );
      json(res, 200, { data: models.flat(), total: ids.length });
    };
    const spans = await jaegerSource({ endpoint: base }).probeTraces(PROBE, WINDOW);
    const untimed = (list: Span[]): unknown[] => byId(list).map(({ startMs: _s, endMs: _e, ...rest }) => rest);
    expect(untimed(spans)).toEqual(
      untimed([...expected(TRACE_ID), ...expected(ORPHAN_TRACE).filter((s) => s.traceId === ORPHAN_TRACE)]),
    );
    const searches = asked.filter((a) => a.startsWith('/api/traces?')).map((a) => new URL(a, base).searchParams);
    expect(searches.map((q) => q.get('service'))).toEqual(['gateway', 'orders', 'inventory']);
    expect(searches[0].get('start')).toBe(String(WINDOW.startMs * 1000));
    expect(searches[0].get('end')).toBe(String(WINDOW.endMs * 1000));
  });

  test('finds the traces carrying the probe with an API v3 attribute search', async () => {
    handler = (url, _req, res) => {
      if (url.pathname !== '/api/v3/traces') return gatewayError(res, 'not found');
      // A Jaeger that ignores the filter answers with every trace of the window: the source keeps those carrying the probe.
      json(res, 200, { result: otlp(recorded) });
    };
    const spans = await jaegerSource({ endpoint: base }).probeTraces(PROBE, WINDOW);
    expect(byId(spans)).toEqual(
      byId([...expected(TRACE_ID), ...expected(ORPHAN_TRACE).filter((s) => s.traceId === ORPHAN_TRACE)]),
    );
    expect(spans.some((s) => s.name === 'GET /health')).toBe(false);
    const query = new URL(asked[0], base).searchParams;
    expect(JSON.parse(query.get('query.attributes')!)).toEqual({ [ATTR.probe]: PROBE });
    expect(query.get('query.startTimeMin')).toBe(new Date(WINDOW.startMs).toISOString());
    expect(query.get('query.start_time_max')).toBe(new Date(WINDOW.endMs).toISOString());
    // Jaeger 1.75 takes the depth only as num_traces, and answers 500 without one.
    expect(query.get('query.num_traces')).toBe('20');
  });

  test.each([
    ['a 500', (res: ServerResponse) => text(res, 500, 'storage unavailable'), /answered 500: storage unavailable/],
    ['a body that is not JSON', (res: ServerResponse) => text(res, 200, '<html>'), /not JSON/],
    ['JSON without "result"', (res: ServerResponse) => json(res, 200, { data: [] }), /without the "result" object/],
    [
      'OTLP that is not OTLP',
      (res: ServerResponse) => json(res, 200, { result: { resourceSpans: 'x' } }),
      /not OTLP JSON: resourceSpans is not a list/,
    ],
  ])('%s is an error naming the URL, not a crash', async (_name, answer, message) => {
    handler = (_url, _req, res) => answer(res);
    await expect(jaegerSource({ endpoint: base }).trace(TRACE_ID, WINDOW)).rejects.toThrow(message);
  });

  test('a v1 answer of another shape is an error', async () => {
    handler = (url, _req, res) =>
      url.pathname.startsWith('/api/v3') ? text(res, 404, 'nope') : json(res, 200, { data: [{ spans: 'x' }] });
    await expect(jaegerSource({ endpoint: base }).trace(TRACE_ID, WINDOW)).rejects.toThrow(/not Jaeger's JSON model/);
  });

  test('an endpoint that is not a URL is a TypeError', () => {
    expect(() => jaegerSource({ endpoint: 'jaeger:16686' })).toThrow(
      new TypeError('@meshtrace/doctor: option "endpoint" must be an http(s) URL, got "jaeger:16686"'),
    );
  });
});

describe('tempo', () => {
  test('reads a trace from /api/v2/traces/{id}: OTLP JSON in "trace"', async () => {
    handler = (url, _req, res) =>
      url.pathname === `/api/v2/traces/${TRACE_ID}`
        ? json(res, 200, { trace: otlp(ofTrace(TRACE_ID)) })
        : text(res, 404, 'trace not found');
    expect(byId(await tempoSource({ endpoint: base }).trace(TRACE_ID, WINDOW))).toEqual(byId(expected(TRACE_ID)));
    expect(asked).toEqual([`/api/v2/traces/${TRACE_ID}`]);
  });

  test('a Tempo without the v2 path answers /api/traces/{id} with "batches", and is asked only there afterwards', async () => {
    handler = (url, _req, res) =>
      url.pathname === `/api/traces/${TRACE_ID}`
        ? json(res, 200, { batches: otlp(ofTrace(TRACE_ID)).resourceSpans })
        : text(res, 404, '404 page not found');
    const source = tempoSource({ endpoint: base });
    expect(byId(await source.trace(TRACE_ID, WINDOW))).toEqual(byId(expected(TRACE_ID)));
    await source.trace(TRACE_ID, WINDOW);
    expect(asked).toEqual([`/api/v2/traces/${TRACE_ID}`, `/api/traces/${TRACE_ID}`, `/api/traces/${TRACE_ID}`]);
  });

  test('a trace Tempo does not have (yet) is empty', async () => {
    handler = (_url, _req, res) => text(res, 404, 'trace not found');
    expect(await tempoSource({ endpoint: base }).trace(TRACE_ID, WINDOW)).toEqual([]);
  });

  test('finds the traces carrying the probe with TraceQL, ids padded as Tempo drops leading zeros', async () => {
    handler = (url, _req, res) => {
      if (url.pathname === '/api/search') {
        return json(res, 200, {
          traces: [
            {
              traceID: TRACE_ID.replace(/^0+/, ''),
              rootServiceName: 'gateway',
              rootTraceName: 'GET /checkout/:id',
              startTimeUnixNano: '1',
              durationMs: 3,
            },
            {
              traceID: ORPHAN_TRACE,
              rootServiceName: 'inventory',
              rootTraceName: 'GET /stock/:sku',
              startTimeUnixNano: '1',
              durationMs: 1,
            },
          ],
          metrics: { inspectedBytes: '1000' },
        });
      }
      const id = url.pathname.split('/').pop()!;
      json(res, 200, { trace: otlp(ofTrace(id)) });
    };
    const spans = await tempoSource({ endpoint: base }).probeTraces(PROBE, WINDOW);
    expect(byId(spans)).toEqual(byId([...expected(TRACE_ID), ...expected(ORPHAN_TRACE)]));
    const query = new URL(asked[0], base).searchParams;
    expect(query.get('q')).toBe(`{ span.meshtrace.probe = "${PROBE}" }`);
    expect(query.get('start')).toBe(String(Math.floor(WINDOW.startMs / 1000)));
    expect(asked.slice(1).sort()).toEqual([`/api/v2/traces/${ORPHAN_TRACE}`, `/api/v2/traces/${TRACE_ID}`].sort());
  });

  test.each([
    [
      'a 400 for the query',
      (res: ServerResponse) => text(res, 400, 'invalid TraceQL query'),
      /answered 400: invalid TraceQL query/,
    ],
    [
      'a search answer without "traces" as a list',
      (res: ServerResponse) => json(res, 200, { traces: {} }),
      /without the "traces" list/,
    ],
  ])('%s is an error naming the URL', async (_name, answer, message) => {
    handler = (_url, _req, res) => answer(res);
    await expect(tempoSource({ endpoint: base }).probeTraces(PROBE, WINDOW)).rejects.toThrow(message);
  });

  test('an unreachable Tempo is an error saying so', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const { port } = closed.address() as AddressInfo;
    await new Promise((resolve) => closed.close(resolve));
    await expect(tempoSource({ endpoint: `http://127.0.0.1:${port}` }).trace(TRACE_ID, WINDOW)).rejects.toThrow(
      `GET http://127.0.0.1:${port}/api/v2/traces/${TRACE_ID} failed: ECONNREFUSED`,
    );
  });
});

describe('receiver', () => {
  /** Exports the recorded spans to a receiver as an OTLP/HTTP JSON exporter would. */
  async function exportTo(url: string): Promise<void> {
    const res = await fetch(`${url}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: Buffer.from(JsonTraceSerializer.serializeRequest(recorded)!),
    });
    expect(res.status).toBe(200);
  }

  async function check(source: SpanSource): Promise<void> {
    expect(byId(await source.trace(TRACE_ID, WINDOW))).toEqual(byId(expected(TRACE_ID)));
    expect(byId(await source.probeTraces(PROBE, WINDOW))).toEqual(
      byId([...expected(TRACE_ID), ...expected(ORPHAN_TRACE).filter((s) => s.traceId === ORPHAN_TRACE)]),
    );
  }

  test('reads what a receiver in this process received', async () => {
    const receiver = await startReceiver({ port: 0 });
    try {
      await exportTo(receiver.url);
      await check(receivedSpanSource(receiver));
    } finally {
      await receiver.close();
    }
  });

  test('starts a receiver of its own on the port given, and stops it on close', async () => {
    const source = await receiverSource({ port: 0 });
    expect(source.description).toMatch(/^the receiver at http:\/\/127\.0\.0\.1:\d+$/);
    const url = source.description.slice('the receiver at '.length);
    await exportTo(url);
    await check(source);
    await source.close();
    await expect(fetch(`${url}/v1/traces`)).rejects.toThrow();
  });

  test('asks a running receiver over HTTP where it mounts the span query', async () => {
    let received: () => Span[] = () => [];
    const receiver = await startReceiver({ port: 0, route: (req, res) => answerSpanQuery(req, res, () => received()) });
    received = () => receiver.spans();
    try {
      await exportTo(receiver.url);
      await check(await receiverSource({ endpoint: receiver.url }));
    } finally {
      await receiver.close();
    }
  });

  test('a server without the span query is an error saying so', async () => {
    handler = (_url, _req, res) => text(res, 404, 'no such path');
    await expect((await receiverSource({ endpoint: base })).trace(TRACE_ID, WINDOW)).rejects.toThrow(
      `${base} has no span query (/api/doctor/spans answered 404): is it a meshtrace receiver?`,
    );
  });

  test('a bad port is a TypeError', async () => {
    await expect(receiverSource({ port: 70000 })).rejects.toThrow(
      new TypeError('@meshtrace/doctor: option "port" must be an integer from 0 to 65535, got 70000'),
    );
  });
});
