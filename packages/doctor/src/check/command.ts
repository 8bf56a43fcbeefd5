import {
  BAGGAGE_LIMITS,
  FLAG_RANDOM,
  FLAG_SAMPLED,
  MAX_TRACESTATE_MEMBERS,
  parseBaggage,
  parseTraceparent,
  parseTracestate,
} from '@meshtrace/core';
import type { BaggageDropReason, TraceparentReason, TracestateReason } from '@meshtrace/core';
import { palette } from '../output';
import type { Output } from '../output';

/** The header values to explain; tracestate and baggage only when given. */
export interface CheckInput {
  readonly traceparent: string;
  readonly tracestate?: string;
  readonly baggage?: string;
}

/** Where a value goes wrong: 0-based index of the first offending character and how many characters the fault spans. */
export interface Offence {
  readonly index: number;
  readonly length: number;
}

/** One header judged by core's parser. */
export type HeaderVerdict<Reason extends string, Fields> =
  | ({ readonly valid: true; readonly value: string } & Fields)
  | {
      readonly valid: false;
      readonly value: string;
      readonly reason: Reason;
      readonly at: Offence;
      /** The fault in words: which character, in which field, and what the spec asks for. */
      readonly explanation: string;
    };

/** A valid traceparent's fields. */
export interface TraceparentFields {
  readonly version: number;
  readonly traceId: string;
  readonly parentId: string;
  /** The flags core keeps, as two hex digits. */
  readonly flags: string;
  readonly sampled: boolean;
  readonly random: boolean;
}

/** What {@link explainHeaders} found for each header it was given. */
export interface CheckReport {
  readonly traceparent: HeaderVerdict<TraceparentReason, TraceparentFields>;
  /** Members kept, and later members repeating a key that core drops. */
  readonly tracestate?: HeaderVerdict<TracestateReason, { readonly members: number; readonly duplicates: number }>;
  /** Entries kept; invalid when core drops any member. */
  readonly baggage?: HeaderVerdict<
    BaggageDropReason,
    { readonly entries: ReadonlyArray<{ readonly key: string; readonly value: string }> }
  >;
  readonly valid: boolean;
}

/** traceparent field offsets: version 0-1, trace id 3-34, parent id 36-51, flags 53-54 (W3C trace-context §3.2.2). */
const DASHES = [2, 35, 52];
const LENGTH = 55;

/** The first character of `s[from, to)` that is not lower-case hex, else the whole field. */
function nonHex(s: string, from: number, to: number): Offence {
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return { index: i, length: 1 };
  }
  return { index: from, length: to - from };
}

/**
 * Where in `value` the fault core named lies. Only locates: the verdict is core's `reason`, this finds the
 * character in the field that reason is about.
 */
export function traceparentOffence(value: string, reason: TraceparentReason): Offence {
  switch (reason) {
    case 'missing':
      return { index: 0, length: 0 };
    case 'bad-version': {
      // A non-hex digit, the dash after the version, or `ff` (all hex, so the whole field).
      const v = nonHex(value, 0, 2);
      return v.length === 1 ? v : value.charCodeAt(2) !== 45 ? { index: 2, length: 1 } : v;
    }
    case 'bad-trace-id':
      return nonHex(value, 3, 35);
    case 'zero-trace-id':
      return { index: 3, length: 32 };
    case 'bad-parent-id':
      return nonHex(value, 36, 52);
    case 'zero-parent-id':
      return { index: 36, length: 16 };
    case 'bad-flags':
      return nonHex(value, 53, 55);
    case 'multiple':
      return { index: LENGTH, length: 1 };
    case 'bad-format': {
      if (value.length > LENGTH) {
        // A longer value is read up to 55 characters; a missing dash there, else the 56th, is the fault.
        const dash = DASHES.find((d) => value.charCodeAt(d) !== 45);
        return { index: dash ?? LENGTH, length: 1 };
      }
      // The first character that breaks the shape `vv-<32 hex>-<16 hex>-ff`: a dash out of place, or the early end.
      for (let i = 0; i < value.length; i++)
        if ((value.charCodeAt(i) === 45) !== DASHES.includes(i)) return { index: i, length: 1 };
      return { index: value.length, length: 1 };
    }
  }
}

const FIELDS: ReadonlyArray<[number, string]> = [
  [2, 'version'],
  [35, 'trace id'],
  [52, 'parent id'],
  [55, 'flags'],
];

