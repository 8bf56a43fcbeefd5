import { ROOT_CONTEXT, defaultTextMapGetter, defaultTextMapSetter, trace } from '@opentelemetry/api';
import { B3InjectEncoding, B3Propagator } from '@opentelemetry/propagator-b3';
import { B3_DENY, MeshPropagator, parseB3Multi, parseB3Single } from '@meshtrace/core';
import { extractionOf } from '@meshtrace/core/adapter';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const T64 = 'a3ce929d0e0e4736';
const S = '00f067aa0ba902b7';

describe('parseB3Single', () => {
  const cases: Array<[string, unknown, unknown]> = [
    ['128-bit, sampled', `${T}-${S}-1`, { traceId: T, spanId: S, sampled: true, debug: false }],
    [
      '64-bit is left-padded',
      `${T64}-${S}-0`,
      { traceId: `0000000000000000${T64}`, spanId: S, sampled: false, debug: false },
    ],
    ['deferred', `${T}-${S}`, { traceId: T, spanId: S, sampled: undefined, debug: false }],
    ['debug', `${T}-${S}-d`, { traceId: T, spanId: S, sampled: true, debug: true }],
    ['with parent span id', `${T}-${S}-1-${S}`, { traceId: T, spanId: S, sampled: true, debug: false }],
    ['deny only', '0', B3_DENY],
    ['absent', undefined, 'missing'],
    ['empty', '', 'missing'],
    ['accept only is not a context', '1', 'bad-b3'],
    ['uppercase', `${T.toUpperCase()}-${S}-1`, 'bad-b3'],
    ['short span id', `${T}-${S.slice(1)}-1`, 'bad-b3'],
    ['zero trace id', `${'0'.repeat(32)}-${S}-1`, 'bad-b3'],
    ['bad sampled', `${T}-${S}-true`, 'bad-b3'],
    ['bad parent id', `${T}-${S}-1-xyz`, 'bad-b3'],
    ['too long', `${T}-${S}-1-${S}-extra`, 'bad-b3'],
  ];
  test.each(cases)('%s', (_name, input, want) => {
    expect(parseB3Single(input)).toEqual(want);
  });
});

describe('parseB3Multi', () => {
  const cases: Array<[string, unknown[], unknown]> = [
    ['sampled 1', [T, S, '1', undefined], { traceId: T, spanId: S, sampled: true, debug: false }],
    ['sampled true', [T, S, 'true', undefined], { traceId: T, spanId: S, sampled: true, debug: false }],
    ['sampled false', [T, S, 'false', undefined], { traceId: T, spanId: S, sampled: false, debug: false }],
    [
      'debug flag',
      [T64, S, undefined, '1'],
      { traceId: `0000000000000000${T64}`, spanId: S, sampled: true, debug: true },
    ],
    ['deferred', [T, S, undefined, undefined], { traceId: T, spanId: S, sampled: undefined, debug: false }],
    ['deny only', [undefined, undefined, '0', undefined], B3_DENY],
    ['nothing', [undefined, undefined, undefined, undefined], 'missing'],
    ['trace id without span id', [T, undefined, '1', undefined], 'bad-b3'],
    ['bad sampled value', [T, S, 'yes', undefined], 'bad-b3'],
    ['bad trace id', [T.slice(2), S, '1', undefined], 'bad-b3'],
  ];
  test.each(cases)('%s', (_name, input, want) => {
    expect(parseB3Multi(input[0], input[1], input[2], input[3])).toEqual(want);
  });
});

