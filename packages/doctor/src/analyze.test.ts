import { ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api';
import type { Attributes, Span as ApiSpan } from '@opentelemetry/api';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { findOrphans, groupTraces, outcomesByService, summarize } from './analyze';
import type { Span } from './model';
import { decodeTraces } from './otlp/decode';

const T0 = Date.UTC(2025, 0, 1);

/** Spans made by the SDK, one provider per service, then through OTLP protobuf as a receiver sees them. */
function mesh(
  build: (
    start: (
      service: string,
      name: string,
      kind: SpanKind,
      at: [number, number],
      attributes?: Attributes,
      parent?: ApiSpan,
    ) => ApiSpan,
  ) => void,
): Span[] {
  const exporter = new InMemorySpanExporter();
  const providers = new Map<string, TracerProvider>();
  const provider = (service: string): TracerProvider => {
    if (!providers.has(service))
      providers.set(
        service,
        new TracerProvider({
          resource: resourceFromAttributes({ 'service.name': service }),
          spanProcessors: [new SimpleSpanProcessor({ exporter })],
        }),
      );
    return providers.get(service)!;
  };
  build((service, name, kind, [from, to], attributes = {}, parent) => {
    const span = provider(service)
      .getTracer('test')
      .startSpan(
        name,
        { kind, attributes, startTime: T0 + from },
        parent === undefined ? ROOT_CONTEXT : trace.setSpan(ROOT_CONTEXT, parent),
      );
    span.end(T0 + to);
    return span;
  });
  return decodeTraces(ProtobufTraceSerializer.serializeRequest(exporter.getFinishedSpans())!, 'application/x-protobuf');
}

const server = (path: string, port: number, extra: Attributes = {}): Attributes => ({
  'url.path': path,
  'server.address': '127.0.0.1',
  'server.port': port,
  ...extra,
});
const client = (path: string, port: number): Attributes => ({
  'url.full': `http://127.0.0.1:${port}${path}`,
  'server.address': '127.0.0.1',
  'server.port': port,
});
const MISSING = { 'meshtrace.propagation.outcome': 'missing' };

describe('findOrphans', () => {
  // gateway calls orders four times; each time the trace breaks differently, or not at all.
  const spans = mesh((start) => {
    // 1. A probe: the sidecar dropped traceparent but kept baggage, so both SERVER spans carry the probe id.
    const g1 = start(
      'gateway',
      'GET /checkout/:id',
      SpanKind.SERVER,
      [0, 50],
      server('/checkout/1', 8000, { 'meshtrace.probe': 'p-1' }),
    );
    start('gateway', 'GET', SpanKind.CLIENT, [5, 45], client('/orders/1', 9001), g1);
    start(
      'orders',
      'GET /orders/:id',
      SpanKind.SERVER,
      [10, 40],
      server('/orders/1', 7001, { 'meshtrace.probe': 'p-1', ...MISSING }),
    );
    // 2. x-request-id, as Envoy forwards it, recorded as a one-element array.
    const g2 = start(
      'gateway',
      'GET /checkout/:id',
      SpanKind.SERVER,
      [100, 150],
      server('/checkout/2', 8000, { 'http.request.header.x-request-id': ['r-2'] }),
    );
    start('gateway', 'GET', SpanKind.CLIENT, [105, 145], client('/orders/2', 9001), g2);
    start(
      'orders',
      'GET /orders/:id',
      SpanKind.SERVER,
      [110, 140],
      server('/orders/2', 7001, { 'http.request.header.x-request-id': ['r-2'], ...MISSING }),
    );
    // 3. Nothing but the CLIENT span: same path, another port (the sidecar's), inside its time.
    const g3 = start('gateway', 'GET /checkout/:id', SpanKind.SERVER, [200, 250], server('/checkout/3', 8000));
    start('gateway', 'GET', SpanKind.CLIENT, [205, 245], client('/orders/3', 9001), g3);
    start('orders', 'GET /orders/:id', SpanKind.SERVER, [210, 240], server('/orders/3', 7001, MISSING));
    // 4. A continued hop: its CLIENT span has its child, so a later root to the same path is not its callee.
    const g4 = start('gateway', 'GET /checkout/:id', SpanKind.SERVER, [300, 350], server('/checkout/4', 8000));
    const c4 = start('gateway', 'GET', SpanKind.CLIENT, [305, 345], client('/orders/4', 9001), g4);
    start(
      'orders',
      'GET /orders/:id',
      SpanKind.SERVER,
      [310, 340],
      server('/orders/4', 7001, { 'meshtrace.propagation.outcome': 'continued' }),
      c4,
    );
    start('orders', 'GET /orders/:id', SpanKind.SERVER, [400, 410], server('/orders/4', 7001, MISSING));
  });
  const id = (o: { span: Span }): string => String(o.span.attributes['url.path']);

  test('ties each orphan to its caller: probe, then x-request-id, then an open CLIENT span', () => {
    const orphans = findOrphans(spans);
    expect(
      orphans.map((o) => [id(o), o.via, o.caller?.service, o.caller?.kind, o.caller?.attributes['url.full'], o.hop]),
    ).toEqual([
      ['/orders/1', 'probe', 'gateway', 'client', 'http://127.0.0.1:9001/orders/1', { from: 'gateway', to: 'orders' }],
      [
        '/orders/2',
        'request-id',
        'gateway',
        'client',
        'http://127.0.0.1:9001/orders/2',
        { from: 'gateway', to: 'orders' },
      ],
      [
        '/orders/3',
        'client-span',
        'gateway',
        'client',
        'http://127.0.0.1:9001/orders/3',
        { from: 'gateway', to: 'orders' },
      ],
    ]);
    // The caller is in another trace, and it is the CLIENT span of the request that broke.
    for (const o of orphans) expect(o.caller!.traceId).not.toBe(o.span.traceId);
  });

  test('with entry services, an untied root elsewhere is an orphan without a caller; roots at the entry are not', () => {
    const orphans = findOrphans(spans, { entryServices: ['gateway'] });
    expect(orphans.map((o) => [id(o), o.via, o.hop])).toEqual([
      ['/orders/1', 'probe', { from: 'gateway', to: 'orders' }],
      ['/orders/2', 'request-id', { from: 'gateway', to: 'orders' }],
      ['/orders/3', 'client-span', { from: 'gateway', to: 'orders' }],
      ['/orders/4', undefined, { from: undefined, to: 'orders' }],
    ]);
  });

  test('without the CLIENT span, the probe still names the calling service', () => {
    const orphans = findOrphans(
      spans.filter((s) => !(s.kind === 'client' && s.attributes['url.full'] === 'http://127.0.0.1:9001/orders/1')),
    );
    expect(orphans.find((o) => id(o) === '/orders/1')).toMatchObject({
      via: 'probe',
      caller: { service: 'gateway', kind: 'server' },
      hop: { from: 'gateway', to: 'orders' },
    });
  });

  test('a CLIENT span is the caller of one orphan at most', () => {
    const twice = mesh((start) => {
      const g = start('gateway', 'GET /checkout/:id', SpanKind.SERVER, [0, 100], server('/checkout/1', 8000));
      start('gateway', 'GET', SpanKind.CLIENT, [5, 95], client('/orders/1', 9001), g);
      start('orders', 'GET /orders/:id', SpanKind.SERVER, [10, 40], server('/orders/1', 7001));
      start('orders', 'GET /orders/:id', SpanKind.SERVER, [50, 90], server('/orders/1', 7001));
    });
    expect(findOrphans(twice).map((o) => o.via)).toEqual(['client-span']);
  });
});

test('summarize: traces, roots, orphans per service and hop, outcomes per service', () => {
  const spans = mesh((start) => {
    for (let i = 0; i < 2; i++) {
      const g = start(
        'gateway',
        'GET /checkout/:id',
        SpanKind.SERVER,
        [i * 100, i * 100 + 50],
        server(`/checkout/${i}`, 8000, { 'meshtrace.propagation.outcome': 'continued' }),
      );
      start('gateway', 'GET', SpanKind.CLIENT, [i * 100 + 5, i * 100 + 45], client(`/orders/${i}`, 9001), g);
      start(
        'orders',
        'GET /orders/:id',
        SpanKind.SERVER,
        [i * 100 + 10, i * 100 + 40],
        server(`/orders/${i}`, 7001, {
          'meshtrace.propagation.outcome': 'malformed',
          'meshtrace.propagation.reason': 'bad-trace-id',
        }),
      );
    }
  });
  const summary = summarize(spans, { entryServices: ['gateway'] });
  expect({ ...summary, orphans: summary.orphans.length }).toEqual({
    traces: 4,
    spans: 6,
    roots: 4,
    orphans: 2,
    orphansByService: { orders: 2 },
    hops: [{ from: 'gateway', to: 'orders', count: 2 }],
    outcomes: { gateway: { continued: 2 }, orders: { 'malformed: bad-trace-id': 2 } },
  });
  expect(outcomesByService(spans.filter((s) => s.service === 'gateway'))).toEqual({ gateway: { continued: 2 } });
  expect(groupTraces(spans).map((t) => t.spans.map((s) => `${s.service} ${s.kind}`))).toEqual([
    ['gateway server', 'gateway client'],
    ['orders server'],
    ['gateway server', 'gateway client'],
    ['orders server'],
  ]);
});
