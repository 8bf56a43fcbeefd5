import { TraceState } from '@opentelemetry/core';
import { parseTracestate, serializeTracestate } from '@meshtrace/core';
import { MeshTraceState } from './tracestate';

const members = (n: number, prefix: string) => Array.from({ length: n }, (_, i) => `${prefix}${i}=v${i}`).join(',');
const list = (n: number) => members(n, 'k');
/** Five entries of 60 characters. */
const SIXTIES = Array.from({ length: 5 }, (_, i) => `c${i}=${'z'.repeat(57)}`).join(',');
/** Every character a value may hold: %x20-2B / %x2D-3C / %x3E-7E, ending in a non-space. */
const VALUE_CHARS = [
  [0x20, 0x2b],
  [0x2d, 0x3c],
  [0x3e, 0x7e],
]
  .map(([from, to]) => String.fromCharCode(...Array.from({ length: to - from + 1 }, (_, i) => from + i)))
  .join('');

/**
 * Every case names the sentence of the W3C Trace Context Level 2 text (w3c/trace-context, spec/,
 * "Tracestate Header" and "Mutating the tracestate Field") it comes from.
 */
describe('parseTracestate', () => {
  const kept: Array<[string, string, unknown, string]> = [
    ['one member', 'list-member = key "=" value', 'congo=t61rcWkgMzE', 'congo=t61rcWkgMzE'],
    [
      'optional whitespace',
      'Spaces and horizontal tabs surrounding list-members are ignored.',
      ' a=1 ,\tb=2 ',
      'a=1,b=2',
    ],
    ['empty members', 'Empty and whitespace-only list members are allowed.', ',,a=1,, \t ,', 'a=1'],
    [
      'multi-tenant key',
      'keychar = lcalpha / DIGIT / "_" / "-"/ "*" / "/" / "@"',
      'fw529a3039@dt=x',
      'fw529a3039@dt=x',
    ],
    [
      'multi-tenant key, digit-first system part',
      'keychar = lcalpha / DIGIT / "_" / "-"/ "*" / "/" / "@" (Level 1 wanted lcalpha after "@"; Level 2 does not)',
      'tenant@1system=x',
      'tenant@1system=x',
    ],
    [
      'multi-tenant key, system part over 14 characters',
      'key = ( lcalpha / DIGIT ) 0*255 ( keychar ) (Level 1 limited the system part to 14; Level 2 does not)',
      `t@${'v'.repeat(15)}=x`,
      `t@${'v'.repeat(15)}=x`,
    ],
    [
      'multi-tenant key, tenant part over 241 characters',
      'key = ( lcalpha / DIGIT ) 0*255 ( keychar ) (Level 1 limited the tenant part to 241; Level 2 does not)',
      `${'t'.repeat(242)}@v=x`,
      `${'t'.repeat(242)}@v=x`,
    ],
    [
      'key with several "@" and one at the end',
      'key = ( lcalpha / DIGIT ) 0*255 ( keychar )',
      'a@b@c=1,d@=2',
      'a@b@c=1,d@=2',
    ],
    ['digit-first key', 'A key MUST begin with a lowercase letter or a digit', '1ab=x', '1ab=x'],
    [
      'key chars _-*/@',
      'contain up to 256 characters including lowercase letters, digits, underscores, dashes, asterisks, forward slashes, and at signs',
      'a_-*/@b=x',
      'a_-*/@b=x',
    ],
    [
      'every value character',
      'up to 256 printable ASCII characters (i.e., the range 0x20 to 0x7E) except comma (,) and (=)',
      `a=${VALUE_CHARS}`,
      `a=${VALUE_CHARS}`,
    ],
    ['value with inner space', 'chr = %x20 / nblk-chr', 'a=x y', 'a=x y'],
    ['value with leading space kept', 'All leading spaces MUST be preserved as part of the value.', 'a= x', 'a= x'],
    [
      'value with trailing space dropped',
      'All trailing spaces are considered to be optional whitespace characters not part of the value.',
      'a=x  ,b=2',
      'a=x,b=2',
    ],
    ['256-char key', 'contain up to 256 characters', `${'k'.repeat(256)}=1`, `${'k'.repeat(256)}=1`],
    ['256-char value', 'value = 0*255(chr) nblk-chr', `a=${'v'.repeat(256)}`, `a=${'v'.repeat(256)}`],
    ['32 members', 'There can be a maximum of 32 list-members in a list.', list(32), list(32)],
    [
      '32 members and empty ones',
      'Empty and whitespace-only list members are allowed. (they are not list members that count)',
      `${list(32)},,, ,`,
      list(32),
    ],
    [
      'several header lines are combined in order',
      'When receiving multiple tracestate header fields, they MUST be combined into a single header according to RFC7230.',
      ['a=1', 'b=2', 'c=3'],
      'a=1,b=2,c=3',
    ],
    ['an empty header line among others', 'Vendors MUST accept empty tracestate headers', ['', 'a=1', ''], 'a=1'],
    [
      'duplicate key: the first entry is kept, later ones dropped',
      'Only one entry per key is allowed because the entry represents that last position in the trace.',
      'a=1,b=2,a=3',
      'a=1,b=2',
    ],
    [
      'duplicate key across header lines',
      'When receiving multiple tracestate header fields, they MUST be combined ... Only one entry per key is allowed',
      ['a=1,b=2', 'c=3,a=4', 'b=5'],
      'a=1,b=2,c=3',
    ],
  ];
  test.each(kept)('kept: %s (%s)', (_name, _spec, input, serialized) => {
    const ts = parseTracestate(input);
    expect(ts).toBeInstanceOf(MeshTraceState);
    expect((ts as MeshTraceState).serialize()).toBe(serialized);
  });

  const duplicates: Array<[string, string, unknown, number]> = [
    ['no repeated key', 'Only one entry per key is allowed', 'a=1,b=2', 0],
    ['one repeated key', 'Invalid tracestate entries MAY also be discarded.', 'a=1,b=2,a=3', 1],
    [
      'a key repeated twice, and another once',
      'Invalid tracestate entries MAY also be discarded.',
      ['a=1,b=1', 'a=2,a=3,b=2'],
      3,
    ],
  ];
  test.each(duplicates)('counted: %s (%s)', (_name, _spec, input, count) => {
    expect((parseTracestate(input) as MeshTraceState).duplicates).toBe(count);
  });

  const dropped: Array<[string, string, unknown, string | undefined]> = [
    ['absent', 'nothing to read', undefined, undefined],
    ['empty', 'Vendors MUST accept empty tracestate headers but SHOULD avoid sending them.', '', undefined],
    ['only commas and spaces', 'list-member = OWS', ' , ,', undefined],
    ['33 members', 'There can be a maximum of 32 list-members in a list.', list(33), 'too-many-members'],
    [
      '33 members over several header lines',
      'There can be a maximum of 32 list-members in a list. (after combining)',
      [list(20), members(13, 'z')],
      'too-many-members',
    ],
    [
      '33 members, one of them a repeated key',
      'There can be a maximum of 32 list-members in a list. (a repeated key is still a list-member)',
      `${list(32)},k0=again`,
      'too-many-members',
    ],
    ['uppercase key', 'A key MUST begin with a lowercase letter or a digit', 'Congo=1', 'bad-member'],
    ['key starting with _', 'A key MUST begin with a lowercase letter or a digit', '_a=1', 'bad-member'],
    ['key starting with @', 'A key MUST begin with a lowercase letter or a digit', '@dt=1,b=2', 'bad-member'],
    ['key with a dot', 'keychar = lcalpha / DIGIT / "_" / "-"/ "*" / "/" / "@"', 'foo.bar=1', 'bad-member'],
    ['space between key and =', 'list-member = key "=" value', 'foo =1', 'bad-member'],
    ['257-char key', 'contain up to 256 characters', `${'k'.repeat(257)}=1`, 'bad-member'],
    ['257-char value', 'value = 0*255(chr) nblk-chr', `a=${'v'.repeat(257)}`, 'bad-member'],
    ['empty value', 'value = 0*255(chr) nblk-chr', 'a=', 'bad-member'],
    [
      'empty value before a valid member',
      'If the tracestate header cannot be parsed the vendor MAY discard the entire header.',
      'foo=,bar=3',
      'bad-member',
    ],
    ['value with =', 'except comma (,) and (=)', 'a=b=c', 'bad-member'],
    ['no =', 'list-member = key "=" value', 'abc', 'bad-member'],
    ['NUL inside value', 'the range 0x20 to 0x7E', 'a=x \u0000', 'bad-member'],
    ['non-ASCII value', 'printable ASCII characters', 'a=ü', 'bad-member'],
    ['tab inside value', 'Note that this also excludes tabs, newlines, carriage returns, etc.', 'a=x\ty', 'bad-member'],
    [
      'one bad member drops the rest',
      'If the tracestate header cannot be parsed the vendor MAY discard the entire header.',
      'a=1,B=2,c=3',
      'bad-member',
    ],
    ['a number', 'wire input never throws: a value that is not text', 7, 'bad-member'],
  ];
  test.each(dropped)('dropped: %s (%s)', (_name, _spec, input, reason) => {
    expect(parseTracestate(input)).toBe(reason);
  });
});

