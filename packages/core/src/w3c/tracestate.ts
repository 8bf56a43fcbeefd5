import type { TraceState } from '@opentelemetry/api';
import { recordDropped } from '../internal/diagnostics';

/** Why a `tracestate` header was dropped as a whole. */
export type TracestateReason = 'bad-member' | 'too-many-members';

/** W3C trace-context-2 §3.3.1.1: at most 32 list members (empty ones not counted, repeated keys counted). */
export const MAX_TRACESTATE_MEMBERS = 32;
/** W3C trace-context §3.3.1.5: propagate at most 512 characters... */
export const MAX_TRACESTATE_LENGTH = 512;
/** ...dropping entries longer than 128 characters first. */
const LONG_ENTRY = 128;

/** key = ( lcalpha / DIGIT ) 0*255( keychar ); keychar adds "_" "-" "*" "/" "@" (trace-context-2 §3.3.2.2.1). */
function isValidKey(s: string, from: number, to: number): boolean {
  const len = to - from;
  if (len < 1 || len > 256) return false;
  const c0 = s.charCodeAt(from);
  if (!((c0 >= 97 && c0 <= 122) || (c0 >= 48 && c0 <= 57))) return false;
  for (let i = from + 1; i < to; i++) {
    const c = s.charCodeAt(i);
    if ((c >= 97 && c <= 122) || (c >= 48 && c <= 57)) continue;
    if (c === 95 || c === 45 || c === 42 || c === 47 || c === 64) continue;
    return false;
  }
  return true;
}

/** value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr; nblk-chr excludes "," and "=" (§3.3.2.2.2). */
function isValidValue(s: string, from: number, to: number): boolean {
  const len = to - from;
  if (len < 1 || len > 256) return false;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || c === 0x2c || c === 0x3d) return false;
  }
  return s.charCodeAt(to - 1) !== 0x20;
}

function isOws(c: number): boolean {
  return c === 0x20 || c === 0x09;
}

/**
 * An immutable W3C `tracestate`, usable wherever OpenTelemetry takes a `TraceState`.
 * `set` puts the entry leftmost (§3.5); `serialize` applies the 512-character rule.
 */
export class MeshTraceState implements TraceState {
  /** @internal keys and values, leftmost first */
  private constructor(
    private keys: readonly string[],
    private values: readonly string[],
    /** An inbound header not validated yet. */
    private raw?: unknown,
    /** Entries the parse dropped for repeating a key seen further left. */
    private repeated = 0,
  ) {}

  /** How many later entries repeating an earlier key the parse dropped (0 for a state built by `set`). */
  get duplicates(): number {
    this.load();
    return this.repeated;
  }

  private static readonly EMPTY = new MeshTraceState([], []);

  /** An empty tracestate, to `set` the service's own entry on. */
  static empty(): MeshTraceState {
    return MeshTraceState.EMPTY;
  }

  /**
   * An inbound header, validated on first use (a header that fails is dropped whole and counted
   * then), as OpenTelemetry's own `TraceState` parses on first use: a service that never reads or
   * forwards it pays nothing.
   * @internal
   */
  static inbound(raw: unknown): MeshTraceState {
    return new MeshTraceState(MeshTraceState.EMPTY.keys, MeshTraceState.EMPTY.values, raw);
  }

  /** @internal */
  static fromLists(keys: string[], values: string[], duplicates = 0): MeshTraceState {
    return keys.length === 0 ? MeshTraceState.EMPTY : new MeshTraceState(keys, values, undefined, duplicates);
  }

  private load(): void {
    const raw = this.raw;
    if (raw === undefined) return;
    this.raw = undefined;
    const parsed = parseTracestate(raw);
    if (parsed instanceof MeshTraceState) {
      this.keys = parsed.keys;
      this.values = parsed.values;
      this.repeated = parsed.repeated;
      if (parsed.repeated > 0) recordDropped('tracestate', 'duplicate-key', parsed.repeated, raw);
    } else if (parsed !== undefined) {
      recordDropped('tracestate', parsed, 1, raw);
    }
  }

  /** Number of entries. */
  get size(): number {
    this.load();
    return this.keys.length;
  }

  /** Returns a new state with `key=value` leftmost; throws nothing, ignores an invalid key or value. */
  set(key: string, value: string): MeshTraceState {
    if (typeof key !== 'string' || typeof value !== 'string') return this;
    if (!isValidKey(key, 0, key.length) || !isValidValue(value, 0, value.length)) return this;
    this.load();
    const keys = [key];
    const values = [value];
    for (let i = 0; i < this.keys.length && keys.length < MAX_TRACESTATE_MEMBERS; i++) {
      if (this.keys[i] === key) continue;
      keys.push(this.keys[i]);
      values.push(this.values[i]);
    }
    return new MeshTraceState(keys, values);
  }

