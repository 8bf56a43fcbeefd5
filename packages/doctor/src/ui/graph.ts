import { checkOptions } from '@meshtrace/core/adapter';
import { outcomeText } from '../analyze';
import {
  SpanGraph,
  TRACE_KEYS,
  calledAt,
  isCallee,
  isHealthCheck,
  isOpenCall,
  openCallTarget,
  pathOf,
  peerMatches,
  stringAttribute,
  tracesByKey,
  tracesFromElsewhere,
} from '../evidence';
import { ATTR } from '../model';
import { PACKAGE } from '../options';
import type { Span, SpanKindName } from '../model';

/*
 * The mesh map's model: who calls whom, and how each callee received the calls, from the same evidence
 * the probe's verdicts use (see `evidence.ts`), never from timing:
 *   parent-link  a span whose parent is a span of another service (a SERVER span under its caller's
 *                CLIENT span, or under a proxy's span: proxies that record spans are nodes of their own);
 *   peer         a new root called at the authority (and path) an unanswered call went to;
 *   probe-id / request-id   a new root that shares the probe id or `x-request-id` with a trace that came
 *                from elsewhere or entered at an entry service: the callee is known, its caller is not.
 * An unanswered call to an authority where no service records spans is an untraced peer.
 */

/** How a callee received a call: the propagation outcome it recorded, or what the spans show. */
export type CallState = 'continued' | 'missing' | 'malformed' | 'restarted' | 'new-trace' | 'unanswered' | 'untraced';

/** Every {@link CallState}, in the order a share bar shows them. */
export const CALL_STATES: readonly CallState[] = [
  'continued',
  'missing',
  'malformed',
  'restarted',
  'new-trace',
  'unanswered',
  'untraced',
];

/** The states in which the caller's trace did not reach the callee. */
export const LOST_STATES: ReadonlySet<CallState> = new Set([
  'missing',
  'malformed',
  'restarted',
  'new-trace',
  'unanswered',
]);

/** What ties an edge's two ends; `none` for an untraced peer, where only the caller's span exists. */
export type EdgeEvidence = 'parent-link' | 'peer' | 'probe-id' | 'request-id' | 'none';

/** What a node stands for. */
export type NodeKind = 'service' | 'proxy' | 'peer' | 'unknown';

/** A span named on the map. */
export interface MapSpanRef {
  readonly service: string;
  readonly kind: SpanKindName;
  readonly name: string;
  readonly traceId: string;
  readonly spanId: string;
}

/** One service (or proxy, untraced peer, or the callers no span names) on the map. */
export interface MapNode {
  readonly id: string;
  readonly kind: NodeKind;
  /** The service name, the peer's address, or `caller not recorded`. */
  readonly label: string;
  /** The value of the resource attribute the map is split by ('' when it is not split). */
  readonly group: string;
  /** SERVER and CONSUMER spans it recorded in the window (health checks left out). */
  readonly received: number;
  /** Of those, the ones whose caller is no span in the window: requests from outside, by state. */
  readonly entries: Readonly<Partial<Record<CallState, number>>>;
}

/** A call on an edge, with what ties it: shown when the edge is opened. */
export interface EdgeExample {
  readonly state: CallState;
  /** `continued`, `missing`, `malformed: bad-trace-id`… as the callee's span records it; '' without. */
  readonly outcome: string;
  readonly evidence: EdgeEvidence;
  /** The caller's span (a CLIENT span, or a proxy's); null when no span names the caller. */
  readonly caller: MapSpanRef | null;
  /** The callee's span; null when the callee recorded nothing. */
  readonly callee: MapSpanRef | null;
  /** The traces to draw: the caller's, then the callee's when it is another. */
  readonly traces: readonly string[];
  /** One sentence saying what ties the two ends. */
  readonly detail: string;
  /** When the call started (ms since the epoch), to keep the latest. */
  readonly startMs: number;
}

/** Caller → callee, with how the callee received the calls in the window. */
export interface MapEdge {
  readonly id: string;
  readonly from: string;
  readonly to: string;
  readonly calls: number;
  /** Calls by state; every state is there, 0 when none. */
  readonly states: Readonly<Record<CallState, number>>;
  /** Malformed and restarted calls by reason (`malformed: bad-trace-id` → 2). */
  readonly reasons: Readonly<Record<string, number>>;
  /** Calls by what tied them. */
  readonly evidence: Readonly<Partial<Record<EdgeEvidence, number>>>;
  /** Calls in a {@link LOST_STATES} state. */
  readonly lost: number;
  /** The latest continued call, and the latest that was not. */
  readonly whole: EdgeExample | null;
  readonly broken: EdgeExample | null;
}

