import type { AttributeValue, Attributes, Span } from '../model';

/** A trace no span arrived for during `quietMs`, with the spans the window holds of it. */
export interface QuietTrace {
  readonly traceId: string;
  readonly spans: readonly Span[];
}

/** The bounds of a {@link SpanWindow}. */
export interface SpanWindowLimits {
  /** Spans kept. */
  readonly maxSpans: number;
  /** Estimated bytes of heap the kept spans take (see {@link estimateSpanBytes}). */
  readonly maxBytes: number;
  /** Characters kept of a string attribute value (each string of an array too); the rest is cut on ingest. */
  readonly maxAttributeLength: number;
  readonly quietMs: number;
}

/** What one {@link SpanWindow.add} did with the spans it was given. */
export interface Added {
  /** The spans stored: neither already held nor repeated within the call. */
  readonly spans: readonly Span[];
  /** Spans with a trace id and span id the window already held. */
  readonly duplicates: number;
  /** Attribute values cut to `maxAttributeLength`. */
  readonly truncated: number;
}

interface TraceEntry {
  readonly spans: Span[];
  /** Span ids, once the trace is too long to search them one by one. */
  ids: Set<string> | undefined;
  bytes: number;
}

// Estimates of V8's heap, on 64-bit with pointer compression, measured on decoded OTLP spans: a span
// object with its status, three id strings, two numbers and its slot in the window; an attribute's
// property and value header; a string's header; a trace's entries in the window's maps.
const SPAN_BYTES = 400;
const ATTRIBUTE_BYTES = 40;
const STRING_BYTES = 16;
const TRACE_BYTES = 200;
/** Below this many spans a trace is searched for a span id; from it on, a Set answers. */
const LINEAR_IDS = 16;

// Any character past Latin-1 makes V8 store the whole string with two bytes a character.
const TWO_BYTE = /[\u0100-\uffff]/;

function stringBytes(value: string): number {
  return STRING_BYTES + (TWO_BYTE.test(value) ? 2 * value.length : value.length);
}

function valueBytes(value: AttributeValue): number {
  if (typeof value === 'string') return stringBytes(value);
  if (typeof value !== 'object') return 16;
  let bytes = 16 + 8 * value.length;
  for (const item of value) bytes += typeof item === 'string' ? stringBytes(item) : 0;
  return bytes;
}

/** Estimated bytes of `attributes` on the heap: keys are shared by V8, values are not. */
export function estimateAttributesBytes(attributes: Attributes): number {
  let bytes = 32;
  for (const key in attributes) bytes += ATTRIBUTE_BYTES + valueBytes(attributes[key]);
  return bytes;
}

/** Estimated bytes of one span on the heap, its resource (shared by the spans of one export) left out. */
export function estimateSpanBytes(span: Span): number {
  return (
    SPAN_BYTES +
    stringBytes(span.name) +
    stringBytes(span.service) +
    (span.status.message === undefined ? 0 : stringBytes(span.status.message)) +
    estimateAttributesBytes(span.attributes)
  );
}

/**
 * `value` cut to `max` characters, as a string of its own: a slice would keep the whole value alive.
 * A surrogate pair is never split.
 */
function cut(value: string, max: number): string {
  let end = max;
  const last = value.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return Buffer.from(value.slice(0, end), 'utf8').toString('utf8');
}

/**
 * `span` with its string attribute values cut to `max` characters, and how many were cut; the span itself when none
 * was.
 */
export function capAttributes(span: Span, max: number): { span: Span; truncated: number } {
  let truncated = 0;
  let capped: Record<string, AttributeValue> | undefined;
  const long = (v: unknown): v is string => typeof v === 'string' && v.length > max;
  for (const key in span.attributes) {
    const value = span.attributes[key];
    let next: AttributeValue;
    if (long(value)) {
      next = cut(value, max);
      truncated++;
    } else if (typeof value === 'object' && value.some(long)) {
      next = value.map((v) => (long(v) ? cut(v, max) : v));
      truncated += value.filter(long).length;
    } else continue;
    capped ??= { ...span.attributes };
    capped[key] = next;
  }
  return capped === undefined ? { span, truncated } : { span: { ...span, attributes: capped }, truncated };
}

