import type { Attributes, Span } from '../model';
import { SpanWindow, capAttributes, estimateSpanBytes } from './window';
import type { QuietTrace, SpanWindowLimits } from './window';

const RESOURCE: Attributes = { 'service.name': 'orders' };

function span(traceNo: number, spanNo: number, attributes: Attributes = {}): Span {
  return {
    traceId: traceNo.toString(16).padStart(32, '0'),
    spanId: spanNo.toString(16).padStart(16, '0'),
    parentSpanId: undefined,
    name: 'GET /orders/:id',
    kind: 'server',
    service: 'orders',
    startMs: 1000 + spanNo,
    endMs: 1010 + spanNo,
    attributes,
    resource: RESOURCE,
    status: { code: 'unset' },
  };
}

const open: SpanWindow[] = [];
function window(limits: Partial<SpanWindowLimits> = {}, onQuiet: (t: QuietTrace[]) => void = () => {}): SpanWindow {
  const w = new SpanWindow(
    { maxSpans: 1000, maxBytes: 1024 * 1024, maxAttributeLength: 4096, quietMs: 60_000, ...limits },
    onQuiet,
  );
  open.push(w);
  return w;
}
afterEach(() => {
  for (const w of open.splice(0)) w.stop();
});

describe('a span already held is stored once', () => {
  test('again in a later add, and twice within one add', () => {
    const w = window();
    const first = w.add([span(1, 1), span(1, 2), span(1, 2)]);
    expect(first).toMatchObject({ duplicates: 1 });
    expect(first.spans.map((s) => s.spanId)).toEqual([span(1, 1).spanId, span(1, 2).spanId]);
    const again = w.add([span(1, 1), span(1, 2), span(1, 3)]);
    expect(again.duplicates).toBe(2);
    expect(again.spans.map((s) => s.spanId)).toEqual([span(1, 3).spanId]);
    expect(w.size).toBe(3);
    expect(w.spans()).toHaveLength(3);
  });

  test('in a trace long enough to be searched by a set of ids', () => {
    const w = window();
    const many = Array.from({ length: 100 }, (_, i) => span(7, i + 1));
    expect(w.add(many).spans).toHaveLength(100);
    const again = w.add([...many.slice(40, 60), span(7, 101)]);
    expect(again).toMatchObject({ duplicates: 20 });
    expect(again.spans).toHaveLength(1);
    expect(w.size).toBe(101);
  });

  test('the same span id in another trace is another span', () => {
    const w = window();
    w.add([span(1, 1)]);
    expect(w.add([span(2, 1)])).toMatchObject({ duplicates: 0 });
    expect(w.size).toBe(2);
  });

  test('a trace goes quiet again only for new spans, not for a retry of spans already handed on', () => {
    const quiet: QuietTrace[][] = [];
    const w = window({}, (t) => quiet.push(t));
    w.add([span(1, 1)]);
    w.flush();
    w.add([span(1, 1)]);
    w.flush();
    expect(quiet).toHaveLength(1);
    w.add([span(1, 2)]);
    w.flush();
    expect(quiet.map((batch) => batch.map((t) => t.spans.length))).toEqual([[1], [2]]);
  });
});

describe('the bounds', () => {
  test('maxSpans: the oldest traces go first, counted', () => {
    const w = window({ maxSpans: 5 });
    for (let t = 1; t <= 4; t++) w.add([span(t, 1), span(t, 2)]);
    expect({
      size: w.size,
      traces: w.traceCount,
      evictedSpans: w.evictedSpans,
      evictedTraces: w.evictedTraces,
    }).toEqual({ size: 4, traces: 2, evictedSpans: 4, evictedTraces: 2 });
    expect(new Set(w.spans().map((s) => s.traceId))).toEqual(new Set([span(3, 1).traceId, span(4, 1).traceId]));
  });

  test('maxBytes: a few huge spans evict as many small ones would, and the estimate comes back to 0', () => {
    const small = estimateSpanBytes(span(1, 1, { 'http.route': '/orders/:id' }));
    const w = window({ maxBytes: 100 * small, maxAttributeLength: 1_000_000 });
    for (let t = 1; t <= 50; t++) w.add([span(t, 1, { 'http.route': '/orders/:id' })]);
    expect(w.size).toBe(50);
    expect(w.bytes).toBeLessThanOrEqual(100 * small);
    // One span carrying a 64 KiB statement weighs far more than a small one.
    const huge = span(99, 1, { 'db.statement': 'x'.repeat(64 * 1024) });
    expect(estimateSpanBytes(huge)).toBeGreaterThan(64 * 1024);
    w.add([huge]);
    expect(w.bytes).toBeLessThanOrEqual(100 * small);
    expect(w.evictedSpans).toBe(51);
    expect(w.size).toBe(0);
    // A huge span alone over the budget is not kept either; nothing is left counted.
    expect(w.bytes).toBe(0);
  });

  test('an estimate grows with every string the span holds, two bytes a character past Latin-1', () => {
    const base = estimateSpanBytes(span(1, 1));
    expect(estimateSpanBytes(span(1, 1, { a: 'x'.repeat(1000) }))).toBeGreaterThanOrEqual(base + 1000);
    expect(estimateSpanBytes(span(1, 1, { a: '漢'.repeat(1000) }))).toBeGreaterThanOrEqual(base + 2000);
    expect(estimateSpanBytes(span(1, 1, { a: ['x'.repeat(500), 'y'.repeat(500)] }))).toBeGreaterThanOrEqual(
      base + 1000,
    );
  });
});

describe('attribute values are cut on ingest', () => {
  test('strings and strings in arrays past maxAttributeLength; other values and short strings untouched', () => {
    const w = window({ maxAttributeLength: 8 });
    const added = w.add([
      span(1, 1, {
        'db.statement': 'SELECT * FROM orders WHERE id = 42',
        tags: ['short', 'much too long a tag'],
        'server.port': 8080,
        ok: true,
        'url.path': '/orders',
      }),
    ]);
    expect(added.truncated).toBe(2);
    expect(added.spans[0].attributes).toEqual({
      'db.statement': 'SELECT *',
      tags: ['short', 'much too'],
      'server.port': 8080,
      ok: true,
      'url.path': '/orders',
    });
  });

  test('a surrogate pair is never split, and a span without long values is the same object', () => {
    const emoji = capAttributes(span(1, 1, { note: 'abc😀def' }), 4);
    expect(emoji).toEqual({ span: expect.objectContaining({ attributes: { note: 'abc' } }), truncated: 1 });
    const plain = span(1, 1, { note: 'abc' });
    expect(capAttributes(plain, 4).span).toBe(plain);
  });
});