/** The map of the spans given. */
export interface MeshMap {
  readonly nodes: readonly MapNode[];
  readonly edges: readonly MapEdge[];
  /** Spans read, and how many of them were health checks (left out). */
  readonly spans: number;
  readonly healthChecks: number;
  /** Nodes and edges left off past `maxNodes`, the least busy first. */
  readonly omitted: { readonly nodes: number; readonly edges: number };
  /** The resource attribute the map is split by, or null. */
  readonly by: string | null;
}

/** Options of {@link buildMap}; all optional. */
export interface MapOptions {
  /**
   * Services requests enter at: a new root there ties other roots by probe id or `x-request-id` (see `AnalyzeOptions`).
   */
  readonly entryServices?: readonly string[];
  /** A resource attribute that tells copies of a service apart (`service.namespace`, `deployment.environment.name`). */
  readonly by?: string;
  /** Most nodes kept; the least busy go first. Default 200. */
  readonly maxNodes?: number;
}

const DEFAULT_MAX_NODES = 200;
const UNKNOWN_LABEL = 'caller not recorded';

const ref = (s: Span): MapSpanRef => ({
  service: s.service,
  kind: s.kind,
  name: s.name,
  traceId: s.traceId,
  spanId: s.spanId,
});

/** The state a callee's span records: its meshtrace outcome, else what the link shows. */
export function callState(callee: Span, linked: boolean): CallState {
  const outcome = callee.attributes[ATTR.outcome];
  if (outcome === 'continued' || outcome === 'missing' || outcome === 'malformed') return outcome;
  if (outcome === 'restarted' || outcome === 'ignored') return 'restarted';
  return linked ? 'continued' : 'new-trace';
}

function groupOf(span: Span, by: string | undefined): string {
  if (by === undefined) return '';
  const v = span.resource[by];
  return v === undefined ? '' : Array.isArray(v) ? v.join(',') : String(v);
}

const nodeId = (kind: NodeKind, group: string, label: string): string => JSON.stringify([kind, group, label]);
const spanText = (s: Span): string => `${s.service}'s ${s.kind.toUpperCase()} span ${s.spanId}`;

interface EdgeAcc {
  id: string;
  from: string;
  to: string;
  calls: number;
  states: Record<CallState, number>;
  reasons: Record<string, number>;
  evidence: Partial<Record<EdgeEvidence, number>>;
  whole: EdgeExample | null;
  broken: EdgeExample | null;
}

interface NodeAcc {
  id: string;
  kind: NodeKind;
  label: string;
  group: string;
  received: number;
  entries: Partial<Record<CallState, number>>;
}

/**
 * The mesh map of `spans`: nodes for services (proxies marked), edges caller → callee with each call's
 * state and what tied it, and per edge the latest whole and broken call. Pure: the page's JSON.
 */
