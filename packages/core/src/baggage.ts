import { baggageEntryMetadataFromString, propagation } from '@opentelemetry/api';
import type { Baggage, BaggageEntry } from '@opentelemetry/api';

/** W3C Baggage limits, as OpenTelemetry applies them. */
export const BAGGAGE_LIMITS = Object.freeze({ maxBytes: 8192, maxMembers: 180, maxMemberBytes: 4096 });

/** Why baggage members were dropped. */
export type BaggageDropReason = 'too-large' | 'too-many-members' | 'member-too-large' | 'bad-member';

/** What {@link parseBaggage} found. */
export interface ParsedBaggage {
  /** The entries kept, or undefined when there were none. */
  readonly baggage: Baggage | undefined;
  /** How many members were dropped, and the first reason why. */
  readonly dropped: number;
  readonly reason: BaggageDropReason | undefined;
}

const NOTHING: ParsedBaggage = Object.freeze({ baggage: undefined, dropped: 0, reason: undefined });

/** RFC 9110 tchar. */
function isTokenChar(c: number): boolean {
  if ((c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122)) return true;
  return c === 33 || (c >= 35 && c <= 39) || c === 42 || c === 43 || c === 45 || c === 46 || c === 94 || c === 95 || c === 96 || c === 124 || c === 126;
}

/** baggage-octet: %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E (W3C baggage §3.3.1). */
function isValueChar(c: number): boolean {
  return c === 0x21 || (c >= 0x23 && c <= 0x2b) || (c >= 0x2d && c <= 0x3a) || (c >= 0x3c && c <= 0x5b) || (c >= 0x5d && c <= 0x7e);
}

function isToken(s: string, from: number, to: number): boolean {
  if (from >= to) return false;
  for (let i = from; i < to; i++) if (!isTokenChar(s.charCodeAt(i))) return false;
  return true;
}

function isOws(c: number): boolean {
  return c === 0x20 || c === 0x09;
}

/** Properties: `;`-separated `key` or `key=value`, each part within the grammar. */
function isValidProperties(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (!(isValueChar(c) || c === 0x3b || c === 0x3d || isOws(c))) return false;
  }
  return true;
}

function decodeValue(raw: string): string | undefined {
  if (raw.indexOf('%') < 0) return raw;
  try {
    return decodeURIComponent(raw);
  } catch {
    return undefined;
  }
}

/**
 * Parses a W3C `baggage` header within the spec limits: a header over 8192 bytes is dropped whole,
 * a member over 4096 bytes or outside the grammar is dropped alone, members past 180 are dropped.
 * Values are percent-decoded; properties are kept as entry metadata. Never throws.
 */
