import type { Span } from '../model';

/** A trace no span arrived for during `quietMs`, with the spans the window holds of it. */
export interface QuietTrace {
  readonly traceId: string;
  readonly spans: readonly Span[];
}

/**
 * The recent spans by trace, at most `maxSpans` of them: the trace that arrived first is evicted
 * first. A trace goes to `onQuiet` once no span of it arrived for `quietMs`, and again if more come.
 */
export class SpanWindow {
  private readonly traces = new Map<string, Span[]>();
  /** Traces not yet handed on, by when their last span arrived (monotonic ms), oldest first. */
  private readonly pending = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  size = 0;
  evictedSpans = 0;
  evictedTraces = 0;

  constructor(
    private readonly maxSpans: number,
    private readonly quietMs: number,
    private readonly onQuiet: (traces: QuietTrace[]) => void,
  ) {}

  get traceCount(): number {
    return this.traces.size;
  }

  add(spans: readonly Span[]): void {
    if (spans.length === 0) return;
    const now = performance.now();
    for (const span of spans) {
      const members = this.traces.get(span.traceId);
      if (members === undefined) this.traces.set(span.traceId, [span]);
      else members.push(span);
      // Delete and set again: Map order is insertion order, so `pending` stays sorted by arrival.
      this.pending.delete(span.traceId);
      this.pending.set(span.traceId, now);
    }
    this.size += spans.length;
    // The first key of `traces` is the trace that arrived first.
    for (const [traceId, members] of this.traces) {
      if (this.size <= this.maxSpans) break;
      this.traces.delete(traceId);
      this.pending.delete(traceId);
      this.size -= members.length;
      this.evictedSpans += members.length;
      this.evictedTraces++;
    }
    this.timer ??= setTimeout(() => this.sweep(), this.quietMs).unref();
  }

  spans(): Span[] {
    return [...this.traces.values()].flat();
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
    const next = this.emit(now - this.quietMs);
    if (next !== undefined) this.timer = setTimeout(() => this.sweep(), Math.max(1, next + this.quietMs - now)).unref();
  }

  /** Emits the pending traces whose last span arrived at or before `until`; returns the last arrival of the first one left. */
  private emit(until: number): number | undefined {
    const out: QuietTrace[] = [];
    for (const [traceId, last] of this.pending) {
      if (last > until) {
        if (out.length > 0) this.onQuiet(out);
        return last;
      }
      this.pending.delete(traceId);
      out.push({ traceId, spans: [...this.traces.get(traceId)!] });
    }
    if (out.length > 0) this.onQuiet(out);
    return undefined;
  }
}