describe('MeshTraceState', () => {
  // "Modified keys MUST be moved to the beginning (left) of the list." / "The new key-value pair SHOULD be added to the
  // beginning of the list."
  test('set puts the entry leftmost and replaces an existing key', () => {
    const ts = parseTracestate('a=1,b=2,c=3') as MeshTraceState;
    expect(ts.set('b', 'x').serialize()).toBe('b=x,a=1,c=3');
    expect(ts.set('new', 'y').serialize()).toBe('new=y,a=1,b=2,c=3');
    expect(ts.serialize()).toBe('a=1,b=2,c=3');
  });

  // "There can be a maximum of 32 list-members in a list." with "Then entries SHOULD be removed starting from the end
  // of tracestate."
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

  const cut: Array<[string, string, string, string]> = [
    [
      'at 512 nothing is cut',
      'Vendors SHOULD propagate at least 512 characters of a combined header. This length includes commas',
      `a=${'x'.repeat(254)},b=${'y'.repeat(253)}`,
      `a=${'x'.repeat(254)},b=${'y'.repeat(253)}`,
    ],
    [
      'long entries go first, from the right',
      'the vendor MUST truncate whole entries. Entries larger than 128 characters long SHOULD be removed first.',
      `a=${'x'.repeat(200)},b=1,c=${'y'.repeat(250)},d=2,e=${'z'.repeat(100)}`,
      `a=${'x'.repeat(200)},b=1,d=2,e=${'z'.repeat(100)}`,
    ],
    [
      'then entries from the right',
      'Then entries SHOULD be removed starting from the end of tracestate.',
      Array.from({ length: 20 }, (_, i) => `k${String(i).padStart(2, '0')}=${'v'.repeat(100)}`).join(','),
      Array.from({ length: 4 }, (_, i) => `k${String(i).padStart(2, '0')}=${'v'.repeat(100)}`).join(','),
    ],
    [
      'an entry of exactly 128 characters is not a long one',
      'Entries larger than 128 characters long SHOULD be removed first.',
      `a=${'x'.repeat(127)},b=${'y'.repeat(126)},${SIXTIES}`,
      `b=${'y'.repeat(126)},${SIXTIES}`,
    ],
  ];
  test.each(cut)('512-character rule: %s (%s)', (_name, _spec, input, want) => {
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
    expect(serializeTracestate(foreign)).toBe('a=1');
    const invalid = { serialize: () => 'A=1', get: () => undefined, set: () => invalid, unset: () => invalid };
    expect(serializeTracestate(invalid)).toBe('');
    expect(serializeTracestate(undefined)).toBe('');
  });
});
