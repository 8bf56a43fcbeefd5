import { ATTR } from './model';
import type { Span } from './model';

/** One trace: its spans in start order. */
export interface Trace {
  readonly traceId: string;
  readonly spans: readonly Span[];
}

/** How an orphaned root was tied to its caller. */
export type OrphanVia = 'probe' | 'request-id' | 'client-span';

/** A root span started by a service that was called from inside another trace: where a trace broke. */
export interface Orphan {
  readonly span: Span;
  /** The caller's span: its CLIENT span whose child never arrived when there is one, else the caller's span that carries the same key. */
  readonly caller: Span | undefined;
  readonly via: OrphanVia | undefined;
  /** The hop the trace broke on; `from` is undefined when no caller was found. */
  readonly hop: { readonly from: string | undefined; readonly to: string };
}

/** Options of {@link findOrphans} and {@link summarize}. */
export interface AnalyzeOptions {
  /**
   * Services requests enter the mesh at: a root there is a new trace, not an orphan, unless it is
   * tied to a caller. A root anywhere else is an orphan even when no caller is found. Default: none,
   * so only roots tied to a caller count.
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

/** `continued`, `missing`, `malformed: bad-trace-id`… from the attributes meshtrace puts on a SERVER span; '' without them. */
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
    const counts = (out[span.service] ??= {});
    const text = outcomeText(span) || 'none';
    counts[text] = (counts[text] ?? 0) + 1;
  }
  return out;
}

/** A string attribute, or the single element of a one-element array (how captured headers are recorded). */
function key(span: Span, name: string): string | undefined {
  const value = span.attributes[name];
  if (typeof value === 'string') return value || undefined;
  if (Array.isArray(value) && value.length === 1 && typeof value[0] === 'string') return value[0] || undefined;
  return undefined;
}

/** The request path a span names: `url.path`, else the path of `url.full`. */
function pathOf(span: Span): string | undefined {
  const path = span.attributes['url.path'];
  if (typeof path === 'string') return path;
  const full = span.attributes['url.full'];
  if (typeof full !== 'string') return undefined;
  try {
    return new URL(full).pathname;
  } catch {
    return undefined;
  }
}

/** `host:port` a span names: `server.address`/`server.port`, else the authority of `url.full`. */
export function addressOf(span: Span): string | undefined {
  const host = span.attributes['server.address'];
  const port = span.attributes['server.port'];
  if (typeof host === 'string' && port !== undefined) return `${host}:${String(port)}`;
  const full = span.attributes['url.full'];
  if (typeof full !== 'string') return undefined;
  try {
    const url = new URL(full);
    return `${url.hostname}:${url.port || (url.protocol === 'https:' ? '443' : '80')}`;
  } catch {
    return undefined;
  }
}

const within = (orphan: Span, client: Span): boolean =>
  orphan.startMs >= client.startMs && orphan.startMs <= client.endMs;

/**
 * Roots that are orphans (see {@link AnalyzeOptions.entryServices}), each tied to its caller by, in
 * this order: the `meshtrace.probe` attribute, the recorded `x-request-id`, or a CLIENT span in
 * another trace to the same path (and address, or a time window holding the orphan's start, since
 * a sidecar between them changes the address) whose child never arrived. A CLIENT span is the
 * caller of one orphan at most.
 */
export function findOrphans(spans: readonly Span[], options: AnalyzeOptions = {}): Orphan[] {
  const entry = new Set(options.entryServices ?? []);
  const parents = new Set<string>();
  for (const span of spans) if (span.parentSpanId !== undefined) parents.add(span.parentSpanId);
  // Indexed once, so a window of many traces costs one pass, not one per root.
  const byProbe = new Map<string, Span[]>();
  const byRequestId = new Map<string, Span[]>();
  // CLIENT spans whose child never arrived, by path: where a call left a trace and nothing continued it.
  const open = new Map<string, Span[]>();
  const roots: Span[] = [];
  for (const span of spans) {
    add(byProbe, key(span, ATTR.probe), span);
    add(byRequestId, key(span, ATTR.requestId), span);
    if (span.kind === 'client' && !parents.has(span.spanId)) add(open, pathOf(span), span);
    if (span.parentSpanId === undefined) roots.push(span);
  }
  roots.sort((a, b) => a.startMs - b.startMs);
  const used = new Set<Span>();
  const openClients = (orphan: Span, fits: (client: Span) => boolean): Span[] =>
    (open.get(pathOf(orphan) ?? '') ?? []).filter((c) => c.traceId !== orphan.traceId && !used.has(c) && fits(c));

  /** The caller among spans of other traces that share the orphan's value of attribute `name`. */
  const byKey = (orphan: Span, index: Map<string, Span[]>, name: string): Span | undefined => {
    const sharing = (index.get(key(orphan, name) ?? '') ?? []).filter(
      (s) => s.traceId !== orphan.traceId && s.startMs < orphan.startMs,
    );
    if (sharing.length === 0) return undefined;
    const traces = new Set(sharing.map((s) => s.traceId));
    const client = best(
      orphan,
      openClients(orphan, (c) => traces.has(c.traceId) && within(orphan, c)),
    );
    // Without an open CLIENT span to the same path, the latest span of the caller's request that began before the orphan.
    return client ?? sharing.reduce((a, b) => (b.startMs > a.startMs ? b : a));
  };

  const byClient = (orphan: Span): Span | undefined => {
    const address = addressOf(orphan);
    return best(
      orphan,
      openClients(orphan, (c) => (address !== undefined && addressOf(c) === address) || within(orphan, c)),
    );
  };

  const orphans: Orphan[] = [];
  for (const root of roots) {
    let caller: Span | undefined;
    let via: OrphanVia | undefined;
    if ((caller = byKey(root, byProbe, ATTR.probe)) !== undefined) via = 'probe';
    else if ((caller = byKey(root, byRequestId, ATTR.requestId)) !== undefined) via = 'request-id';
    else if ((caller = byClient(root)) !== undefined) via = 'client-span';
    if (caller === undefined && (entry.size === 0 || entry.has(root.service))) continue;
    if (caller?.kind === 'client') used.add(caller);
    orphans.push({ span: root, caller, via, hop: { from: caller?.service, to: root.service } });
  }
  return orphans;
}

function add(index: Map<string, Span[]>, value: string | undefined, span: Span): void {
  if (value === undefined) return;
  const list = index.get(value);
  if (list === undefined) index.set(value, [span]);
  else list.push(span);
}

/** The candidate that holds the orphan's start and began last before it, else the one nearest in time. */
function best(orphan: Span, candidates: readonly Span[]): Span | undefined {
  let found: Span | undefined;
  let score = Infinity;
  for (const c of candidates) {
    const s = within(orphan, c) ? orphan.startMs - c.startMs : 1e12 + Math.abs(orphan.startMs - c.startMs);
    if (s < score) [found, score] = [c, s];
  }
  return found;
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