/**
 * The recent spans by trace, at most `maxSpans` of them and about `maxBytes` of heap: the trace that
 * arrived first is evicted first. A span with the trace id and span id of one held is stored once
 * (exporters retry; forwarding receivers loop). A trace goes to `onQuiet` once no span of it arrived
 * for `quietMs`, and again if new spans come.
 */
export class SpanWindow {
  private readonly traces = new Map<string, TraceEntry>();
  /** Traces not yet handed on, by when their last span arrived (monotonic ms), oldest first. */
  private readonly pending = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  size = 0;
  bytes = 0;
  evictedSpans = 0;
  evictedTraces = 0;

  constructor(
    private readonly limits: SpanWindowLimits,
    private readonly onQuiet: (traces: QuietTrace[]) => void,
  ) {}

  get traceCount(): number {
    return this.traces.size;
  }

  /** Stores the spans not already held (attribute values capped), evicts the oldest traces past the bounds. */
  add(spans: readonly Span[]): Added {
    if (spans.length === 0) return { spans: [], duplicates: 0, truncated: 0 };
    const now = performance.now();
    const stored: Span[] = [];
    let duplicates = 0;
    let truncated = 0;
    // The spans of one export share its resource objects: each is charged once, to the first trace holding it.
    const charged = new Set<Attributes>();
    for (const received of spans) {
      let entry = this.traces.get(received.traceId);
      if (entry !== undefined && has(entry, received.spanId)) {
        duplicates++;
        continue;
      }
      const capped = capAttributes(received, this.limits.maxAttributeLength);
      const span = capped.span;
      truncated += capped.truncated;
      let bytes = estimateSpanBytes(span);
      if (!charged.has(span.resource)) {
        charged.add(span.resource);
        bytes += estimateAttributesBytes(span.resource);
      }
      if (entry === undefined) {
        entry = { spans: [], ids: undefined, bytes: TRACE_BYTES };
        this.traces.set(span.traceId, entry);
        this.bytes += TRACE_BYTES;
      }
      entry.spans.push(span);
      if (entry.ids !== undefined) entry.ids.add(span.spanId);
      else if (entry.spans.length >= LINEAR_IDS) entry.ids = new Set(entry.spans.map((s) => s.spanId));
      entry.bytes += bytes;
      this.bytes += bytes;
      this.size++;
      stored.push(span);
      // Delete and set again: Map order is insertion order, so `pending` stays sorted by arrival.
      this.pending.delete(span.traceId);
      this.pending.set(span.traceId, now);
    }
    // The first key of `traces` is the trace that arrived first.
    for (const [traceId, entry] of this.traces) {
      if (this.size <= this.limits.maxSpans && this.bytes <= this.limits.maxBytes) break;
      this.traces.delete(traceId);
      this.pending.delete(traceId);
      this.size -= entry.spans.length;
      this.bytes -= entry.bytes;
      this.evictedSpans += entry.spans.length;
      this.evictedTraces++;
    }
    if (this.pending.size > 0) this.timer ??= setTimeout(() => this.sweep(), this.limits.quietMs).unref();
    return { spans: stored, duplicates, truncated };
  }

  spans(): Span[] {
    const out: Span[] = [];
    for (const entry of this.traces.values()) for (const span of entry.spans) out.push(span);
    return out;
  }

  /** Hands on every trace that is not yet quiet. */
  flush(): void {
    this.emit(Infinity);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private sweep(): void {
    this.timer = undefined;
    const now = performance.now();
    const next = this.emit(now - this.limits.quietMs);
    if (next !== undefined)
      this.timer = setTimeout(() => this.sweep(), Math.max(1, next + this.limits.quietMs - now)).unref();
  }

  /**
   * Emits the pending traces whose last span arrived at or before `until`; returns the last arrival of the first one
   * left.
   */
  private emit(until: number): number | undefined {
    const out: QuietTrace[] = [];
    for (const [traceId, last] of this.pending) {
      if (last > until) {
        if (out.length > 0) this.onQuiet(out);
        return last;
      }
      this.pending.delete(traceId);
      out.push({ traceId, spans: [...this.traces.get(traceId)!.spans] });
    }
    if (out.length > 0) this.onQuiet(out);
    return undefined;
  }
}

function has(entry: TraceEntry, spanId: string): boolean {
  if (entry.ids !== undefined) return entry.ids.has(spanId);
  for (const span of entry.spans) if (span.spanId === spanId) return true;
  return false;
}
