import type { Span } from '../model';
import type { SpanSource } from '../backends/source';
import type { SentProbe } from './send';

/** How long to look for a probe's spans. */
export interface WaitOptions {
  /** Give up this long after the request ended. */
  readonly waitMs: number;
  /** The spans are complete once none arrived for this long (exporters send in batches, each on its own timer). */
  readonly quietMs: number;
  /** The pause between two looks. */
  readonly pollMs: number;
}

/** What the source gave for one probe. */
export interface Collected {
  /** The probe's trace and every trace tied to it by the probe id, without duplicates. */
  readonly spans: Span[];
  /** Why the probe's trace could not be read; set, the spans are what arrived before. */
  readonly error: string | undefined;
  /** Why the search by probe id failed (traces the probe started elsewhere may be missing). */
  readonly searchError: string | undefined;
}

// Backends index by start time; this much slack covers clock skew between the probe and the services.
const SKEW_MS = 60_000;

/** Polls `source` for the spans of `sent` until they stop arriving (`quietMs`) or `waitMs` passes. */
export async function collectSpans(source: SpanSource, sent: SentProbe, options: WaitOptions): Promise<Collected> {
  const spans = new Map<string, Span>();
  const deadline = sent.endMs + options.waitMs;
  let lastNew = Date.now();
  let searchError: string | undefined;
  for (;;) {
    const window = { startMs: sent.startMs - SKEW_MS, endMs: Date.now() + SKEW_MS };
    const [trace, tied] = await Promise.allSettled([
      source.trace(sent.traceId, window),
      searchError === undefined ? source.probeTraces(sent.probeId, window) : Promise.resolve([]),
    ]);
    if (tied.status === 'rejected') searchError = message(tied.reason);
    if (trace.status === 'rejected') return { spans: [...spans.values()], error: message(trace.reason), searchError };
    for (const s of [...trace.value, ...(tied.status === 'fulfilled' ? tied.value : [])]) {
      const key = `${s.traceId}-${s.spanId}`;
      if (!spans.has(key)) {
        spans.set(key, s);
        lastNew = Date.now();
      }
    }
    const now = Date.now();
    if ((spans.size > 0 && now - lastNew >= options.quietMs) || now >= deadline)
      return { spans: [...spans.values()], error: undefined, searchError };
    await new Promise((resolve) => setTimeout(resolve, Math.min(options.pollMs, Math.max(0, deadline - now))));
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
