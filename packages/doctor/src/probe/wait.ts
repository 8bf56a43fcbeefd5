import type { SpanSource } from '../backends/source';
import { calledAt } from '../evidence';
import type { Span } from '../model';
import type { SentProbe } from './send';

/** How long to look for a probe's spans. */
export interface WaitOptions {
  /** Give up this long after the request ended. */
  readonly waitMs: number;
  /**
   * The services' exporter batch delay (`OTEL_BSP_SCHEDULE_DELAY`, 5000 ms by default): once the entry's
   * span is in, the spans are complete when none changed for longer than this.
   */
  readonly batchDelayMs: number;
  /** The pause between two looks. */
  readonly pollMs: number;
}

/** What the source gave for one probe. */
export interface Collected {
  /** The probe's trace and every trace tied to it by the probe id, without duplicates. */
  readonly spans: Span[];
  /** New roots around the probe, for suspects; empty when the source cannot list them. */
  readonly recentRoots: Span[];
  /** The entry's span arrived and then nothing changed for longer than the batch delay. */
  readonly settled: boolean;
  /** What was waited for, in words. */
  readonly waited: string;
  /** Why the probe's trace could not be read; set, the spans are what arrived before. */
  readonly error: string | undefined;
  /** Why the search by probe id failed (traces the probe started elsewhere may be missing). */
  readonly searchError: string | undefined;
}

// Backends index by start time; this much slack covers clock skew between the probe and the services.
const SKEW_MS = 60_000;
// What an export takes beyond the batch delay: the request, and the backend's ingestion.
const EXPORT_MS = 500;
/**
 * Reads in a row that may fail before the probe gives up on a backend that never answered. Once one read has
 * answered, a failed read (a query timed out under load, the backend restarting) is tried again until the wait
 * ends: a moment's failure does not decide the verdict.
 */
const FIRST_READS = 3;

/**
 * Whether the entry's span is among `spans`: the probe's trace continued there, or (nothing of that trace in) a root at
 * the URL.
 */
export function hasEntry(sent: SentProbe, spans: readonly Span[]): boolean {
  if (spans.some((s) => s.traceId === sent.traceId && s.parentSpanId === sent.parentSpanId)) return true;
  if (spans.some((s) => s.traceId === sent.traceId)) return false;
  let at: string | undefined;
  try {
    const url = new URL(sent.url);
    at = `${url.hostname.toLowerCase()}:${url.port || (url.protocol === 'https:' ? '443' : '80')}`;
  } catch {
    return false;
  }
  return spans.some((s) => s.parentSpanId === undefined && calledAt(s) === at);
}

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
const times = (n: number): string => `${n} time${n === 1 ? '' : 's'}`;

/**
 * Polls `source` for the spans of `sent` until the entry's span has arrived and no span changed for
 * longer than the batch delay, or `waitMs` passes.
 */
export async function collectSpans(source: SpanSource, sent: SentProbe, options: WaitOptions): Promise<Collected> {
  const spans = new Map<string, Span>();
  const deadline = sent.endMs + options.waitMs;
  const settleMs = options.batchDelayMs + EXPORT_MS;
  const begun = Date.now();
  let lastChange = begun;
  let entryAt: number | undefined;
  let searchError: string | undefined;
  let error: string | undefined;
  let answered = false;
  let failedInRow = 0;
  // A search that keeps failing (a backend that cannot search) is left alone after a few tries.
  let searchFailedInRow = 0;
  let settled = false;
  const pause = (now: number): Promise<void> =>
    new Promise((resolve) => setTimeout(resolve, Math.min(options.pollMs, Math.max(0, deadline - now))));
  for (;;) {
    const window = { startMs: sent.startMs - SKEW_MS, endMs: Date.now() + SKEW_MS };
    const [trace, tied] = await Promise.allSettled([
      source.trace(sent.traceId, window),
      searchFailedInRow < FIRST_READS ? source.probeTraces(sent.probeId, window) : Promise.resolve([]),
    ]);
    if (tied.status === 'rejected') {
      searchError = message(tied.reason);
      searchFailedInRow++;
    } else if (searchFailedInRow < FIRST_READS) {
      searchError = undefined;
      searchFailedInRow = 0;
    }
    if (trace.status === 'rejected') {
      error = message(trace.reason);
      failedInRow++;
      const now = Date.now();
      if ((!answered && failedInRow >= FIRST_READS) || now >= deadline) break;
      await pause(now);
      continue;
    }
    answered = true;
    failedInRow = 0;
    error = undefined;
    for (const s of [...trace.value, ...(tied.status === 'fulfilled' ? tied.value : [])]) {
      const key = `${s.traceId}-${s.spanId}`;
      if (!spans.has(key)) {
        spans.set(key, s);
        lastChange = Date.now();
      }
    }
    const now = Date.now();
    if (entryAt === undefined && hasEntry(sent, [...spans.values()])) entryAt = now;
    if (entryAt !== undefined && now - lastChange > settleMs) {
      settled = true;
      break;
    }
    if (now >= deadline) break;
    await pause(now);
  }
  const end = Date.now();
  let recentRoots: Span[] = [];
  if (error === undefined && source.recentRoots !== undefined) {
    for (let attempt = 1; ; attempt++) {
      try {
        recentRoots = await source.recentRoots({ startMs: sent.startMs - SKEW_MS, endMs: end + SKEW_MS });
        break;
      } catch (err) {
        if (attempt < FIRST_READS) {
          await new Promise((resolve) => setTimeout(resolve, options.pollMs));
          continue;
        }
        searchError ??= message(err);
        break;
      }
    }
  }
  const hint = `--batch-delay ${options.batchDelayMs} ms; set it to the services' OTEL_BSP_SCHEDULE_DELAY to wait less`;
  const quiet = `then no span changed for ${seconds(settleMs)}, longer than the exporters' batch delay (${hint})`;
  const waited =
    error !== undefined
      ? `stopped after ${seconds(end - begun)}: reading spans failed ${times(failedInRow)} in a row`
      : settled
        ? `waited ${seconds(end - begun)}: the entry's span arrived after ${seconds(entryAt! - begun)}, ${quiet}`
        : entryAt === undefined
          ? `waited ${seconds(end - begun)} (--wait ${options.waitMs} ms) and the entry's span never arrived`
          : `waited ${seconds(end - begun)} (--wait ${options.waitMs} ms); spans were still changing (${hint})`;
  return { spans: [...spans.values()], recentRoots, settled, waited, error, searchError };
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