export function parseBaggage(value: unknown): ParsedBaggage {
  if (Array.isArray(value)) {
    if (value.length === 0) return NOTHING;
    for (const v of value) if (typeof v !== 'string') return { baggage: undefined, dropped: 1, reason: 'bad-member' };
    value = value.join(',');
  }
  if (typeof value !== 'string') {
    return value === undefined || value === null ? NOTHING : { baggage: undefined, dropped: 1, reason: 'bad-member' };
  }
  const s = value;
  const len = s.length;
  if (len === 0) return NOTHING;
  // UTF-8 takes 1 to 3 bytes per UTF-16 unit, so only lengths in between need counting.
  if (len > BAGGAGE_LIMITS.maxBytes || (len * 3 > BAGGAGE_LIMITS.maxBytes && Buffer.byteLength(s, 'utf8') > BAGGAGE_LIMITS.maxBytes)) return { baggage: undefined, dropped: 1, reason: 'too-large' };
  let entries: Record<string, BaggageEntry> | undefined;
  let kept = 0;
  let dropped = 0;
  let reason: BaggageDropReason | undefined;
  let start = 0;
  // The next '=' and ';' at or after the current member, found once each, so scanning stays linear.
  let nextEq = -2;
  let nextSemi = -2;
  while (start <= len) {
    let end = s.indexOf(',', start);
    if (end < 0) end = len;
    let a = start;
    let b = end;
    start = end + 1;
    while (a < b && isOws(s.charCodeAt(a))) a++;
    while (b > a && isOws(s.charCodeAt(b - 1))) b--;
    if (a === b) continue;
    if (kept === BAGGAGE_LIMITS.maxMembers) {
      dropped++;
      reason ??= 'too-many-members';
      continue;
    }
    if (b - a > BAGGAGE_LIMITS.maxMemberBytes) {
      dropped++;
      reason ??= 'member-too-large';
      continue;
    }
    if (nextEq !== -1 && nextEq < a) nextEq = s.indexOf('=', a);
    if (nextSemi !== -1 && nextSemi < a) nextSemi = s.indexOf(';', a);
    const eq = nextEq;
    const semi = nextSemi;
    const valueEnd = semi >= 0 && semi < b ? semi : b;
    let keyEnd = eq;
    while (keyEnd > a && isOws(s.charCodeAt(keyEnd - 1))) keyEnd--;
    let valueStart = eq + 1;
    while (valueStart < valueEnd && isOws(s.charCodeAt(valueStart))) valueStart++;
    let vEnd = valueEnd;
    while (vEnd > valueStart && isOws(s.charCodeAt(vEnd - 1))) vEnd--;
    let ok = eq > a && eq < valueEnd && isToken(s, a, keyEnd);
    for (let i = valueStart; ok && i < vEnd; i++) if (!isValueChar(s.charCodeAt(i))) ok = false;
    const decoded = ok ? decodeValue(s.substring(valueStart, vEnd)) : undefined;
    const props = valueEnd < b ? s.substring(valueEnd + 1, b).trim() : '';
    if (decoded === undefined || (props.length > 0 && !isValidProperties(props))) {
      dropped++;
      reason ??= 'bad-member';
      continue;
    }
    // A plain object, not Object.create(null): V8 keeps a null-prototype object in dictionary mode,
    // which makes createBaggage's Object.entries several times slower.
    entries ??= {};
    const entry: BaggageEntry = props.length > 0 ? { value: decoded, metadata: baggageEntryMetadataFromString(props) } : { value: decoded };
    const key = s.substring(a, keyEnd);
    // A member named __proto__ is a key like any other, never a prototype.
    if (key === '__proto__') Object.defineProperty(entries, key, { value: entry, enumerable: true, writable: true, configurable: true });
    else entries[key] = entry;
    kept++;
  }
  if (entries === undefined && dropped === 0) return NOTHING;
  return { baggage: entries === undefined ? undefined : propagation.createBaggage(entries), dropped, reason };
}

/** What {@link serializeBaggage} wrote and what it had to leave out. */
export interface SerializedBaggage {
  readonly header: string;
  readonly dropped: number;
}

/**
 * Writes a `baggage` header within `maxBytes` (default 8192), 180 members and 4096 bytes a member,
 * dropping whole members, last first, so no proxy answers 431. Keys that are not tokens are dropped.
 */
export function serializeBaggage(baggage: Baggage, maxBytes: number = BAGGAGE_LIMITS.maxBytes): SerializedBaggage {
  const members: string[] = [];
  let dropped = 0;
  let total = 0;
  for (const [key, entry] of baggage.getAllEntries()) {
    if (!isToken(key, 0, key.length) || typeof entry.value !== 'string') {
      dropped++;
      continue;
    }
    let member = key + '=' + encodeURIComponent(entry.value);
    const meta = entry.metadata?.toString();
    if (meta && isValidProperties(meta)) member += ';' + meta;
    if (member.length > BAGGAGE_LIMITS.maxMemberBytes || members.length === BAGGAGE_LIMITS.maxMembers) {
      dropped++;
      continue;
    }
    members.push(member);
    total += member.length + (members.length > 1 ? 1 : 0);
  }
  while (total > maxBytes && members.length > 0) {
    const last = members.pop()!;
    total -= last.length + (members.length > 0 ? 1 : 0);
    dropped++;
  }
  return { header: members.join(','), dropped };
}
