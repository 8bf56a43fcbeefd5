import { findOrphans } from './analyze';
import type { Span } from './model';
import { spansFromOtlpJson } from './otlp/decode';
import { renderTraces } from './waterfall';

const T = 1_700_000_000_000;
/** One span as OTLP/JSON, times in ms after T. */
function otlp(
  service: string,
  spans: Array<{
    trace: string;
    id: string;
    parent?: string;
    name: string;
    kind: number;
    from: number;
    to: number;
    attributes?: Record<string, string | number>;
  }>,
): unknown {
  return {
    resource: { attributes: [{ key: 'service.name', value: { stringValue: service } }] },
    scopeSpans: [
      {
        spans: spans.map((s) => ({
          traceId: s.trace.repeat(32),
          spanId: s.id.repeat(16),
          parentSpanId: s.parent?.repeat(16),
          name: s.name,
          kind: s.kind,
          startTimeUnixNano: String((T + s.from) * 1e6),
          endTimeUnixNano: String((T + s.to) * 1e6),
          attributes: Object.entries(s.attributes ?? {}).map(([key, v]) => ({
            key,
            value: typeof v === 'number' ? { intValue: v } : { stringValue: v },
          })),
        })),
      },
    ],
  };
}

const spans: Span[] = spansFromOtlpJson({
  resourceSpans: [
    otlp('gateway', [
      {
        trace: 'a',
        id: '1',
        parent: 'f',
        name: 'GET /checkout/:id',
        kind: 2,
        from: 0,
        to: 40,
        attributes: { 'meshtrace.propagation.outcome': 'continued' },
      },
      {
        trace: 'a',
        id: '2',
        parent: '1',
        name: 'GET',
        kind: 3,
        from: 5,
        to: 35,
        attributes: { 'server.address': '127.0.0.1', 'server.port': 9001, 'http.response.status_code': 200 },
      },
    ]),
    otlp('orders', [
      {
        trace: 'b',
        id: '3',
        name: 'GET /orders/:id',
        kind: 2,
        from: 10,
        to: 30,
        attributes: { 'meshtrace.propagation.outcome': 'missing', 'server.address': '127.0.0.1', 'server.port': 9001 },
      },
    ]),
  ],
});

test('a headline per trace, rows indented under their parent, outcome or callee, bars on one time axis, durations', () => {
  const lines = renderTraces(spans, {
    color: false,
    width: 110,
    orphans: findOrphans(spans, { entryServices: ['gateway'] }),
    describePort: (p) => (p === 9001 ? 'orders' : undefined),
  });
  expect(lines).toEqual([
    `trace ${'a'.repeat(32)}  continues the caller's span ${'f'.repeat(16)}`,
    '  gateway             GET /checkout/:id  server  continued                |████████████████████████|  40.0 ms',
    '    gateway           GET                client  → orders 200             |   ██████████████████   |  30.0 ms',
    `trace ${'b'.repeat(32)}  ORPHANED ROOT: orders started a new trace (missing)`,
    // 10 ms of 40 is 6 columns of 24, less the 256 ns a double loses on an epoch time: 5.
    '  orders              GET /orders/:id    server  missing                  |     ████████████       |  20.0 ms',
  ]);
});

test('colour only when asked; an empty set says so', () => {
  expect(renderTraces(spans, { color: true, width: 110 }).join('\n')).toContain('\u001b[32mcontinued');
  expect(renderTraces([], { color: false, width: 80 })).toEqual(['(no spans)']);
});
