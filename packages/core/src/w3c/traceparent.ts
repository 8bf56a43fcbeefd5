/** Why a `traceparent` value was not continued. */
export type TraceparentReason =
  | 'missing'
  | 'bad-version'
  | 'bad-trace-id'
  | 'zero-trace-id'
  | 'bad-parent-id'
  | 'zero-parent-id'
  | 'bad-flags'
  | 'bad-format'
  | 'multiple';

/** A valid `traceparent`, as parsed by {@link parseTraceparent}. */
export interface Traceparent {
  /** The version the caller sent (0 for `00`); outbound headers are always written as `00`. */
  readonly version: number;
  readonly traceId: string;
  readonly spanId: string;
  /** The trace-flags byte as received; only `sampled` (0x01) and `random` (0x02) are forwarded. */
  readonly traceFlags: number;
}

/** W3C trace-context-2 §3.2.2.5: sampled. */
export const FLAG_SAMPLED = 0x01;
/** W3C trace-context-2 §3.2.2.5: random trace-id (Level 2). */
export const FLAG_RANDOM = 0x02;
/** The flags this version of the spec defines; unknown bits are zeroed on the way out (§4.3). */
export const KNOWN_FLAGS = FLAG_SAMPLED | FLAG_RANDOM;

const TRACEPARENT_LENGTH = 55;

/**
 * Lower-case hex digit values by the low byte of a char code; 0xff for anything else (upper case is invalid, W3C
 * trace-context §3.2.2).
 */
const HEX_VALUE = new Uint8Array(256).fill(0xff);
for (let i = 0; i < 16; i++) HEX_VALUE['0123456789abcdef'.charCodeAt(i)] = i;

function hexAt(s: string, i: number): number {
  const c = s.charCodeAt(i);
  // NaN past the end compares false, like any code point over 255.
  return c < 256 ? HEX_VALUE[c] : 0xff;
}

/** 1 if `s[from, to)` (within `s`) is lower-case hex and not all zeros, 0 if all zeros, -1 if not hex. */
function scanId(s: string, from: number, to: number): number {
  // OR of the digit values (over 15: a non-digit; 0: all zeros) and of the codes (over 255: outside the table).
  let acc = 0;
  let codes = 0;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    acc |= HEX_VALUE[c & 0xff];
    codes |= c;
  }
  return acc > 15 || codes > 0xff ? -1 : acc === 0 ? 0 : 1;
}

/**
 * The trace flags of a valid `traceparent` string (only the defined ones from a higher version), or
 * why it is invalid. Allocates nothing: the ids are `value.substring(3, 35)` and `value.substring(36, 52)`.
 * @internal
 */
export function checkTraceparent(value: string): number | TraceparentReason {
  const len = value.length;
  if (len === 0) return 'missing';
  // §3.2.2.2 version: two lower-case hex digits, ff is forbidden.
  const v0 = hexAt(value, 0);
  const v1 = hexAt(value, 1);
  if (v0 > 15 || v1 > 15 || value.charCodeAt(2) !== 45 /* - */) return 'bad-version';
  const version = v0 * 16 + v1;
  if (version === 255) return 'bad-version';
  if (len !== TRACEPARENT_LENGTH) {
    if (len < TRACEPARENT_LENGTH) return 'bad-format';
    const next = value.charCodeAt(TRACEPARENT_LENGTH);
    // Two header lines folded into one ("a, b") or a list: never guess which one is ours.
    if (next === 44 /* , */) return 'multiple';
    // §4.3 step 2.2: a higher version may append fields after a '-'; version 00 may not.
    if (version === 0 || next !== 45) return 'bad-format';
  }
  if (value.charCodeAt(35) !== 45 || value.charCodeAt(52) !== 45) return 'bad-format';
  const t = scanId(value, 3, 35);
  if (t < 0) return 'bad-trace-id';
  if (t === 0) return 'zero-trace-id';
  const p = scanId(value, 36, 52);
  if (p < 0) return 'bad-parent-id';
  if (p === 0) return 'zero-parent-id';
  const f0 = hexAt(value, 53);
  const f1 = hexAt(value, 54);
  if (f0 > 15 || f1 > 15) return 'bad-flags';
  // §4.3 step 2.2: from a higher version only the flags this version defines are kept.
  return version === 0 ? f0 * 16 + f1 : (f0 * 16 + f1) & KNOWN_FLAGS;
}

/**
 * Parses a W3C Trace Context Level 2 `traceparent`. Pure: returns the ids and flags, or the
 * reason it is invalid (allocating nothing); never throws.
 * @example
 * const tp = parseTraceparent(req.headers.traceparent);
 * if (typeof tp === 'string') diag.info(`fresh root because ${tp}`);
 */
export function parseTraceparent(value: unknown): Traceparent | TraceparentReason {
  if (typeof value !== 'string') {
    if (value === undefined || value === null) return 'missing';
    if (Array.isArray(value)) {
      if (value.length === 0) return 'missing';
      if (value.length > 1) return 'multiple';
      return parseTraceparent(value[0]);
    }
    return 'bad-format';
  }
  const flags = checkTraceparent(value);
  if (typeof flags === 'string') return flags;
  return {
    version: hexAt(value, 0) * 16 + hexAt(value, 1),
    traceId: value.substring(3, 35),
    spanId: value.substring(36, 52),
    traceFlags: flags,
  };
}

/**
 * The ids and flags of a `traceparent` as a remote span context's fields (only the defined flags), or why there are
 * none.
 */
export interface RemoteTraceparent {
  readonly traceId: string;
  readonly spanId: string;
  readonly traceFlags: number;
  readonly isRemote: true;
}

/**
 * The remote span context a `traceparent` names, or the reason it names none: the one reader of the
 * header's layout beside {@link parseTraceparent}. A plain string (the usual case) is read in place.
 * @internal the extraction's fast path.
 */
export function remoteTraceparent(raw: unknown): RemoteTraceparent | TraceparentReason {
  if (typeof raw !== 'string') {
    const tp = parseTraceparent(raw);
    return typeof tp === 'string'
      ? tp
      : { traceId: tp.traceId, spanId: tp.spanId, traceFlags: tp.traceFlags & KNOWN_FLAGS, isRemote: true };
  }
  const flags = checkTraceparent(raw);
  if (typeof flags === 'string') return flags;
  return {
    traceId: raw.substring(3, 35),
    spanId: raw.substring(36, 52),
    traceFlags: flags & KNOWN_FLAGS,
    isRemote: true,
  };
}

/** True when `id` is `length` lower-case hex digits and not all zeros. */
export function isValidId(id: string, length: 32 | 16): boolean {
  return typeof id === 'string' && id.length === length && scanId(id, 0, length) === 1;
}

const HEX = '0123456789abcdef';

/**
 * Formats a version-00 `traceparent`; only the flags this version defines are written.
 * @example formatTraceparent(spanContext.traceId, spanContext.spanId, 0x01)
 */
export function formatTraceparent(traceId: string, spanId: string, traceFlags: number): string {
  const f = traceFlags & KNOWN_FLAGS;
  return `00-${traceId}-${spanId}-0${HEX[f]}`;
}