describe('interop with @opentelemetry/propagator-b3', () => {
  const encodings: Array<[string, B3InjectEncoding, 'single' | 'multi']> = [
    ['single header', B3InjectEncoding.SINGLE_HEADER, 'single'],
    ['multi header', B3InjectEncoding.MULTI_HEADER, 'multi'],
  ];
  test.each(encodings)('%s: theirs → ours → theirs', (_name, encoding, ours) => {
    const theirs = new B3Propagator({ injectEncoding: encoding });
    const mesh = new MeshPropagator({ b3: ours });
    for (const flags of [0, 1]) {
      const start = trace.setSpanContext(ROOT_CONTEXT, { traceId: T, spanId: S, traceFlags: flags, isRemote: true });
      const wire: Record<string, string> = {};
      theirs.inject(start, wire, defaultTextMapSetter);
      const extracted = mesh.extract(ROOT_CONTEXT, wire, defaultTextMapGetter);
      expect(trace.getSpanContext(extracted)).toMatchObject({ traceId: T, spanId: S, traceFlags: flags });
      expect(extractionOf(extracted)?.outcome.format).toBe('b3');
      const back: Record<string, string> = {};
      mesh.inject(extracted, back, defaultTextMapSetter);
      const again = theirs.extract(ROOT_CONTEXT, back, defaultTextMapGetter);
      expect(trace.getSpanContext(again)).toMatchObject({ traceId: T, spanId: S, traceFlags: flags });
    }
  });

  test('debug survives ours → theirs as B3 debug', () => {
    const mesh = new MeshPropagator({ b3: 'multi' });
    const extracted = mesh.extract(
      ROOT_CONTEXT,
      { 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-flags': '1' },
      defaultTextMapGetter,
    );
    const out: Record<string, string> = {};
    mesh.inject(extracted, out, defaultTextMapSetter);
    expect(out).toMatchObject({ 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-flags': '1' });
    expect(out['x-b3-sampled']).toBeUndefined();
    const theirs = new B3Propagator({ injectEncoding: B3InjectEncoding.MULTI_HEADER }).extract(
      ROOT_CONTEXT,
      out,
      defaultTextMapGetter,
    );
    expect(trace.getSpanContext(theirs)?.traceFlags).toBe(1);
  });

  test('B3 is not written unless asked for', () => {
    const out: Record<string, string> = {};
    new MeshPropagator().inject(
      trace.setSpanContext(ROOT_CONTEXT, { traceId: T, spanId: S, traceFlags: 1 }),
      out,
      defaultTextMapSetter,
    );
    expect(Object.keys(out)).toEqual(['traceparent']);
  });
});

describe('composite extraction', () => {
  const W3C_TRACE = '0af7651916cd43dd8448eb211c80319c';
  const w3c = { traceparent: `00-${W3C_TRACE}-b7ad6b7169203331-01` };
  const b3 = { b3: `${T}-${S}-1` };
  const cases: Array<
    [
      string,
      ConstructorParameters<typeof MeshPropagator>[0],
      Record<string, string>,
      string | undefined,
      string,
      number,
    ]
  > = [
    ['W3C first by default', {}, { ...w3c, ...b3 }, W3C_TRACE, 'w3c', 1],
    ['B3 first when configured', { extract: ['b3', 'w3c'] }, { ...w3c, ...b3 }, T, 'b3', 1],
    ['B3 when W3C is absent', {}, b3, T, 'b3', 0],
    ['B3 when W3C is malformed', {}, { traceparent: 'garbage', ...b3 }, T, 'b3', 0],
    ['agreeing formats make no link', {}, { traceparent: `00-${T}-${S}-01`, ...b3 }, T, 'w3c', 0],
    ['B3 ignored when not listed', { extract: ['w3c'] }, b3, undefined, 'missing', 0],
    ['malformed B3 alone', {}, { b3: 'nonsense-value' }, undefined, 'malformed', 0],
  ];
  test.each(cases)('%s', (_name, options, headers, traceId, outcome, linkCount) => {
    const ctx = new MeshPropagator(options).extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
    expect(trace.getSpanContext(ctx)?.traceId).toBe(traceId);
    const found = extractionOf(ctx)!;
    expect(found.outcome.format ?? found.outcome.outcome).toBe(outcome);
    expect(found.links?.length ?? 0).toBe(linkCount);
  });

  test('b3: 0 asks for an unsampled fresh root', () => {
    const ctx = new MeshPropagator().extract(ROOT_CONTEXT, { b3: '0' }, defaultTextMapGetter);
    expect(extractionOf(ctx)).toMatchObject({ samplingHint: 'deny', outcome: { outcome: 'missing' } });
  });

  test('bad options throw', () => {
    expect(() => new MeshPropagator({ extract: [] })).toThrow('@meshtrace/core: option "extract"');
    expect(() => new MeshPropagator({ extract: ['w3c', 'w3c'] })).toThrow('@meshtrace/core: option "extract"');
    expect(() => new MeshPropagator({ extract: ['jaeger' as never] })).toThrow('@meshtrace/core: option "extract"');
    expect(() => new MeshPropagator({ b3: 'both' as never })).toThrow('@meshtrace/core: option "b3"');
  });
});
