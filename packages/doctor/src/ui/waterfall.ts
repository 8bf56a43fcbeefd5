import { groupTraces, outcomeText } from '../analyze';
import { peerOf } from '../evidence';
import type { Span, SpanKindName } from '../model';
import { traceHeadline, traceRows } from '../waterfall';
import type { HeadlineKind } from '../waterfall';

/*
 * The terminal waterfall (`waterfall.ts`) as data for the page: the same headline per trace and the same
 * columns per span (service indented under its parent, name, kind, outcome or callee, bar, duration).
 */

/** One span of a waterfall. */
export interface WaterfallRow {
  readonly depth: number;
  readonly service: string;
  readonly name: string;
  readonly kind: SpanKindName;
  readonly spanId: string;
  /** SERVER: its propagation outcome; CLIENT: `→ <address> <status>`. */
  readonly note: string;
  /** The outcome is not `continued`, or the span is an orphaned root. */
  readonly warn: boolean;
  readonly orphan: boolean;
  /** The bar, in percent of the time axis common to all the traces drawn. */
  readonly offset: number;
  readonly width: number;
  readonly durationMs: number;
}

/** One trace of a waterfall. */
export interface WaterfallTrace {
  readonly traceId: string;
  readonly headline: HeadlineKind;
  /** The headline in words, as the terminal prints it. */
  readonly text: string;
  readonly rows: readonly WaterfallRow[];
}

/** Most spans drawn of one trace: the page shows the first ones and says how many more. */
const MAX_ROWS = 200;

/**
 * The traces of `spans` as waterfalls, in the order of their first span, on one time axis; `orphans`
 * are the span ids of roots that broke a trace (their traces are headed as such).
 */
export function waterfall(spans: readonly Span[], orphans: ReadonlySet<string> = new Set()): WaterfallTrace[] {
  if (spans.length === 0) return [];
  let t0 = Number.POSITIVE_INFINITY;
  let t1 = Number.NEGATIVE_INFINITY;
  for (const s of spans) {
    t0 = Math.min(t0, s.startMs);
    t1 = Math.max(t1, s.endMs);
  }
  const total = Math.max(1e-6, t1 - t0);
  const pct = (ms: number): number => Math.round(Math.min(100, Math.max(0, (ms / total) * 100)) * 100) / 100;
  return groupTraces(spans).map((trace) => {
    const rows = traceRows(trace.spans).slice(0, MAX_ROWS);
    const top = rows[0].span;
    return {
      traceId: trace.traceId,
      ...traceHeadline(top, orphans.has(top.spanId)),
      rows: rows.map(({ depth, span }) => {
        const outcome = outcomeText(span);
        const status = span.attributes['http.response.status_code'];
        const peer = peerOf(span) ?? String(span.attributes['server.address'] ?? '?');
        const statusText = status === undefined ? '' : ` ${String(status)}`;
        const note = span.kind === 'server' ? outcome : `→ ${peer}${statusText}`;
        const orphan = orphans.has(span.spanId);
        const offset = pct(span.startMs - t0);
        return {
          depth,
          service: span.service,
          name: span.name,
          kind: span.kind,
          spanId: span.spanId,
          note,
          warn: orphan || (span.kind === 'server' && outcome !== '' && outcome !== 'continued'),
          orphan,
          offset,
          width: Math.max(0.5, Math.min(100 - offset, pct(span.endMs - span.startMs))),
          durationMs: Math.round((span.endMs - span.startMs) * 10) / 10,
        };
      }),
    };
  });
}
