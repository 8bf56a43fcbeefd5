import fc from 'fast-check';
import { ROOT_CONTEXT, defaultTextMapGetter, defaultTextMapSetter, propagation, trace } from '@opentelemetry/api';
import {
  BAGGAGE_LIMITS,
  MeshPropagator,
  extractContext,
  headerGetter,
  parseBaggage,
  parseTracestate,
  serializeBaggage,
} from '@meshtrace/core';
import { MeshTraceState } from './tracestate';
import { setupTestTracing } from '@meshtrace/testkit';

// Properties over arbitrary input: whatever comes in, nothing throws and only valid headers go out.
const tracing = setupTestTracing();
afterAll(() => tracing.shutdown());
const mesh = new MeshPropagator({ b3: 'single' });
const TRACEPARENT = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const RUNS = { numRuns: 2000 };

const hex = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
const nearlyTraceparent = fc.oneof(
  fc.tuple(hex(2), hex(32), hex(16), hex(2)).map(([v, t, s, f]) => `${v}-${t}-${s}-${f}`),
  fc.tuple(hex(32), hex(16), fc.string({ maxLength: 8 })).map(([t, s, x]) => `00-${t}-${s}-01${x}`),
  fc.string({ maxLength: 80 }),
  fc.string({ unit: 'binary', maxLength: 80 }),
);
const headerValue = fc.oneof(
  nearlyTraceparent,
  fc.array(nearlyTraceparent, { maxLength: 3 }),
  fc.uint8Array({ maxLength: 80 }).map((a) => Buffer.from(a)),
  fc.uint8Array({ maxLength: 80 }),
  fc.constant(undefined),
  fc.integer(),
  fc.object({ maxDepth: 1 }),
);
const headerName = fc.oneof(
  fc.constantFrom(
    'traceparent',
    'TraceParent',
    'tracestate',
    'baggage',
    'b3',
    'x-b3-traceid',
    'x-b3-spanid',
    'x-b3-sampled',
    '__proto__',
    'constructor',
    'toString',
  ),
  fc.string({ maxLength: 12 }),
);
const carrier = fc.dictionary(headerName, headerValue, { maxKeys: 8 });

function outbound(ctx = ROOT_CONTEXT): Record<string, string> {
  const out: Record<string, string> = {};
  const sc = trace.getSpanContext(ctx);
  // A child span, as the server span would be, with fresh ids when the context was not continued.
  const child = trace.setSpanContext(ctx, {
    traceId: sc?.traceId ?? '1'.repeat(32),
    spanId: '2'.repeat(16),
    traceFlags: sc?.traceFlags ?? 1,
    traceState: sc?.traceState,
  });
  mesh.inject(child, out, defaultTextMapSetter);
  return out;
}

function checkOutbound(out: Record<string, string>): void {
  expect(out.traceparent).toMatch(TRACEPARENT);
  expect(out.traceparent.slice(3, 35)).not.toBe('0'.repeat(32));
  expect(out.traceparent.slice(36, 52)).not.toBe('0'.repeat(16));
  if (out.tracestate !== undefined) {
    expect(out.tracestate.length).toBeLessThanOrEqual(512);
    expect(parseTracestate(out.tracestate)).toBeInstanceOf(MeshTraceState);
  }
  if (out.baggage !== undefined) {
    expect(Buffer.byteLength(out.baggage)).toBeLessThanOrEqual(BAGGAGE_LIMITS.maxBytes);
    const parsed = parseBaggage(out.baggage);
    expect(parsed.dropped).toBe(0);
    expect(parsed.baggage?.getAllEntries().length ?? 0).toBeLessThanOrEqual(BAGGAGE_LIMITS.maxMembers);
  }
}

test('extract never throws on arbitrary header maps, and what goes out is valid', () => {
  fc.assert(
    fc.property(carrier, (headers) => {
      const viaGetter = extractContext(headers, headerGetter);
      const viaPropagator = mesh.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
      checkOutbound(outbound(viaGetter.context));
      checkOutbound(outbound(viaPropagator));
    }),
    RUNS,
  );
});

