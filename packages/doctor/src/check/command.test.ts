import { parseTraceparent } from '@meshtrace/core';
import type { TraceparentReason } from '@meshtrace/core';
import { explainHeaders, runCheck, traceparentOffence } from './command';

const T = '0af7651916cd43dd8448eb211c80319c';
const P = 'b7ad6b7169203331';
const VALID = `00-${T}-${P}-01`;

describe('explainHeaders', () => {
  it('gives a valid traceparent its fields', () => {
    expect(explainHeaders({ traceparent: `00-${T}-${P}-03` }).traceparent).toEqual({
      valid: true,
      value: `00-${T}-${P}-03`,
      version: 0,
      traceId: T,
      parentId: P,
      flags: '03',
      sampled: true,
      random: true,
    });
  });

  // Every reason core's parseTraceparent returns for a string, and the character that caused it.
  const cases: [string, string, TraceparentReason, number, number][] = [
    ['empty', '', 'missing', 0, 0],
    ['version not hex', `0g-${T}-${P}-01`, 'bad-version', 1, 1],
    ['version upper case', `A0-${T}-${P}-01`, 'bad-version', 0, 1],
    ['version ff', `ff-${T}-${P}-01`, 'bad-version', 0, 2],
    ['no dash after the version', `00_${T}-${P}-01`, 'bad-version', 2, 1],
    ['short trace id', `00-${T.slice(1)}-${P}-01`, 'bad-format', 34, 1],
    ['cut short', VALID.slice(0, 40), 'bad-format', 40, 1],
    ['version 00 with more', `${VALID}-00`, 'bad-format', 55, 1],
    ['higher version, no dash before more', `01-${T}-${P}-01x`, 'bad-format', 55, 1],
    ['dash missing before the parent id', `00-${T}x${P}-01`, 'bad-format', 35, 1],
    ['dash missing before the flags', `00-${T}-${P}x01`, 'bad-format', 52, 1],
    ['trace id upper case', `00-${T.slice(0, 10)}A${T.slice(11)}-${P}-01`, 'bad-trace-id', 13, 1],
    ['trace id zero', `00-${'0'.repeat(32)}-${P}-01`, 'zero-trace-id', 3, 32],
    ['parent id not hex', `00-${T}-${P.slice(0, 15)}z-01`, 'bad-parent-id', 51, 1],
    ['parent id zero', `00-${T}-${'0'.repeat(16)}-01`, 'zero-parent-id', 36, 16],
    ['flags not hex', `00-${T}-${P}-0x`, 'bad-flags', 54, 1],
    ['two values folded', `${VALID}, ${VALID}`, 'multiple', 55, 1],
  ];
  it.each(cases)('%s: core says %#', (_name, value, reason, index, length) => {
    // The reason is core's; the position is ours and must be about that reason.
    expect(parseTraceparent(value)).toBe(reason);
    expect(traceparentOffence(value, reason)).toEqual({ index, length });
    expect(explainHeaders({ traceparent: value })).toMatchObject({
      valid: false,
      traceparent: { valid: false, reason, at: { index, length } },
    });
  });

  it('covers every reason core can give for a string', () => {
    const all: TraceparentReason[] = [
      'missing',
      'bad-version',
      'bad-trace-id',
      'zero-trace-id',
      'bad-parent-id',
      'zero-parent-id',
      'bad-flags',
      'bad-format',
      'multiple',
    ];
    expect(new Set(cases.map((c) => c[2]))).toEqual(new Set(all));
  });

  it('points at the first tracestate member core rejects', () => {
    const value = 'congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,Bad=1,also bad';
    expect(explainHeaders({ traceparent: VALID, tracestate: value }).tracestate).toEqual({
      valid: false,
      value,
      reason: 'bad-member',
      at: { index: 41, length: 5 },
      explanation: 'the member "Bad=1" is not key=value as the spec allows (W3C trace-context §3.3.1)',
    });
  });

  it('points at the 33rd tracestate member', () => {
    const value = Array.from({ length: 33 }, (_, i) => `k${i}=v`).join(',');
    expect(explainHeaders({ traceparent: VALID, tracestate: value }).tracestate).toMatchObject({
      reason: 'too-many-members',
      at: { index: value.indexOf('k32=v'), length: 5 },
    });
  });

  it('counts tracestate members and repeated keys', () => {
    expect(explainHeaders({ traceparent: VALID, tracestate: 'a=1,b=2,a=3' }).tracestate).toEqual({
      valid: true,
      value: 'a=1,b=2,a=3',
      members: 2,
      duplicates: 1,
    });
  });

  it('lists baggage entries, or points at the first member core drops', () => {
    expect(explainHeaders({ traceparent: VALID, baggage: 'userId=alice,serverNode=DF%2028' }).baggage).toEqual({
      valid: true,
      value: 'userId=alice,serverNode=DF%2028',
      entries: [
        { key: 'userId', value: 'alice' },
        { key: 'serverNode', value: 'DF 28' },
      ],
    });
    const bad = 'userId=alice, no-equals ,x=%zz';
    expect(explainHeaders({ traceparent: VALID, baggage: bad })).toMatchObject({
      valid: false,
      baggage: { reason: 'bad-member', at: { index: 14, length: 9 } },
    });
    const big = `a=1,b=${'x'.repeat(4100)}`;
    expect(explainHeaders({ traceparent: VALID, baggage: big }).baggage).toMatchObject({
      reason: 'member-too-large',
      at: { index: 4, length: 4102 },
    });
    const many = Array.from({ length: 181 }, (_, i) => `k${i}=v`).join(',');
    expect(explainHeaders({ traceparent: VALID, baggage: many }).baggage).toMatchObject({
      reason: 'too-many-members',
      at: { index: many.indexOf('k180=v') },
    });
    const huge = `a=${'x'.repeat(9000)}`;
    expect(explainHeaders({ traceparent: VALID, baggage: huge }).baggage).toMatchObject({
      reason: 'too-large',
      at: { index: 0, length: huge.length },
    });
  });
});