/** The traceparent field index `i` falls in. */
function fieldAt(i: number): string {
  return FIELDS.find(([end]) => i < end)?.[1] ?? 'flags';
}

const shown = (c: string): string => (c === ' ' ? 'a space' : c === '\t' ? 'a tab' : JSON.stringify(c));

/** Why `value` is not a valid traceparent, in words, from core's `reason` and where the fault is. */
export function traceparentExplanation(value: string, reason: TraceparentReason, at: Offence): string {
  const c = value[at.index];
  if (reason === 'missing') return 'the value is empty: no trace context was sent';
  if (/^\s/.test(value))
    return 'it starts with white space: a proxy or client added it; the value must start with the version';
  if (/\s$/.test(value)) return 'it ends with white space after the flags: a proxy or client added it';
  if (reason === 'multiple') {
    const joined = 'it holds more than one traceparent (repeated header lines joined with a comma)';
    return `${joined}: the spec makes that invalid`;
  }
  if (reason === 'zero-trace-id')
    return 'the trace id is all zeros, which the spec forbids (W3C trace-context §3.2.2.3)';
  if (reason === 'zero-parent-id')
    return 'the parent id is all zeros, which the spec forbids (W3C trace-context §3.2.2.4)';
  if (reason === 'bad-version' && value.startsWith('ff')) {
    return 'version ff is forbidden (W3C trace-context §3.2.2.2)';
  }
  if (c !== undefined && /[A-F]/.test(c)) {
    const upper = `upper-case hex ${shown(c)} in the ${fieldAt(at.index)}`;
    return `${upper}: the spec requires lower-case hex; something on the way upper-cased the header`;
  }
  if (reason === 'bad-format') {
    const length = `it is ${value.length} characters long`;
    if (value.length < 55)
      return `${length}; a version 00 value has exactly 55 (2-32-16-2 hex digits and three dashes)`;
    if (value.startsWith('00') && value.length > 55 && DASHES.every((d) => value.charCodeAt(d) === 45))
      return `${length}; a version 00 value ends after the flags, at 55`;
    if (c === undefined) return 'it ends early';
    const expected = DASHES.includes(at.index) ? 'a dash' : `a hex digit of the ${fieldAt(at.index)}`;
    return `${shown(c)} at index ${at.index} where the layout vv-<trace id>-<parent id>-ff puts ${expected}`;
  }
  if (reason === 'bad-version' && c === '-') return 'the version must be two hex digits';
  return c === undefined
    ? `the ${fieldAt(at.index)} is cut short`
    : `${shown(c)} is not a hex digit, in the ${fieldAt(at.index)} at index ${at.index}`;
}

/** Each non-empty list member of `value` (split at commas, blanks around it left out), with where it starts. */
function members(value: string): { text: string; index: number }[] {
  const out: { text: string; index: number }[] = [];
  let start = 0;
  for (const part of value.split(',')) {
    const lead = part.length - part.trimStart().length;
    const text = part.trim();
    if (text.length > 0) out.push({ text, index: start + lead });
    start += part.length + 1;
  }
  return out;
}

function explainTraceparent(value: string): CheckReport['traceparent'] {
  const tp = parseTraceparent(value);
  if (typeof tp === 'string') {
    const at = traceparentOffence(value, tp);
    return { valid: false, value, reason: tp, at, explanation: traceparentExplanation(value, tp, at) };
  }
  return {
    valid: true,
    value,
    version: tp.version,
    traceId: tp.traceId,
    parentId: tp.spanId,
    flags: tp.traceFlags.toString(16).padStart(2, '0'),
    sampled: (tp.traceFlags & FLAG_SAMPLED) !== 0,
    random: (tp.traceFlags & FLAG_RANDOM) !== 0,
  };
}

function explainTracestate(value: string): NonNullable<CheckReport['tracestate']> {
  const ts = parseTracestate(value);
  if (typeof ts !== 'string') return { valid: true, value, members: ts?.size ?? 0, duplicates: ts?.duplicates ?? 0 };
  const list = members(value);
  // The member core rejects on its own, or for too-many-members the first past the limit.
  const bad =
    ts === 'bad-member' ? list.find((m) => parseTracestate(m.text) === 'bad-member') : list[MAX_TRACESTATE_MEMBERS];
  const at = bad === undefined ? { index: 0, length: value.length } : { index: bad.index, length: bad.text.length };
  const member = JSON.stringify(bad?.text ?? value);
  const explanation =
    ts === 'bad-member'
      ? `the member ${member} is not key=value as the spec allows (W3C trace-context §3.3.1)`
      : `more than ${MAX_TRACESTATE_MEMBERS} members: the spec allows 32 (W3C trace-context §3.3.1.1)`;
  return { valid: false, value, reason: ts, at, explanation };
}