export function buildMap(spans: readonly Span[], options: MapOptions = {}): MeshMap {
  const by = options.by === undefined || options.by === '' ? undefined : options.by;
  checkOptions(PACKAGE, options, { maxNodes: 'positive integer' });
  const maxNodes = options.maxNodes ?? DEFAULT_MAX_NODES;
  const entry = new Set(options.entryServices ?? []);
  const health = new Set<Span>();
  for (const s of spans) if (isHealthCheck(s)) health.add(s);
  const kept = health.size === 0 ? spans : spans.filter((s) => !health.has(s));
  const graph = new SpanGraph(kept);

  const nodes = new Map<string, NodeAcc>();
  const node = (kind: NodeKind, group: string, label: string): NodeAcc => {
    const id = nodeId(kind, group, label);
    let n = nodes.get(id);
    if (n === undefined) {
      n = { id, kind, label, group, received: 0, entries: {} };
      nodes.set(id, n);
    }
    return n;
  };
  const serviceNode = (s: Span): NodeAcc =>
    node(graph.proxies.has(s.service) ? 'proxy' : 'service', groupOf(s, by), s.service);
  const edges = new Map<string, EdgeAcc>();
  const add = (from: NodeAcc, to: NodeAcc, example: EdgeExample, callee: Span | undefined): void => {
    const id = JSON.stringify([from.id, to.id]);
    let e = edges.get(id);
    if (e === undefined) {
      e = {
        id,
        from: from.id,
        to: to.id,
        calls: 0,
        states: Object.fromEntries(CALL_STATES.map((s) => [s, 0])) as Record<CallState, number>,
        reasons: {},
        evidence: {},
        whole: null,
        broken: null,
      };
      edges.set(id, e);
    }
    e.calls++;
    e.states[example.state]++;
    e.evidence[example.evidence] = (e.evidence[example.evidence] ?? 0) + 1;
    if (callee !== undefined && callee.attributes[ATTR.reason] !== undefined)
      e.reasons[example.outcome] = (e.reasons[example.outcome] ?? 0) + 1;
    const slot = example.state === 'continued' ? 'whole' : 'broken';
    const held = e[slot];
    if (held === null || example.startMs >= held.startMs) e[slot] = example;
  };
  const traces = (a: Span | undefined, b: Span | undefined): string[] => [
    ...new Set([a?.traceId, b?.traceId].filter((t): t is string => t !== undefined)),
  ];

  // Receiving spans: every callee's, and a proxy's CLIENT span under another service's call (an egress sidecar).
  const roots: Span[] = [];
  for (const span of kept) {
    const receiving = isCallee(span) || (span.kind === 'client' && graph.isProxy(span));
    if (!receiving) continue;
    const to = serviceNode(span);
    if (isCallee(span)) to.received++;
    const parent = graph.parent(span);
    if (parent !== undefined) {
      if (parent.service === span.service && groupOf(parent, by) === groupOf(span, by)) continue;
      const state = callState(span, true);
      add(
        serviceNode(parent),
        to,
        {
          state,
          outcome: outcomeText(span),
          evidence: 'parent-link',
          caller: ref(parent),
          callee: ref(span),
          traces: [span.traceId],
          detail: `${spanText(span)} has as parent ${spanText(parent)}, in trace ${span.traceId}`,
          startMs: span.startMs,
        },
        span,
      );
    } else if (span.parentSpanId !== undefined) {
      // Its caller's span is not here: a caller outside the mesh, or one that exports elsewhere.
      const state = callState(span, true);
      to.entries[state] = (to.entries[state] ?? 0) + 1;
    } else if (isCallee(span)) {
      // A root, a proxy's among them: a tracing sidecar nothing reached starts the trace its service continues.
      roots.push(span);
    } else {
      const state = callState(span, false);
      to.entries[state] = (to.entries[state] ?? 0) + 1;
    }
  }

  // Peer ties: a root where an unanswered call in another trace went (as `findOrphans` ties them), by an index of the
  // calls' targets.
  const open = kept.filter((s) => isOpenCall(graph, s));
  const byTarget = new Map<string, Span[]>();
  for (const call of open) {
    const target = openCallTarget(call);
    if (target === undefined) continue;
    const list = byTarget.get(target);
    if (list === undefined) byTarget.set(target, [call]);
    else list.push(call);
  }
  const used = new Set<Span>();
  const untied: Span[] = [];
  for (const root of roots) {
    const at = calledAt(root);
    const calls = (at === undefined ? [] : (byTarget.get(at) ?? [])).filter(
      (c) => c.traceId !== root.traceId && peerMatches(c, root),
    );
    const call = calls.find((c) => !used.has(c)) ?? calls[0];
    if (call === undefined) {
      untied.push(root);
      continue;
    }
    used.add(call);
    const state = callState(root, false);
    const path = pathOf(call);
    const calledText = `${spanText(call)} called ${openCallTarget(call)}${path ?? ''}`;
    const calleeText = `${spanText(root)} was called at ${at}${pathOf(root) ?? ''}`;
    const outcome = outcomeText(root) || 'no outcome recorded';
    add(
      serviceNode(call),
      serviceNode(root),
      {
        state,
        outcome: outcomeText(root),
        evidence: 'peer',
        caller: ref(call),
        callee: ref(root),
        traces: traces(call, root),
        detail: `${calledText}, and ${calleeText}; it started trace ${root.traceId} (${outcome})`,
        startMs: call.startMs,
      },
      root,
    );
  }

  // Key ties: a root sharing the probe id or x-request-id with a trace that came from elsewhere, or entered at an entry
  // service.
  const heads = tracesFromElsewhere(graph, entry);
  const keyed = tracesByKey(kept);
  for (const root of untied) {
    let tied = false;
    if (!entry.has(root.service))
      for (const [via, name] of TRACE_KEYS) {
        const value = stringAttribute(root, name);
        const set = value === undefined ? undefined : keyed.get(`${via}\u0000${value}`);
        const head = set === undefined ? undefined : [...set].find((t) => t !== root.traceId && heads.has(t));
        if (head === undefined) continue;
        const state = callState(root, false);
        const keyName = via === 'probe-id' ? 'the probe id' : 'x-request-id';
        const outcomeNote = outcomeText(root) || 'no outcome recorded';
        const started = `${spanText(root)} started trace ${root.traceId} (${outcomeNote})`;
        const shares = `it shares ${keyName} ${value} with trace ${head}`;
        const origin = 'which came from elsewhere or entered at an entry service';
        add(
          node('unknown', groupOf(root, by), UNKNOWN_LABEL),
          serviceNode(root),
          {
            state,
            outcome: outcomeText(root),
            evidence: via,
            caller: null,
            callee: ref(root),
            traces: [head, root.traceId],
            detail: `${started}; ${shares}, ${origin}; no recorded call names its caller`,
            startMs: root.startMs,
          },
          root,
        );
        tied = true;
        break;
      }
    if (!tied) {
      const state = callState(root, false);
      const n = serviceNode(root);
      n.entries[state] = (n.entries[state] ?? 0) + 1;
    }
  }

  // Calls nothing answered: to a service that records spans elsewhere (unanswered), or to an untraced peer.
  const tracedAt = new Map<string, Span>();
  for (const s of kept) {
    const at = isCallee(s) ? calledAt(s) : undefined;
    if (at !== undefined && !tracedAt.has(`${groupOf(s, by)}\u0000${at}`))
      tracedAt.set(`${groupOf(s, by)}\u0000${at}`, s);
  }
  for (const call of open) {
    if (used.has(call)) continue;
    const target = openCallTarget(call);
    const path = pathOf(call) ?? '';
    const known = target === undefined ? undefined : tracedAt.get(`${groupOf(call, by)}\u0000${target}`);
    const where = target ?? 'an unrecorded address';
    const unanswered = 'none of its spans in the window answers this call: sampled out, dropped, or not exported yet';
    const untraced = 'the peer exports no spans (outside the mesh, or not instrumented)';
    if (known !== undefined)
      add(
        serviceNode(call),
        serviceNode(known),
        {
          state: 'unanswered',
          outcome: '',
          evidence: 'peer',
          caller: ref(call),
          callee: null,
          traces: [call.traceId],
          detail: `${spanText(call)} called ${where}${path}, where ${known.service} records spans, but ${unanswered}`,
          startMs: call.startMs,
        },
        undefined,
      );
    else
      add(
        serviceNode(call),
        node('peer', groupOf(call, by), where),
        {
          state: 'untraced',
          outcome: '',
          evidence: 'none',
          caller: ref(call),
          callee: null,
          traces: [call.traceId],
          detail: `${spanText(call)} called ${where}${path}; no span in the window was called there: ${untraced}`,
          startMs: call.startMs,
        },
        undefined,
      );
  }

  return bound(
    [...nodes.values()],
    [...edges.values()].map((e) => ({ ...e, lost: lostOf(e.states) })),
    maxNodes,
    { spans: spans.length, healthChecks: health.size, by: by ?? null },
  );
}

