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
  // gateway calls orders (through its sidecar at 9001, which keeps the authority) four times; each time
  // the trace breaks differently, or not at all. Clocks differ: orders runs 3 ms behind gateway.
  const spans = mesh((start) => {
    // 1. The sidecar dropped traceparent: the CLIENT span went to 127.0.0.1:9001/orders/1, where orders was called.
    const g1 = start('gateway', 'GET /checkout/:id', SpanKind.SERVER, [0, 50], server('/checkout/1', 8000));
    start('gateway', 'GET', SpanKind.CLIENT, [5, 45], client('/orders/1', 9001), g1);
    start('orders', 'GET /orders/:id', SpanKind.SERVER, [2, 37], server('/orders/1', 9001, MISSING));
    // 2. Plain fetch, no CLIENT span: only x-request-id (recorded as a one-element array) ties the two.
    start(
      'gateway',
      'GET /checkout/:id',
      SpanKind.SERVER,
      [100, 150],
      server('/checkout/2', 8000, { 'http.request.header.x-request-id': ['r-2'] }),
    );
    start(
      'orders',
      'GET /orders/:id',
      SpanKind.SERVER,
      [107, 137],
      server('/orders/2', 9001, { 'http.request.header.x-request-id': ['r-2'], ...MISSING }),
    );
    // 3. A continued hop: its CLIENT span has its child, so a later root at the same address is not its callee.
    const g3 = start('gateway', 'GET /checkout/:id', SpanKind.SERVER, [300, 350], server('/checkout/3', 8000));
    const c3 = start('gateway', 'GET', SpanKind.CLIENT, [305, 345], client('/orders/3', 9001), g3);
    start('orders', 'GET /orders/:id', SpanKind.SERVER, [307, 337], server('/orders/3', 9001), c3);
    start('orders', 'GET /orders/:id', SpanKind.SERVER, [400, 410], server('/orders/3', 9001, MISSING));
    // 4. A health check: a root at orders that nothing called from inside a trace.
    start('orders', 'GET /healthz', SpanKind.SERVER, [500, 501], server('/healthz', 9001, MISSING));
  });
  const id = (o: { span: Span }): string => String(o.span.attributes['url.path']);

  test('ties an orphan to its caller only by a call to where it was called; a shared key without a known head names nothing', () => {
    expect(findOrphans(spans).map((o) => [id(o), o.via, o.caller?.kind, o.hop])).toEqual([
      ['/orders/1', 'peer', 'client', { from: 'gateway', to: 'orders' }],
    ]);
  });

  test('with entry services, a root sharing x-request-id with a trace that entered there is an orphan, with no caller named', () => {
    const orphans = findOrphans(spans, { entryServices: ['gateway'] });
    expect(orphans.map((o) => [id(o), o.via, o.caller, o.hop])).toEqual([
      ['/orders/1', 'peer', expect.anything(), { from: 'gateway', to: 'orders' }],
      ['/orders/2', 'request-id', undefined, { from: undefined, to: 'orders' }],
    ]);
  });

  test('a root sharing the probe id with a trace continued from outside is an orphan', () => {
    const probed = mesh((start) => {
      // The probe records no span: gateway's parent never arrives, which marks its trace as the head.
      const g = start(
        'gateway',
        'GET /checkout/:id',
        SpanKind.SERVER,
        [0, 50],
        server('/checkout/1', 8000, { 'meshtrace.probe': 'p-1' }),
      );
      start(
        'orders',
        'GET /orders/:id',
        SpanKind.SERVER,
        [10, 40],
        server('/orders/1', 9001, { 'meshtrace.probe': 'p-1', ...MISSING }),
      );
      void g;
    });
    // Make gateway's span a continuation: give it a parent that is not among the spans.
    const continued = probed.map((s) => (s.service === 'gateway' ? { ...s, parentSpanId: 'ffffffffffffffff' } : s));
    expect(findOrphans(continued).map((o) => [id(o), o.via, o.hop])).toEqual([
      ['/orders/1', 'probe-id', { from: undefined, to: 'orders' }],
    ]);
    expect(findOrphans(probed)).toEqual([]);
  });

  test('two roots at the address one call went to are both tied to it: start times never choose between them', () => {
    const twice = mesh((start) => {
      const g = start('gateway', 'GET /checkout/:id', SpanKind.SERVER, [0, 100], server('/checkout/1', 8000));
      start('gateway', 'GET', SpanKind.CLIENT, [5, 95], client('/orders/1', 9001), g);
      start('orders', 'GET /orders/:id', SpanKind.SERVER, [1000, 1040], server('/orders/1', 9001));
      start('orders', 'GET /orders/:id', SpanKind.SERVER, [-500, -490], server('/orders/1', 9001));
    });
    const orphans = findOrphans(twice);
    expect(orphans.map((o) => o.via)).toEqual(['peer', 'peer']);
    expect(new Set(orphans.map((o) => o.caller)).size).toBe(1);
  });
});

test("behind a tracing sidecar that nothing reached, the service that continued the sidecar's new trace is the orphan", () => {
  const spans = mesh((start) => {
    // An egress sidecar that strips traceparent: its span continues gateway's trace, the call goes on without it.
    const g = start('gateway', 'GET /checkout/:id', SpanKind.SERVER, [0, 50], server('/checkout/1', 8000));
    const c = start('gateway', 'GET', SpanKind.CLIENT, [5, 45], client('/orders/1', 9001), g);
    start(
      'gateway-sidecar',
      'handler',
      SpanKind.SERVER,
      [6, 44],
      { ...server('/orders/1', 9001), component: 'proxy' },
      c,
    );
    // orders' inbound sidecar received no trace context: it started a trace, and orders continued its span.
    const sidecar = start('orders-sidecar', 'handler', SpanKind.SERVER, [7, 43], {
      ...server('/orders/1', 9001),
      component: 'proxy',
    });
    start(
      'orders',
      'GET /orders/:id',
      SpanKind.SERVER,
      [8, 42],
      server('/orders/1', 9001, { 'meshtrace.propagation.outcome': 'continued' }),
      sidecar,
    );
  });
  const orphans = findOrphans(spans);
  expect(orphans.map((o) => [o.span.service, o.via, o.caller?.service, o.hop])).toEqual([
    ['orders', 'peer', 'gateway-sidecar', { from: 'gateway', to: 'orders' }],
  ]);
  expect(summarize(spans).orphansByService).toEqual({ orders: 1 });
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
        server(`/orders/${i}`, 9001, {
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