function explainBaggage(value: string): NonNullable<CheckReport['baggage']> {
  const parsed = parseBaggage(value);
  if (parsed.reason === undefined)
    return {
      valid: true,
      value,
      entries: parsed.baggage?.getAllEntries().map(([key, e]) => ({ key, value: e.value })) ?? [],
    };
  let at: Offence = { index: 0, length: value.length };
  if (parsed.reason !== 'too-large') {
    // Core drops members in order and reports the first reason: the first member it drops is the one to show.
    let kept = 0;
    for (const m of members(value)) {
      if (parseBaggage(m.text).dropped > 0 || kept === BAGGAGE_LIMITS.maxMembers) {
        at = { index: m.index, length: m.text.length };
        break;
      }
      kept++;
    }
  }
  const explanation =
    parsed.reason === 'too-large'
      ? `the value is over ${BAGGAGE_LIMITS.maxBytes} bytes, the W3C baggage limit; members past it are dropped`
      : `core drops the member at index ${at.index} (${parsed.reason}), as W3C baggage says`;
  return { valid: false, value, reason: parsed.reason, at, explanation };
}

/**
 * Each header judged by core's parser: valid with its fields, or core's reason and where the first offending character
 * is.
 */
export function explainHeaders(input: CheckInput): CheckReport {
  const traceparent = explainTraceparent(input.traceparent);
  const tracestate = input.tracestate === undefined ? undefined : explainTracestate(input.tracestate);
  const baggage = input.baggage === undefined ? undefined : explainBaggage(input.baggage);
  const valid = traceparent.valid && tracestate?.valid !== false && baggage?.valid !== false;
  return { traceparent, ...(tracestate && { tracestate }), ...(baggage && { baggage }), valid };
}

/** What `meshtrace check` was asked. */
export interface CheckOptions extends CheckInput {
  /** Print the report as JSON. */
  readonly json?: boolean;
}

/** A valid tracestate's members, and the repeated keys dropped when there were any. */
function membersText(members: number, duplicates: number): string {
  const dropped = duplicates > 0 ? `, ${duplicates} repeated ${duplicates === 1 ? 'key' : 'keys'} dropped` : '';
  return `${members} ${members === 1 ? 'member' : 'members'}${dropped}`;
}

/** `meshtrace check`: prints each header's verdict. Exit code 0 when all are valid, 1 when any is not. */
export function runCheck(options: CheckOptions, out: Output): number {
  const report = explainHeaders(options);
  const exitCode = report.valid ? 0 : 1;
  if (options.json) {
    const json = { command: 'check', exitCode, tracestate: null, baggage: null, ...report };
    out.line(JSON.stringify(json, null, 2));
    return exitCode;
  }
  const p = palette(out.color);
  const verdict = (
    name: string,
    v: { valid: boolean; value: string; reason?: string; at?: Offence; explanation?: string },
    details: string[],
  ): void => {
    if (v.valid) {
      out.line(`${p.good('✓')} ${name} valid`);
      for (const d of details) out.line(`    ${d}`);
      return;
    }
    out.line(`${p.bad('✗')} ${name} invalid (${v.reason}): ${v.explanation}`);
    out.line(`    ${v.value}`);
    out.line(`    ${' '.repeat(v.at!.index)}${p.bad('^'.repeat(Math.max(1, v.at!.length)))}`);
  };
  const tp = report.traceparent;
  verdict(
    'traceparent',
    tp,
    tp.valid
      ? [
          `version  ${tp.version.toString(16).padStart(2, '0')}`,
          `trace id ${tp.traceId}`,
          `parent   ${tp.parentId}`,
          `flags    ${tp.flags} (sampled: ${tp.sampled ? 'yes' : 'no'}, random: ${tp.random ? 'yes' : 'no'})`,
        ]
      : [],
  );
  const ts = report.tracestate;
  if (ts) verdict('tracestate', ts, ts.valid ? [membersText(ts.members, ts.duplicates)] : []);
  const bg = report.baggage;
  if (bg) verdict('baggage', bg, bg.valid ? bg.entries.map((e) => `${e.key} = ${JSON.stringify(e.value)}`) : []);
  return report.valid ? 0 : 1;
}
