import {
  SpanGraph,
  TRACE_KEYS,
  beganTrace,
  isOpenCall,
  peerMatches,
  stringAttribute,
  tracesByKey,
  tracesFromElsewhere,
} from './evidence';
import { ATTR } from './model';
import type { Span } from './model';

/** One trace: its spans in start order. */
export interface Trace {
  readonly traceId: string;
  readonly spans: readonly Span[];
}

/**
 * What tied an orphaned root: a call to where it was called (`peer`), or a key it shares with the trace it broke from.
 */
export type OrphanVia = 'peer' | 'probe-id' | 'request-id';

/** A new trace started by a service that was called from inside another trace: where a trace broke. */
export interface Orphan {
  /**
   * The service's span that began the new trace: a root, or the first span under the proxy spans (a tracing sidecar
   * nothing reached) that started it.
   */
  readonly span: Span;
  /** The call that reached it (a CLIENT span, or a proxy's span): set only when its peer address ties them. */
  readonly caller: Span | undefined;
  readonly via: OrphanVia;
  /** The hop the trace broke on; `from` is undefined when no call ties a caller. */
  readonly hop: { readonly from: string | undefined; readonly to: string };
}

/** Options of {@link findOrphans} and {@link summarize}. */
export interface AnalyzeOptions {
  /**
   * Services requests enter the mesh at: a root there is a new trace, not an orphan, unless a call ties it
   * to a caller, and a trace that entered there ties the roots sharing its probe id or `x-request-id`.
   * Default: none, so only roots tied to a caller, or to a trace continued from outside, count.
   */
  readonly entryServices?: readonly string[];
}

/** What a set of spans says: counts, orphans with their hops, outcomes. */
export interface Summary {
  readonly traces: number;
  readonly spans: number;
  /** Spans without a parent. */
  readonly roots: number;
  readonly orphans: readonly Orphan[];
  /** Orphaned roots by the service that started them. */
  readonly orphansByService: Readonly<Record<string, number>>;
  /** Each hop orphans hang off, most frequent first. */
  readonly hops: ReadonlyArray<{ readonly from: string | undefined; readonly to: string; readonly count: number }>;
  /** Per service, how many SERVER spans had each propagation outcome (see {@link outcomeText}). */
  readonly outcomes: Readonly<Record<string, Readonly<Record<string, number>>>>;
}

/** The spans grouped by trace id, each trace in start order, traces in order of their first span. */
export function groupTraces(spans: readonly Span[]): Trace[] {
  const byTrace = new Map<string, Span[]>();
  for (const span of spans) {
    const members = byTrace.get(span.traceId);
    if (members === undefined) byTrace.set(span.traceId, [span]);
    else members.push(span);
  }
  const traces = [...byTrace].map(([traceId, members]) => ({
    traceId,
    spans: members.sort((a, b) => a.startMs - b.startMs),
  }));
  return traces.sort((a, b) => a.spans[0].startMs - b.spans[0].startMs);
}

/**
 * `continued`, `missing`, `malformed: bad-trace-id`… from the attributes meshtrace puts on a SERVER span; '' without
 * them.
 */
export function outcomeText(span: Span): string {
  const outcome = span.attributes[ATTR.outcome];
  const reason = span.attributes[ATTR.reason];
  if (outcome === undefined) return '';
  return reason === undefined ? String(outcome) : `${String(outcome)}: ${String(reason)}`;
}

/** Per service, how many SERVER spans had each propagation outcome (`none` for spans without one). */
export function outcomesByService(spans: readonly Span[]): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const span of spans) {
    if (span.kind !== 'server') continue;
    out[span.service] ??= {};
    const counts = out[span.service];
    const text = outcomeText(span) || 'none';
    counts[text] = (counts[text] ?? 0) + 1;
  }
  return out;
}

/**
 * New traces that are orphans, each tied by evidence (see the evidence model in `evidence.ts`): a service's
 * span that began a trace (a root, or under the proxy spans that started it) at the address an unanswered
 * call in another trace went to (`peer`, which also names the caller), or one in a trace that shares the
 * probe id or `x-request-id` with a trace that came from elsewhere (its top span's parent is not among the
 * spans) or entered at one of `entryServices`. Start times are never compared: a group of traces with a
 * shared key and no such evidence is left out.
 */
export function findOrphans(spans: readonly Span[], options: AnalyzeOptions = {}): Orphan[] {
  const entry = new Set(options.entryServices ?? []);
  const graph = new SpanGraph(spans);
  const open = spans.filter((s) => isOpenCall(graph, s));
  const roots = spans.filter((s) => beganTrace(graph, s));
  const heads = tracesFromElsewhere(graph, entry);
  const byKey = tracesByKey(spans);
  const used = new Set<Span>();
  const orphans: Orphan[] = [];
  for (const root of roots) {
    const calls = open.filter((c) => c.traceId !== root.traceId && peerMatches(c, root));
    const call = calls.find((c) => !used.has(c)) ?? calls[0];
    if (call !== undefined) {
      used.add(call);
      const from = graph.applicationAbove(call).app?.service ?? call.service;
      orphans.push({ span: root, caller: call, via: 'peer', hop: { from, to: root.service } });
      continue;
    }
    if (entry.has(root.service)) continue;
    for (const [via, name] of TRACE_KEYS) {
      const value = stringAttribute(root, name);
      const traces = value === undefined ? undefined : byKey.get(`${via}\u0000${value}`);
      if (traces === undefined || ![...traces].some((t) => t !== root.traceId && heads.has(t))) continue;
      orphans.push({ span: root, caller: undefined, via, hop: { from: undefined, to: root.service } });
      break;
    }
  }
  return orphans;
}

/** Traces, roots, orphans per service and hop, and outcomes per service among `spans`. */
export function summarize(spans: readonly Span[], options: AnalyzeOptions = {}): Summary {
  const orphans = findOrphans(spans, options);
  const orphansByService: Record<string, number> = {};
  const hops = new Map<string, { from: string | undefined; to: string; count: number }>();
  for (const o of orphans) {
    orphansByService[o.hop.to] = (orphansByService[o.hop.to] ?? 0) + 1;
    const id = `${o.hop.from ?? ''}\u0000${o.hop.to}`;
    const hop = hops.get(id) ?? { ...o.hop, count: 0 };
    hop.count++;
    hops.set(id, hop);
  }
  return {
    traces: new Set(spans.map((s) => s.traceId)).size,
    spans: spans.length,
    roots: spans.filter((s) => s.parentSpanId === undefined).length,
    orphans,
    orphansByService,
    hops: [...hops.values()].sort((a, b) => b.count - a.count),
    outcomes: outcomesByService(spans),
  };
}
