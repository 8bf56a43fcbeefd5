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

/** Value of a lower-case hex digit, or -1; upper case is invalid per W3C trace-context §3.2.2. */
function hexValue(code: number): number {
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 97 && code <= 102) return code - 87;
  return -1;
}

/** 1 if `s[from, to)` is lower-case hex and not all zeros, 0 if all zeros, -1 if not hex. */
function scanId(s: string, from: number, to: number): number {
  let nonZero = 0;
  for (let i = from; i < to; i++) {
    const v = hexValue(s.charCodeAt(i));
    if (v < 0) return -1;
    nonZero |= v;
  }
  return nonZero === 0 ? 0 : 1;
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
  const len = value.length;
  if (len === 0) return 'missing';
  // §3.2.2.2 version: two lower-case hex digits, ff is forbidden.
  const v0 = hexValue(value.charCodeAt(0));
  const v1 = hexValue(value.charCodeAt(1));
  if (v0 < 0 || v1 < 0 || value.charCodeAt(2) !== 45 /* - */) return 'bad-version';
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
  const f0 = hexValue(value.charCodeAt(53));
  const f1 = hexValue(value.charCodeAt(54));
  if (f0 < 0 || f1 < 0) return 'bad-flags';
  let traceFlags = f0 * 16 + f1;
  // §4.3 step 2.2: from a higher version only the flags this version defines are kept.
  if (version !== 0) traceFlags &= KNOWN_FLAGS;
  return { version, traceId: value.substring(3, 35), spanId: value.substring(36, 52), traceFlags };
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
  return '00-' + traceId + '-' + spanId + '-0' + HEX[f];
}
