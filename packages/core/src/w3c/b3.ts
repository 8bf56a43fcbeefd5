/** A valid B3 context, as parsed by {@link parseB3Single} or {@link parseB3Multi}. */
export interface B3Context {
  /** 32 lower-case hex digits; a 64-bit id is left-padded with zeros. */
  readonly traceId: string;
  readonly spanId: string;
  /** undefined when the sender deferred the decision. */
  readonly sampled: boolean | undefined;
  readonly debug: boolean;
}

/** `b3: 0`: no context, and the sender asks not to sample. */
export const B3_DENY = 'deny';

/** Why B3 headers were not used. */
export type B3Reason = 'missing' | 'bad-b3';

function isHex(s: string, from: number, to: number): boolean {
  let nonZero = false;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (c >= 48 && c <= 57) nonZero ||= c !== 48;
    else if (c >= 97 && c <= 102) nonZero = true;
    else return false;
  }
  return nonZero;
}

const PAD = '0000000000000000';

/** A B3 trace id of 16 or 32 hex digits, normalised to 32; undefined when invalid. */
function traceId(s: string, from: number, to: number): string | undefined {
  const len = to - from;
  if ((len !== 16 && len !== 32) || !isHex(s, from, to)) return undefined;
  return len === 16 ? PAD + s.substring(from, to) : s.substring(from, to);
}

function one(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (Array.isArray(value) && value.length === 1 && typeof value[0] === 'string') return value[0];
  return undefined;
}

/**
 * Parses the single `b3` header (`{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`, or `0`/`1`/`d`
 * alone). Returns the context, {@link B3_DENY} for `b3: 0`, or a reason; never throws.
 */
export function parseB3Single(value: unknown): B3Context | typeof B3_DENY | B3Reason {
  if (value === undefined || value === null) return 'missing';
  const s = one(value);
  if (s === undefined || s.length === 0) return s === '' ? 'missing' : 'bad-b3';
  if (s.length === 1) return s === '0' ? B3_DENY : 'bad-b3';
  if (s.length > 68) return 'bad-b3';
  const d1 = s.indexOf('-');
  if (d1 < 0) return 'bad-b3';
  const tid = traceId(s, 0, d1);
  const d2 = s.indexOf('-', d1 + 1);
  const spanEnd = d2 < 0 ? s.length : d2;
  if (tid === undefined || spanEnd - d1 - 1 !== 16 || !isHex(s, d1 + 1, spanEnd)) return 'bad-b3';
  let sampled: boolean | undefined;
  let debug = false;
  if (d2 >= 0) {
    const d3 = s.indexOf('-', d2 + 1);
    const flag = s.substring(d2 + 1, d3 < 0 ? s.length : d3);
    if (flag === '1') sampled = true;
    else if (flag === '0') sampled = false;
    else if (flag === 'd') sampled = debug = true;
    else return 'bad-b3';
    if (d3 >= 0 && (s.length - d3 - 1 !== 16 || !isHex(s, d3 + 1, s.length))) return 'bad-b3';
  }
  return { traceId: tid, spanId: s.substring(d1 + 1, spanEnd), sampled, debug };
}

/**
 * Parses multi-header B3 (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`); sampled
 * takes `1`/`0`/`true`/`false`, `x-b3-flags: 1` means debug. Never throws.
 */
export function parseB3Multi(
  traceIdValue: unknown,
  spanIdValue: unknown,
  sampledValue: unknown,
  flagsValue: unknown,
): B3Context | typeof B3_DENY | B3Reason {
  const t = one(traceIdValue);
  const sp = one(spanIdValue);
  const sampledText = one(sampledValue);
  const debug = one(flagsValue) === '1';
  let sampled: boolean | undefined;
  if (sampledText === '1' || sampledText === 'true') sampled = true;
  else if (sampledText === '0' || sampledText === 'false') sampled = false;
  else if (sampledText !== undefined) return 'bad-b3';
  if (t === undefined && sp === undefined) {
    if (traceIdValue !== undefined || spanIdValue !== undefined) return 'bad-b3';
    return sampled === false && !debug ? B3_DENY : 'missing';
  }
  if (t === undefined || sp === undefined) return 'bad-b3';
  const tid = traceId(t, 0, t.length);
  if (tid === undefined || sp.length !== 16 || !isHex(sp, 0, 16)) return 'bad-b3';
  return { traceId: tid, spanId: sp, sampled: debug ? true : sampled, debug };
}

/** The single `b3` header for a span context. */
export function formatB3Single(traceId: string, spanId: string, sampled: boolean, debug: boolean): string {
  return `${traceId}-${spanId}-${debug ? 'd' : sampled ? '1' : '0'}`;
}