  /** Returns a new state without `key`. */
  unset(key: string): MeshTraceState {
    this.load();
    const i = this.keys.indexOf(key);
    if (i < 0) return this;
    const keys = this.keys.slice();
    const values = this.values.slice();
    keys.splice(i, 1);
    values.splice(i, 1);
    return MeshTraceState.fromLists(keys, values);
  }

  /** The value for `key`, if any. */
  get(key: string): string | undefined {
    this.load();
    const i = this.keys.indexOf(key);
    return i < 0 ? undefined : this.values[i];
  }

  /** The header value, cut to 512 characters by dropping whole entries (§3.3.1.5). */
  serialize(): string {
    this.load();
    return serializeEntries(this.keys, this.values, MAX_TRACESTATE_LENGTH);
  }
}

function serializeEntries(keys: readonly string[], values: readonly string[], limit: number): string {
  const n = keys.length;
  let total = n > 0 ? n - 1 : 0;
  for (let i = 0; i < n; i++) total += keys[i].length + 1 + values[i].length;
  let keep: boolean[] | undefined;
  if (total > limit) {
    // Entries over 128 characters go first, then entries from the right.
    keep = new Array<boolean>(n).fill(true);
    for (let i = n - 1; i >= 0 && total > limit; i--) {
      const len = keys[i].length + 1 + values[i].length;
      if (len > LONG_ENTRY) {
        keep[i] = false;
        total -= len + 1;
      }
    }
    for (let i = n - 1; i >= 0 && total > limit; i--) {
      if (!keep[i]) continue;
      keep[i] = false;
      total -= keys[i].length + 2 + values[i].length;
    }
  }
  let out = '';
  for (let i = 0; i < n; i++) {
    if (keep && !keep[i]) continue;
    out += `${(out.length > 0 ? ',' : '') + keys[i]}=${values[i]}`;
  }
  return out;
}

/**
 * Parses a `tracestate` header (W3C trace-context-2 §3.3). Returns the state, `undefined` when the
 * header is absent or has no members, or the reason the whole header is dropped; never throws.
 * Several header lines are combined in order first, as RFC 9110 §5.3 says. A key repeated further
 * right drops that later entry only, counted in `duplicates`: only one entry per key is allowed and
 * the leftmost is the latest position (trace-context-2, "Combined Header Value").
 */
export function parseTracestate(value: unknown): MeshTraceState | TracestateReason | undefined {
  if (Array.isArray(value)) {
    if (value.length === 0) return undefined;
    for (const v of value) if (typeof v !== 'string') return 'bad-member';
    value = value.join(',');
  }
  if (typeof value !== 'string') return value === undefined || value === null ? undefined : 'bad-member';
  const s = value;
  const len = s.length;
  let keys: string[] | undefined;
  let values: string[] | undefined;
  let members = 0;
  let duplicates = 0;
  let start = 0;
  while (start <= len) {
    let end = s.indexOf(',', start);
    if (end < 0) end = len;
    let a = start;
    let b = end;
    while (a < b && isOws(s.charCodeAt(a))) a++;
    while (b > a && isOws(s.charCodeAt(b - 1))) b--;
    if (a < b) {
      const eq = s.indexOf('=', a);
      if (eq < 0 || eq >= b) return 'bad-member';
      if (!isValidKey(s, a, eq) || !isValidValue(s, eq + 1, b)) return 'bad-member';
      // The limit is on list members as received: a repeated key is still one of them.
      if (++members > MAX_TRACESTATE_MEMBERS) return 'too-many-members';
      const key = s.substring(a, eq);
      if (keys === undefined) {
        keys = [];
        values = [];
      } else if (keys.includes(key)) {
        duplicates++;
        start = end + 1;
        continue;
      }
      keys.push(key);
      values!.push(s.substring(eq + 1, b));
    }
    start = end + 1;
  }
  return keys === undefined ? undefined : MeshTraceState.fromLists(keys, values!, duplicates);
}

/**
 * The `tracestate` to send for any `TraceState`: ours as it is, anyone else's only if it parses
 * again under our rules, so nothing invalid is ever forwarded. Empty string when there is nothing.
 */
export function serializeTracestate(state: TraceState | undefined): string {
  if (state === undefined) return '';
  if (state instanceof MeshTraceState) return state.serialize();
  const parsed = parseTracestate(state.serialize());
  return parsed instanceof MeshTraceState ? parsed.serialize() : '';
}
