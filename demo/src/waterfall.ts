import { SpanKind } from '@opentelemetry/api';
import type { HrTime } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { serviceOf } from './telemetry';

/** How {@link renderTraces} draws. */
export interface WaterfallOptions {
  /** ANSI colours; only for a terminal (and not with `NO_COLOR`). */
  color: boolean;
  /** Total line width in columns. */
  width: number;
  /** The service requests enter at: a root there is a new trace at the edge, anywhere else an orphaned root. */
  entryService: string;
  /** Names what listens on a port, to say where a CLIENT span went. */
  describePort?: (port: number) => string | undefined;
}

/** Counts over a set of spans. */
export interface TraceStats {
  readonly traces: number;
  readonly spans: number;
  /** Spans without a parent: new traces. */
  readonly roots: number;
  /** Roots started by a service other than the entry, which was called from inside a traced request: the break. */
  readonly orphanedRoots: number;
}

type Paint = (text: string) => string;
interface Palette {
  readonly dim: Paint;
  readonly bold: Paint;
  readonly good: Paint;
  readonly warn: Paint;
  readonly bad: Paint;
  readonly bar: Paint;
}

function palette(color: boolean): Palette {
  const sgr = (code: string): Paint => (color ? (text) => `\u001b[${code}m${text}\u001b[0m` : (text) => text);
  return { dim: sgr('2'), bold: sgr('1'), good: sgr('32'), warn: sgr('33'), bad: sgr('31'), bar: sgr('36') };
}

const ns = (t: HrTime): number => t[0] * 1e9 + t[1];
const ms = (t: HrTime): number => ns(t) / 1e6;

function isRoot(span: ReadableSpan): boolean {
  return span.parentSpanContext === undefined;
}

function isOrphan(span: ReadableSpan, entryService: string): boolean {
  return isRoot(span) && serviceOf(span) !== entryService;
}

/** Traces, roots and orphaned roots among `spans`. */
export function traceStats(spans: readonly ReadableSpan[], entryService: string): TraceStats {
  return {
    traces: new Set(spans.map((s) => s.spanContext().traceId)).size,
    spans: spans.length,
    roots: spans.filter(isRoot).length,
    orphanedRoots: spans.filter((s) => isOrphan(s, entryService)).length,
  };
}

/** `continued`, `missing`, `malformed: bad-trace-id`… from the attributes meshtrace puts on a SERVER span. */
export function outcomeText(span: ReadableSpan): string {
  const outcome = span.attributes['meshtrace.propagation.outcome'];
  const reason = span.attributes['meshtrace.propagation.reason'];
  if (outcome === undefined) return '';
  return reason === undefined ? String(outcome) : `${String(outcome)}: ${String(reason)}`;
}

function outcomePaint(p: Palette, outcome: string, orphan: boolean): Paint {
  if (orphan) return p.bad;
  if (outcome === 'continued') return p.good;
  return p.warn;
}

interface Row {
  readonly depth: number;
  readonly span: ReadableSpan;
}

/** Depth-first, children in start order; spans whose parent is not in the set start a tree. */
function rows(trace: readonly ReadableSpan[]): Row[] {
  const ids = new Set(trace.map((s) => s.spanContext().spanId));
  const children = new Map<string, ReadableSpan[]>();
  const tops: ReadableSpan[] = [];
  for (const span of [...trace].sort((a, b) => ns(a.startTime) - ns(b.startTime))) {
    const parent = span.parentSpanContext?.spanId;
    if (parent === undefined || !ids.has(parent)) tops.push(span);
    else children.set(parent, [...(children.get(parent) ?? []), span]);
  }
  const out: Row[] = [];
  const walk = (span: ReadableSpan, depth: number): void => {
    out.push({ depth, span });
    for (const child of children.get(span.spanContext().spanId) ?? []) walk(child, depth + 1);
  };
  for (const top of tops) walk(top, 0);
  return out;
}