test('arbitrary strings as each header never throw, and what goes out is valid', () => {
  fc.assert(
    fc.property(
      fc.string({ maxLength: 600 }),
      fc.string({ maxLength: 600 }),
      fc.string({ maxLength: 600 }),
      (tp, ts, bg) => {
        checkOutbound(
          outbound(mesh.extract(ROOT_CONTEXT, { traceparent: tp, tracestate: ts, baggage: bg }, defaultTextMapGetter)),
        );
      },
    ),
    RUNS,
  );
});

const key = fc.stringMatching(/^[a-z0-9][a-z0-9_\-*/@]{0,20}$/);
const value = fc.stringMatching(/^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,30}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/);
const validContext = fc.record({
  traceId: hex(32).filter((t) => /[1-9a-f]/.test(t)),
  spanId: hex(16).filter((s) => /[1-9a-f]/.test(s)),
  traceFlags: fc.constantFrom(0, 1),
  state: fc.uniqueArray(fc.tuple(key, value), { maxLength: 32, selector: ([k]) => k }),
  baggage: fc.dictionary(fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}$/), fc.string({ maxLength: 40 }), {
    maxKeys: 20,
  }),
});

test('inject then extract of a valid context gives the same context back', () => {
  fc.assert(
    fc.property(validContext, ({ traceId, spanId, traceFlags, state, baggage }) => {
      let ts = MeshTraceState.empty();
      for (let i = state.length - 1; i >= 0; i--) ts = ts.set(state[i][0], state[i][1]);
      let ctx = trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId, traceFlags, traceState: ts });
      const entries = Object.fromEntries(Object.entries(baggage).map(([k, v]) => [k, { value: v }]));
      if (Object.keys(entries).length > 0) ctx = propagation.setBaggage(ctx, propagation.createBaggage(entries));
      const wire: Record<string, string> = {};
      mesh.inject(ctx, wire, defaultTextMapSetter);
      const back = mesh.extract(ROOT_CONTEXT, wire, defaultTextMapGetter);
      const sc = trace.getSpanContext(back)!;
      expect([sc.traceId, sc.spanId, sc.traceFlags]).toEqual([traceId, spanId, traceFlags]);
      expect(sc.traceState?.serialize() ?? '').toBe(ts.serialize());
      const got = Object.fromEntries(
        (propagation.getBaggage(back)?.getAllEntries() ?? []).map(([k, v]) => [k, v.value]),
      );
      expect(got).toEqual(baggage);
    }),
    { numRuns: 1000 },
  );
});

test('baggage values decode as decodeURIComponent does, and encode as encodeURIComponent does', () => {
  const percentEscape = fc
    .tuple(fc.constantFrom(...'0123456789abcdefABCDEFgz%'), fc.constantFrom(...'0123456789abcdefABCDEFgz'))
    .map(([a, b]) => `%${a}${b}`);
  const raw = fc
    .array(
      fc.oneof(percentEscape, fc.constantFrom('a', 'Z', '9', '-', '.', '~', '!', '*', '(', ')', "'", '/', ':', '%')),
      {
        minLength: 1,
        maxLength: 12,
      },
    )
    .map((parts) => parts.join(''));
  fc.assert(
    fc.property(raw, (v) => {
      let expected: string | undefined;
      try {
        expected = decodeURIComponent(v);
      } catch {
        expected = undefined;
      }
      expect(parseBaggage(`k=${v}`).baggage?.getEntry('k')?.value).toBe(expected);
    }),
    { numRuns: 3000 },
  );
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme', maxLength: 20 }), (v) => {
      const header = serializeBaggage(propagation.createBaggage({ k: { value: v } })).header;
      expect(header).toBe(`k=${encodeURIComponent(v)}`);
      expect(parseBaggage(header).baggage?.getEntry('k')?.value).toBe(v);
    }),
    { numRuns: 2000 },
  );
});
