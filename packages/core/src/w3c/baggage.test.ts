import { baggageEntryMetadataFromString, propagation } from '@opentelemetry/api';
import { BAGGAGE_LIMITS, parseBaggage, serializeBaggage } from '@meshtrace/core';

const entries = (input: unknown) => {
  const parsed = parseBaggage(input);
  return Object.fromEntries(
    (parsed.baggage?.getAllEntries() ?? []).map(([k, v]) => [
      k,
      v.metadata ? `${v.value};${v.metadata.toString()}` : v.value,
    ]),
  );
};

describe('parseBaggage', () => {
  const cases: Array<[string, unknown, Record<string, string>, number, string | undefined]> = [
    ['plain', 'a=1,b=2', { a: '1', b: '2' }, 0, undefined],
    ['whitespace around members and =', ' a = 1 ,\tb=2 ', { a: '1', b: '2' }, 0, undefined],
    ['properties kept', 'a=1;p1;p2=x', { a: '1;p1;p2=x' }, 0, undefined],
    ['percent-decoded UTF-8', 'n=J%C3%BCrgen%2C%20ok', { n: 'Jürgen, ok' }, 0, undefined],
    ['empty value', 'a=', { a: '' }, 0, undefined],
    ['empty members skipped', ',a=1,,', { a: '1' }, 0, undefined],
    ['several header lines', ['a=1', 'b=2'], { a: '1', b: '2' }, 0, undefined],
    ['broken percent-encoding drops the member', 'a=%E0%A4%A,b=2', { b: '2' }, 1, 'bad-member'],
    ['key that is not a token', 'a b=1,c=2', { c: '2' }, 1, 'bad-member'],
    ['value with a space', 'a=x y,c=2', { c: '2' }, 1, 'bad-member'],
    ['value with a quote', 'a="x",c=2', { c: '2' }, 1, 'bad-member'],
    ['no =', 'abc,c=2', { c: '2' }, 1, 'bad-member'],
    ['control character in a property', 'a=1;p\u0001,c=2', { c: '2' }, 1, 'bad-member'],
    ['8193 bytes drops the header', `a=${'x'.repeat(4094)},b=${'y'.repeat(4094)}`, {}, 1, 'too-large'],
    ['member over 4096 bytes', `a=${'x'.repeat(4095)},c=2`, { c: '2' }, 1, 'member-too-large'],
    [
      '181 members',
      Array.from({ length: 181 }, (_, i) => `k${i}=${i}`).join(','),
      Object.fromEntries(Array.from({ length: 180 }, (_, i) => [`k${i}`, String(i)])),
      1,
      'too-many-members',
    ],
    ['not a string', 12, {}, 1, 'bad-member'],
    [
      'prototype keys are plain keys',
      '__proto__=x,constructor=y',
      JSON.parse('{"__proto__":"x","constructor":"y"}'),
      0,
      undefined,
    ],
  ];
  test.each(cases)('%s', (_name, input, want, dropped, reason) => {
    expect(entries(input)).toEqual(want);
    const parsed = parseBaggage(input);
    expect([parsed.dropped, parsed.reason]).toEqual([dropped, reason]);
  });

  test('absent and empty give nothing, allocating nothing', () => {
    expect(parseBaggage(undefined)).toBe(parseBaggage(''));
  });
});

describe('serializeBaggage', () => {
  test('percent-encodes values and keeps metadata', () => {
    const bag = propagation.createBaggage({
      n: { value: 'Jürgen, ok' },
      a: { value: '1', metadata: baggageEntryMetadataFromString('p=1') },
    });
    expect(serializeBaggage(bag)).toEqual({ header: 'n=J%C3%BCrgen%2C%20ok,a=1;p=1', dropped: 0 });
  });

  test('drops keys that are not tokens, never sending them', () => {
    const bag = propagation.createBaggage({ 'bad key': { value: '1' }, ok: { value: '2' } });
    expect(serializeBaggage(bag)).toEqual({ header: 'ok=2', dropped: 1 });
  });

  test('a budget drops whole members, last first', () => {
    const bag = propagation.createBaggage({
      a: { value: 'x'.repeat(10) },
      b: { value: 'y'.repeat(10) },
      c: { value: 'z'.repeat(10) },
    });
    expect(serializeBaggage(bag, 25)).toEqual({ header: `a=${'x'.repeat(10)},b=${'y'.repeat(10)}`, dropped: 1 });
    expect(serializeBaggage(bag, 24)).toEqual({ header: `a=${'x'.repeat(10)}`, dropped: 2 });
  });

  test('never over the spec limits', () => {
    const record: Record<string, { value: string }> = {};
    for (let i = 0; i < 400; i++) record[`k${i}`] = { value: 'v'.repeat(60) };
    record.huge = { value: 'h'.repeat(5000) };
    const out = serializeBaggage(propagation.createBaggage(record));
    expect(out.header.length).toBeLessThanOrEqual(BAGGAGE_LIMITS.maxBytes);
    expect(out.header.split(',').length).toBeLessThanOrEqual(BAGGAGE_LIMITS.maxMembers);
    expect(out.header).not.toContain('huge');
    expect(entries(out.header)).toEqual(Object.fromEntries(out.header.split(',').map((m) => m.split('='))));
  });
});
