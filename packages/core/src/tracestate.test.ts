import { TraceState } from '@opentelemetry/core';
import { MeshTraceState, parseTracestate, serializeTracestate } from '@meshtrace/core';

const list = (n: number) => Array.from({ length: n }, (_, i) => `k${i}=v${i}`).join(',');

describe('parseTracestate', () => {
  const kept: Array<[string, unknown, string]> = [
    ['one member', 'congo=t61rcWkgMzE', 'congo=t61rcWkgMzE'],
    ['optional whitespace', ' a=1 ,\tb=2 ', 'a=1,b=2'],
    ['empty members', ',,a=1,,', 'a=1'],
    ['multi-tenant key', 'fw529a3039@dt=x', 'fw529a3039@dt=x'],
    ['digit-first key (Level 2)', '1ab=x', '1ab=x'],
    ['key chars _-*/@', 'a_-*/@b=x', 'a_-*/@b=x'],
    ['value with inner space', 'a=x y', 'a=x y'],
    ['value with leading space kept', 'a= x', 'a= x'],
    ['256-char key', `${'k'.repeat(256)}=1`, `${'k'.repeat(256)}=1`],
    ['256-char value', `a=${'v'.repeat(256)}`, `a=${'v'.repeat(256)}`],
    ['32 members', list(32), list(32)],
    ['several header lines are combined', ['a=1', 'b=2'], 'a=1,b=2'],
  ];
  test.each(kept)('kept: %s', (_name, input, serialized) => {
    const ts = parseTracestate(input);
    expect(ts).toBeInstanceOf(MeshTraceState);
    expect((ts as MeshTraceState).serialize()).toBe(serialized);
  });

  const dropped: Array<[string, unknown, string | undefined]> = [
    ['absent', undefined, undefined],
    ['empty', '', undefined],
    ['only commas and spaces', ' , ,', undefined],
    ['33 members', list(33), 'too-many-members'],
    ['duplicate key', 'a=1,b=2,a=3', 'duplicate-key'],
    ['uppercase key', 'Congo=1', 'bad-member'],
    ['key starting with _', '_a=1', 'bad-member'],
    ['257-char key', `${'k'.repeat(257)}=1`, 'bad-member'],
    ['257-char value', `a=${'v'.repeat(257)}`, 'bad-member'],
    ['empty value', 'a=', 'bad-member'],
    ['value with =', 'a=b=c', 'bad-member'],
    ['no =', 'abc', 'bad-member'],
    ['trailing space inside value', 'a=x \u0000', 'bad-member'],
    ['non-ASCII value', 'a=ü', 'bad-member'],
    ['control character', 'a=x\ty', 'bad-member'],
    ['one bad member drops the rest', 'a=1,B=2,c=3', 'bad-member'],
    ['a number', 7, 'bad-member'],
  ];
  test.each(dropped)('dropped: %s', (_name, input, reason) => {
    expect(parseTracestate(input)).toBe(reason);
  });
});

describe('MeshTraceState', () => {
  test('set puts the entry leftmost and replaces an existing key', () => {
    const ts = parseTracestate('a=1,b=2,c=3') as MeshTraceState;
    expect(ts.set('b', 'x').serialize()).toBe('b=x,a=1,c=3');
    expect(ts.set('new', 'y').serialize()).toBe('new=y,a=1,b=2,c=3');
    expect(ts.serialize()).toBe('a=1,b=2,c=3');
  });

  test('set on a full list drops the rightmost entry (Level 2)', () => {
    const ts = parseTracestate(list(32)) as MeshTraceState;
    const next = ts.set('mine', 'x');
    expect(next.size).toBe(32);
    expect(next.get('mine')).toBe('x');
    expect(next.get('k31')).toBeUndefined();
  });

  test('set ignores invalid keys and values', () => {
    const ts = MeshTraceState.empty();
    expect(ts.set('Bad', 'x')).toBe(ts);
    expect(ts.set('ok', 'a,b')).toBe(ts);
  });

  test('unset and get', () => {
    const ts = parseTracestate('a=1,b=2') as MeshTraceState;
    expect(ts.unset('a').serialize()).toBe('b=2');
    expect(ts.unset('zz')).toBe(ts);
    expect(ts.get('b')).toBe('2');
  });

  const cut: Array<[string, string, string]> = [
    ['at 512 nothing is cut', `a=${'x'.repeat(254)},b=${'y'.repeat(253)}`, `a=${'x'.repeat(254)},b=${'y'.repeat(253)}`],
    ['long entries go first, from the right', `a=${'x'.repeat(200)},b=1,c=${'y'.repeat(250)},d=2,e=${'z'.repeat(100)}`, `a=${'x'.repeat(200)},b=1,d=2,e=${'z'.repeat(100)}`],
    ['then entries from the right', Array.from({ length: 20 }, (_, i) => `k${String(i).padStart(2, '0')}=${'v'.repeat(100)}`).join(','), Array.from({ length: 4 }, (_, i) => `k${String(i).padStart(2, '0')}=${'v'.repeat(100)}`).join(',')],
  ];
  test.each(cut)('512-character rule: %s', (_name, input, want) => {
    const out = (parseTracestate(input) as MeshTraceState).serialize();
    expect(out).toBe(want);
    expect(out.length).toBeLessThanOrEqual(512);
  });
});

describe('serializeTracestate', () => {
  test('a foreign TraceState is re-validated before it goes out', () => {
    expect(serializeTracestate(new TraceState('a=1,b=2'))).toBe('a=1,b=2');
    // OpenTelemetry's own TraceState accepts what the spec forbids on the wire.
    const foreign = { serialize: () => 'a=1,a=2', get: () => undefined, set: () => foreign, unset: () => foreign };
    expect(serializeTracestate(foreign)).toBe('');
    expect(serializeTracestate(undefined)).toBe('');
  });
});
