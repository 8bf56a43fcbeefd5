import { formatTraceparent, isValidId, parseTraceparent } from '@meshtrace/core';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const P = '00f067aa0ba902b7';

describe('parseTraceparent', () => {
  const valid: Array<[string, unknown, { traceId: string; spanId: string; traceFlags: number; version: number }]> = [
    ['sampled', `00-${T}-${P}-01`, { version: 0, traceId: T, spanId: P, traceFlags: 1 }],
    ['not sampled', `00-${T}-${P}-00`, { version: 0, traceId: T, spanId: P, traceFlags: 0 }],
    ['random flag', `00-${T}-${P}-03`, { version: 0, traceId: T, spanId: P, traceFlags: 3 }],
    ['unknown flags kept on version 00', `00-${T}-${P}-ff`, { version: 0, traceId: T, spanId: P, traceFlags: 0xff }],
    ['future version, extra fields', `01-${T}-${P}-01-xyz`, { version: 1, traceId: T, spanId: P, traceFlags: 1 }],
    ['future version, no extra fields', `fe-${T}-${P}-09`, { version: 0xfe, traceId: T, spanId: P, traceFlags: 1 }],
    ['array of one', [`00-${T}-${P}-01`], { version: 0, traceId: T, spanId: P, traceFlags: 1 }],
  ];
  test.each(valid)('valid: %s', (_name, input, want) => {
    expect(parseTraceparent(input)).toEqual(want);
  });

  const invalid: Array<[string, unknown, string]> = [
    ['undefined', undefined, 'missing'],
    ['null', null, 'missing'],
    ['empty string', '', 'missing'],
    ['empty array', [], 'missing'],
    ['two values', [`00-${T}-${P}-01`, `00-${T}-${P}-01`], 'multiple'],
    ['joined header', `00-${T}-${P}-01, 00-${T}-${P}-01`, 'multiple'],
    ['future version joined', `01-${T}-${P}-01,00-${T}-${P}-01`, 'multiple'],
    ['number', 42, 'bad-format'],
    ['object', { traceparent: 'x' }, 'bad-format'],
    ['version ff', `ff-${T}-${P}-01`, 'bad-version'],
    ['uppercase version', `0A-${T}-${P}-01`, 'bad-version'],
    ['version not hex', `0g-${T}-${P}-01`, 'bad-version'],
    ['no dash after version', `00_${T}-${P}-01`, 'bad-version'],
    ['short', `00-${T}-${P}-1`, 'bad-format'],
    ['long, version 00', `00-${T}-${P}-010`, 'bad-format'],
    ['extra field, version 00', `00-${T}-${P}-01-x`, 'bad-format'],
    ['future version, extra without dash', `01-${T}-${P}-01x`, 'bad-format'],
    ['wrong separator', `00-${T}_${P}-01`, 'bad-format'],
    ['uppercase trace id', `00-${T.toUpperCase()}-${P}-01`, 'bad-trace-id'],
    ['non-hex trace id', `00-${T.slice(0, 31)}x-${P}-01`, 'bad-trace-id'],
    ['zero trace id', `00-${'0'.repeat(32)}-${P}-01`, 'zero-trace-id'],
    ['uppercase parent id', `00-${T}-${'00F067AA0BA902B7'}-01`, 'bad-parent-id'],
    ['zero parent id', `00-${T}-${'0'.repeat(16)}-01`, 'zero-parent-id'],
    ['uppercase flags', `00-${T}-${P}-0A`, 'bad-flags'],
    ['non-hex flags', `00-${T}-${P}-0z`, 'bad-flags'],
    ['control characters', `00-${T}-${P}-0\n`, 'bad-flags'],
    ['leading space', ` 00-${T}-${P}-01`, 'bad-version'],
  ];
  test.each(invalid)('invalid: %s', (_name, input, reason) => {
    expect(parseTraceparent(input)).toBe(reason);
  });

  test('a 64 KiB value is rejected without scanning it', () => {
    expect(parseTraceparent(`00-${T}-${P}-01${'x'.repeat(65536)}`)).toBe('bad-format');
  });
});

describe('formatTraceparent', () => {
  test.each([
    [1, '01'],
    [0, '00'],
    [3, '03'],
    [0xff, '03'],
    [0x08, '00'],
  ])('flags %i are written as %s (only defined bits go out)', (flags, hex) => {
    expect(formatTraceparent(T, P, flags)).toBe(`00-${T}-${P}-${hex}`);
  });
});

describe('isValidId', () => {
  test.each([
    [T, 32, true],
    [P, 16, true],
    [T.toUpperCase(), 32, false],
    ['0'.repeat(32), 32, false],
    [T.slice(1), 32, false],
    [P, 32, false],
  ] as const)('%s (%i) → %s', (id, len, ok) => {
    expect(isValidId(id, len)).toBe(ok);
  });
});