describe('runCheck', () => {
  function run(input: Parameters<typeof runCheck>[0]): { code: number; text: string } {
    const lines: string[] = [];
    const code = runCheck(input, { line: (t = '') => lines.push(t), color: false, width: 100 });
    return { code, text: lines.join('\n') };
  }

  it('prints a caret under the first offending character and exits 1', () => {
    const value = `00-${T}-${P}-0x`;
    expect(run({ traceparent: value })).toEqual({
      code: 1,
      text: `✗ traceparent invalid (bad-flags): "x" is not a hex digit, in the flags at index 54\n    ${value}\n    ${' '.repeat(54)}^`,
    });
  });

  it('prints the fields of valid headers and exits 0', () => {
    const { code, text } = run({ traceparent: VALID, tracestate: 'congo=t61rcWkgMzE', baggage: 'userId=alice' });
    expect(code).toBe(0);
    expect(text).toContain(`trace id ${T}`);
    expect(text).toContain('flags    01 (sampled: yes, random: no)');
    expect(text).toContain('1 member');
    expect(text).toContain('userId = "alice"');
  });

  it('prints JSON', () => {
    const { code, text } = run({ traceparent: '', json: true });
    expect(code).toBe(1);
    // Every field, null when not asked: one shape whatever the input.
    expect(JSON.parse(text)).toEqual({
      command: 'check',
      exitCode: 1,
      traceparent: {
        valid: false,
        value: '',
        reason: 'missing',
        at: { index: 0, length: 0 },
        explanation: 'the value is empty: no trace context was sent',
      },
      tracestate: null,
      baggage: null,
      valid: false,
    });
  });

  // Faults core reports under one reason are told apart in words.
  it.each([
    ['a leading space', ` ${VALID}`, /starts with white space/],
    ['a trailing space', `${VALID} `, /ends with white space/],
    [
      'upper-case hex in the trace id',
      VALID.toUpperCase().replace('0AF', '00-0AF').slice(3),
      /upper-case hex "A" in the trace id/,
    ],
    ['upper-case version', `A0-${T}-${P}-01`, /upper-case hex "A" in the version/],
    ['too short', VALID.slice(0, 40), /is 40 characters long; a version 00 value has exactly 55/],
    ['too long', `${VALID}-00`, /is 58 characters long; a version 00 value ends after the flags, at 55/],
    ['version ff', `ff-${T}-${P}-01`, /version ff is forbidden/],
    ['a dash missing', `00-${T}x${P}-01`, /"x" at index 35 where the layout .* puts a dash/],
    ['zero trace id', `00-${'0'.repeat(32)}-${P}-01`, /trace id is all zeros/],
    ['two values', `${VALID}, ${VALID}`, /more than one traceparent/],
  ])('explains %s in words', (_name, value, words) => {
    const tp = explainHeaders({ traceparent: value }).traceparent;
    expect(tp.valid).toBe(false);
    if (!tp.valid) expect(tp.explanation).toMatch(words);
  });
});