function headline(p: Palette, traceId: string, top: ReadableSpan, entryService: string): string {
  const parent = top.parentSpanContext;
  const service = serviceOf(top);
  let what: string;
  if (parent !== undefined) what = parent.isRemote ? p.good(`continues the caller's span ${parent.spanId}`) : `parent ${parent.spanId} was not recorded`;
  else if (service !== entryService) what = p.bad(`ORPHANED ROOT: ${service} started a new trace (${outcomeText(top) || 'no outcome'})`);
  else what = p.warn(`new trace at the edge (${outcomeText(top) || 'no outcome'})`);
  return `${p.dim('trace')} ${traceId}  ${what}`;
}

function pad(text: string, width: number): string {
  return text.length >= width ? text : text + ' '.repeat(width - text.length);
}

/**
 * Draws spans as a terminal waterfall: a headline per trace, then one line per span, indented under
 * its parent, with service, span name, kind, the propagation outcome (SERVER) or the callee and
 * status (CLIENT), a bar on a time axis common to all the spans given, and the duration.
 */
export function renderTraces(spans: readonly ReadableSpan[], options: WaterfallOptions): string[] {
  if (spans.length === 0) return ['(no spans)'];
  const p = palette(options.color);
  const byTrace = new Map<string, ReadableSpan[]>();
  for (const span of spans) {
    const id = span.spanContext().traceId;
    byTrace.set(id, [...(byTrace.get(id) ?? []), span]);
  }
  const traces = [...byTrace.entries()].map(([id, members]) => ({ id, rows: rows(members) }));
  traces.sort((a, b) => ns(a.rows[0].span.startTime) - ns(b.rows[0].span.startTime));

  const t0 = Math.min(...spans.map((s) => ns(s.startTime)));
  const t1 = Math.max(...spans.map((s) => ns(s.endTime)));
  const note = (span: ReadableSpan): string => {
    if (span.kind === SpanKind.SERVER) return outcomeText(span);
    const port = Number(span.attributes['server.port']);
    const status = span.attributes['http.response.status_code'];
    const callee = options.describePort?.(port) ?? String(span.attributes['server.address'] ?? '?');
    return `→ ${callee}${status === undefined ? '' : ` ${String(status)}`}`;
  };
  const all = traces.flatMap((t) => t.rows);
  // Minimum widths fit this demo's three-hop traces, so the bars of successive waterfalls line up.
  const labelWidth = Math.max(20, ...all.map((r) => 2 * r.depth + serviceOf(r.span).length + 2));
  const nameWidth = Math.max(19, ...all.map((r) => r.span.name.length + 2));
  const noteWidth = Math.max(25, ...all.map((r) => note(r.span).length + 2));
  const fixed = 2 + labelWidth + nameWidth + 8 + noteWidth + 2 + 10;
  const barWidth = Math.max(12, Math.min(48, options.width - fixed));

  const lines: string[] = [];
  for (const trace of traces) {
    lines.push(headline(p, trace.id, trace.rows[0].span, options.entryService));
    for (const { depth, span } of trace.rows) {
      const orphan = isOrphan(span, options.entryService);
      const start = ns(span.startTime) - t0;
      const span0 = Math.min(barWidth - 1, Math.floor((start / Math.max(1, t1 - t0)) * barWidth));
      const length = Math.max(1, Math.min(barWidth - span0, Math.round((ns(span.duration) / Math.max(1, t1 - t0)) * barWidth)));
      const bar = ' '.repeat(span0) + '█'.repeat(length) + ' '.repeat(barWidth - span0 - length);
      const kind = span.kind === SpanKind.SERVER ? 'server' : span.kind === SpanKind.CLIENT ? 'client' : SpanKind[span.kind].toLowerCase();
      const text = note(span);
      const painted = span.kind === SpanKind.SERVER ? outcomePaint(p, text, orphan)(pad(text, noteWidth)) : p.dim(pad(text, noteWidth));
      const label = pad(' '.repeat(2 * depth) + serviceOf(span), labelWidth);
      const duration = `${ms(span.duration).toFixed(1)} ms`.padStart(9);
      lines.push(`  ${p.bold(label)}${pad(span.name, nameWidth)}${pad(kind, 8)}${painted}${p.dim('|')}${p.bar(bar)}${p.dim('|')}${duration}`);
    }
  }
  return lines;
}
