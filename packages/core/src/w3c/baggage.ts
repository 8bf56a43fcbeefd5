import { baggageEntryMetadataFromString, propagation } from '@opentelemetry/api';
import type { Baggage, BaggageEntry, Context } from '@opentelemetry/api';
import { recordDropped } from '../internal/diagnostics';

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
  return (
    c === 33 ||
    (c >= 35 && c <= 39) ||
    c === 42 ||
    c === 43 ||
    c === 45 ||
    c === 46 ||
    c === 94 ||
    c === 95 ||
    c === 96 ||
    c === 124 ||
    c === 126
  );
}

/** baggage-octet: %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E (W3C baggage §3.3.1). */
function isValueChar(c: number): boolean {
  return (
    c === 0x21 ||
    (c >= 0x23 && c <= 0x2b) ||
    (c >= 0x2d && c <= 0x3a) ||
    (c >= 0x3c && c <= 0x5b) ||
    (c >= 0x5d && c <= 0x7e)
  );
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

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  c |= 0x20;
  return c >= 97 && c <= 102 ? c - 87 : -1;
}

/**
 * Percent-decodes `s[from, to)` as decodeURIComponent does, or undefined where it would throw; ASCII escapes without
 * the call.
 */
function decodeValue(s: string, from: number, to: number): string | undefined {
  let pct = s.indexOf('%', from);
  if (pct < 0 || pct >= to) return s.substring(from, to);
  let out = '';
  let i = from;
  while (pct >= 0 && pct < to) {
    const hi = pct + 2 < to ? hexDigit(s.charCodeAt(pct + 1)) : -1;
    const lo = hi < 0 ? -1 : hexDigit(s.charCodeAt(pct + 2));
    if (lo < 0) return undefined;
    const byte = hi * 16 + lo;
    // A byte of a multi-byte UTF-8 sequence: let the platform validate and decode the whole value.
    if (byte > 0x7f) {
      try {
        return decodeURIComponent(s.substring(from, to));
      } catch {
        return undefined;
      }
    }
    out += s.substring(i, pct) + String.fromCharCode(byte);
    i = pct + 3;
    pct = s.indexOf('%', i);
  }
  return out + s.substring(i, to);
}

/**
 * An immutable `Baggage` over one map: what the API's `createBaggage` makes, without its copy of every entry through
 * `Object.entries`.
 */
class MapBaggage implements Baggage {
  /**
   * The last header written from this (immutable) baggage and its budget: a service forwards the same baggage on every
   * outbound call.
   */
  serialized: SerializedBaggage | undefined;
  serializedFor = -1;

  constructor(readonly entries: Map<string, BaggageEntry>) {}

  getEntry(key: string): BaggageEntry | undefined {
    const entry = this.entries.get(key);
    return entry === undefined ? undefined : { ...entry };
  }

  getAllEntries(): [string, BaggageEntry][] {
    return Array.from(this.entries);
  }

  setEntry(key: string, entry: BaggageEntry): Baggage {
    return new MapBaggage(new Map(this.entries).set(key, entry));
  }

  removeEntry(key: string): Baggage {
    const entries = new Map(this.entries);
    entries.delete(key);
    return new MapBaggage(entries);
  }

  removeEntries(...keys: string[]): Baggage {
    const entries = new Map(this.entries);
    for (const key of keys) entries.delete(key);
    return new MapBaggage(entries);
  }

  clear(): Baggage {
    return EMPTY;
  }
}

const EMPTY = new MapBaggage(new Map());

/**
 * Inbound baggage, parsed on first use (members that fail are dropped and counted then), so a
 * service that never reads or forwards it pays nothing. Without a valid member it reads as the
 * baggage `before` held, or empty.
 * @internal
 */
export class InboundBaggage implements Baggage {
  private parsed: Baggage | undefined;

  constructor(
    private readonly raw: unknown,
    private readonly before: Context,
  ) {}

  /** @internal */
  load(): Baggage {
    if (this.parsed === undefined) {
      const p = parseBaggage(this.raw);
      if (p.reason !== undefined) recordDropped('baggage', p.reason, p.dropped, this.raw);
      this.parsed = p.baggage ?? propagation.getBaggage(this.before) ?? EMPTY;
    }
    return this.parsed;
  }

  getEntry(key: string): BaggageEntry | undefined {
    return this.load().getEntry(key);
  }

  getAllEntries(): [string, BaggageEntry][] {
    return this.load().getAllEntries();
  }

  setEntry(key: string, entry: BaggageEntry): Baggage {
    return this.load().setEntry(key, entry);
  }

  removeEntry(key: string): Baggage {
    return this.load().removeEntry(key);
  }

  removeEntries(...keys: string[]): Baggage {
    return this.load().removeEntries(...keys);
  }

  clear(): Baggage {
    return EMPTY;
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
  if (
    len > BAGGAGE_LIMITS.maxBytes ||
    (len * 3 > BAGGAGE_LIMITS.maxBytes && Buffer.byteLength(s, 'utf8') > BAGGAGE_LIMITS.maxBytes)
  )
    return { baggage: undefined, dropped: 1, reason: 'too-large' };
  let entries: Map<string, BaggageEntry> | undefined;
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
    const decoded = ok ? decodeValue(s, valueStart, vEnd) : undefined;
    const props = valueEnd < b ? s.substring(valueEnd + 1, b).trim() : '';
    if (decoded === undefined || (props.length > 0 && !isValidProperties(props))) {
      dropped++;
      reason ??= 'bad-member';
      continue;
    }
    entries ??= new Map();
    entries.set(
      s.substring(a, keyEnd),
      props.length > 0 ? { value: decoded, metadata: baggageEntryMetadataFromString(props) } : { value: decoded },
    );
    kept++;
  }
  if (entries === undefined && dropped === 0) return NOTHING;
  return { baggage: entries === undefined ? undefined : new MapBaggage(entries), dropped, reason };
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
  const own = baggage instanceof InboundBaggage ? baggage.load() : baggage;
  if (!(own instanceof MapBaggage)) return serializeEntries(own.getAllEntries(), maxBytes);
  if (own.serializedFor !== maxBytes) {
    own.serialized = serializeEntries(own.entries, maxBytes);
    own.serializedFor = maxBytes;
  }
  return own.serialized!;
}

/** Characters `encodeURIComponent` leaves as they are: A-Z a-z 0-9 - _ . ! ~ * ' ( ). */
function unreserved(c: number): boolean {
  return (
    (c >= 97 && c <= 122) ||
    (c >= 65 && c <= 90) ||
    (c >= 48 && c <= 57) ||
    c === 45 ||
    c === 95 ||
    c === 46 ||
    c === 33 ||
    c === 126 ||
    (c >= 39 && c <= 42)
  );
}

function encodeValue(value: string): string {
  for (let i = 0; i < value.length; i++) if (!unreserved(value.charCodeAt(i))) return encodeURIComponent(value);
  return value;
}

function serializeEntries(entries: Iterable<[string, BaggageEntry]>, maxBytes: number): SerializedBaggage {
  const members: string[] = [];
  let dropped = 0;
  let total = 0;
  for (const [key, entry] of entries) {
    if (!isToken(key, 0, key.length) || typeof entry.value !== 'string') {
      dropped++;
      continue;
    }
    let member: string;
    try {
      member = `${key}=${encodeValue(entry.value)}`;
    } catch {
      // A lone surrogate cannot be encoded.
      dropped++;
      continue;
    }
    const meta = entry.metadata?.toString();
    if (meta && isValidProperties(meta)) member += `;${meta}`;
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
