import { groupTraces, outcomeText } from './analyze';
import type { Orphan } from './analyze';
import type { Span } from './model';
import { palette } from './output';
import type { Palette, Paint } from './output';

/** How {@link renderTraces} draws. */
export interface WaterfallOptions {
  /** ANSI colours; only for a terminal (and not with `NO_COLOR`). */
  color: boolean;
  /** Total line width in columns. */
  width: number;
  /** The orphaned roots among the spans (from `findOrphans`): their traces are headed as broken. */
  orphans?: readonly Orphan[];
  /** Names what listens on a port, to say where a CLIENT span went. */
  describePort?: (port: number) => string | undefined;
}

function outcomePaint(p: Palette, outcome: string, orphan: boolean): Paint {
  if (orphan) return p.bad;
  if (outcome === 'continued') return p.good;
  return p.warn;
}

/** How a trace's first span came to be. */
export type HeadlineKind = 'continues' | 'parent-missing' | 'orphan' | 'edge';

/** A span of a trace and its depth under the trace's first span. */
export interface Row {
  readonly depth: number;
  readonly span: Span;
}

/** Depth-first, children in start order; spans whose parent is not in the set start a tree. */
export function traceRows(trace: readonly Span[]): Row[] {
  const ids = new Set(trace.map((s) => s.spanId));
  const children = new Map<string, Span[]>();
  const tops: Span[] = [];
  for (const span of trace) {
    const parent = span.parentSpanId;
    if (parent === undefined || !ids.has(parent)) tops.push(span);
    else children.set(parent, [...(children.get(parent) ?? []), span]);
  }
  const out: Row[] = [];
  const walk = (span: Span, depth: number): void => {
    out.push({ depth, span });
    for (const child of children.get(span.spanId) ?? []) walk(child, depth + 1);
  };
  for (const top of tops) walk(top, 0);
  return out;
}

/** What a trace's headline says of its first span, in words, for the terminal and the page alike. */
export function traceHeadline(top: Span, orphan: boolean): { readonly headline: HeadlineKind; readonly text: string } {
  const parent = top.parentSpanId;
  // OTLP does not say whether a parent was remote; a SERVER span's parent is its caller's span by definition.
  if (parent !== undefined)
    return top.kind === 'server'
      ? { headline: 'continues', text: `continues the caller's span ${parent}` }
      : { headline: 'parent-missing', text: `parent ${parent} was not recorded` };
  if (orphan)
    return {
      headline: 'orphan',
      text: `ORPHANED ROOT: ${top.service} started a new trace (${outcomeText(top) || 'no outcome'})`,
    };
  return { headline: 'edge', text: `new trace at the edge (${outcomeText(top) || 'no outcome'})` };
}

const HEADLINE_PAINT: Readonly<Record<HeadlineKind, keyof Palette | undefined>> = {
  continues: 'good',
  'parent-missing': undefined,
  orphan: 'bad',
  edge: 'warn',
};

function headline(p: Palette, traceId: string, top: Span, orphan: boolean): string {
  const { headline: kind, text } = traceHeadline(top, orphan);
  const paint = HEADLINE_PAINT[kind];
  return `${p.dim('trace')} ${traceId}  ${paint === undefined ? text : p[paint](text)}`;
}

function pad(text: string, width: number): string {
  return text.length >= width ? text : text + ' '.repeat(width - text.length);
}

/**
 * Draws spans as a terminal waterfall: a headline per trace, then one line per span, indented under
 * its parent, with service, span name, kind, the propagation outcome (SERVER) or the callee and
 * status (CLIENT), a bar on a time axis common to all the spans given, and the duration.
 */
export function renderTraces(spans: readonly Span[], options: WaterfallOptions): string[] {
  if (spans.length === 0) return ['(no spans)'];
  const p = palette(options.color);
  const orphans = new Set((options.orphans ?? []).map((o) => o.span));
  const traces = groupTraces(spans).map((t) => ({ id: t.traceId, rows: traceRows(t.spans) }));

  const t0 = Math.min(...spans.map((s) => s.startMs));
  const t1 = Math.max(...spans.map((s) => s.endMs));
  const note = (span: Span): string => {
    if (span.kind === 'server') return outcomeText(span);
    const port = Number(span.attributes['server.port']);
    const status = span.attributes['http.response.status_code'];
    const callee = options.describePort?.(port) ?? String(span.attributes['server.address'] ?? '?');
    return `→ ${callee}${status === undefined ? '' : ` ${String(status)}`}`;
  };
  const all = traces.flatMap((t) => t.rows);
  // Minimum widths fit the demo's three-hop traces, so the bars of successive waterfalls line up.
  const labelWidth = Math.max(20, ...all.map((r) => 2 * r.depth + r.span.service.length + 2));
  const nameWidth = Math.max(19, ...all.map((r) => r.span.name.length + 2));
  const noteWidth = Math.max(25, ...all.map((r) => note(r.span).length + 2));
  const fixed = 2 + labelWidth + nameWidth + 8 + noteWidth + 2 + 10;
  const barWidth = Math.max(12, Math.min(48, options.width - fixed));
  const total = Math.max(1e-6, t1 - t0);

  const lines: string[] = [];
  for (const trace of traces) {
    const top = trace.rows[0].span;
    lines.push(headline(p, trace.id, top, orphans.has(top)));
    for (const { depth, span } of trace.rows) {
      const orphan = orphans.has(span);
      const duration = span.endMs - span.startMs;
      const span0 = Math.min(barWidth - 1, Math.floor(((span.startMs - t0) / total) * barWidth));
      const length = Math.max(1, Math.min(barWidth - span0, Math.round((duration / total) * barWidth)));
      const bar = ' '.repeat(span0) + '█'.repeat(length) + ' '.repeat(barWidth - span0 - length);
      const text = note(span);
      const painted =
        span.kind === 'server' ? outcomePaint(p, text, orphan)(pad(text, noteWidth)) : p.dim(pad(text, noteWidth));
      const label = pad(' '.repeat(2 * depth) + span.service, labelWidth);
      const ms = `${duration.toFixed(1)} ms`.padStart(9);
      const columns = `${pad(span.name, nameWidth)}${pad(span.kind, 8)}${painted}`;
      lines.push(`  ${p.bold(label)}${columns}${p.dim('|')}${p.bar(bar)}${p.dim('|')}${ms}`);
    }
  }
  return lines;
}