function lostOf(states: Readonly<Record<CallState, number>>): number {
  let n = 0;
  for (const s of LOST_STATES) n += states[s];
  return n;
}

/** Keeps the `maxNodes` busiest nodes and the edges between them, in a stable order. */
function bound(
  nodes: NodeAcc[],
  edges: MapEdge[],
  maxNodes: number,
  rest: { spans: number; healthChecks: number; by: string | null },
): MeshMap {
  const traffic = new Map<string, number>(nodes.map((n) => [n.id, n.received]));
  for (const e of edges) {
    traffic.set(e.from, (traffic.get(e.from) ?? 0) + e.calls);
    traffic.set(e.to, (traffic.get(e.to) ?? 0) + e.calls);
  }
  const byName = (a: NodeAcc, b: NodeAcc): number =>
    a.group.localeCompare(b.group) || a.label.localeCompare(b.label) || a.kind.localeCompare(b.kind);
  let keptNodes = nodes;
  if (nodes.length > maxNodes)
    keptNodes = [...nodes].sort((a, b) => traffic.get(b.id)! - traffic.get(a.id)! || byName(a, b)).slice(0, maxNodes);
  const ids = new Set(keptNodes.map((n) => n.id));
  const keptEdges = edges.filter((e) => ids.has(e.from) && ids.has(e.to));
  return {
    nodes: [...keptNodes].sort(byName),
    edges: keptEdges.sort((a, b) => a.id.localeCompare(b.id)),
    omitted: { nodes: nodes.length - keptNodes.length, edges: edges.length - keptEdges.length },
    ...rest,
  };
}

/** The resource attributes a map could be split by: those that take more than one value among the services. */
export function splitCandidates(spans: readonly Span[], max = 20): string[] {
  const values = new Map<string, Set<string>>();
  const seen = new Set<unknown>();
  for (const s of spans) {
    // Spans of one export share their resource object: look at each once.
    if (seen.has(s.resource)) continue;
    seen.add(s.resource);
    for (const [key, v] of Object.entries(s.resource)) {
      if (key === 'service.name' || key.startsWith('telemetry.') || key.startsWith('process.')) continue;
      const set = values.get(key) ?? new Set<string>();
      if (set.size <= 64) set.add(String(v));
      values.set(key, set);
    }
    if (values.size > 200) break;
  }
  return [...values]
    .filter(([, set]) => set.size > 1)
    .map(([key]) => key)
    .sort()
    .slice(0, max);
}
