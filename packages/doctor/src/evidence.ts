import { ATTR } from './model';
import type { Span } from './model';

/*
 * The evidence model: what ties a span to a probe, and what ties a callee to its caller.
 *
 * A span is tied to a probe, strongest first, by:
 *   trace       it is in the probe's own trace (the trace id the probe sent);
 *   probe-id    it carries the probe id (`meshtrace.probe`, copied from baggage by meshtrace), or a span of
 *               its trace does;
 *   request-id  it carries the probe id as the captured `x-request-id`, or a span of its trace does.
 * A new root that started while a call the probe made went unanswered, with no trace context of its
 * own, is a suspect: tied by time alone, it is shown and never names a hop.
 *
 * A callee is tied to its caller, strongest first, by:
 *   parent-link the callee's span has the caller's span as parent (through any proxy spans between);
 *   peer        the caller's CLIENT span went to the authority (host:port, and path) the callee's SERVER
 *               span says it was called at, or a proxy's span at that authority passed it on.
 * Start times are never compared across services to name a hop: clocks of two hosts differ.
 */

/** How a span is tied to a probe; see the evidence model above. */
export type ProbeTie = 'trace' | 'probe-id' | 'request-id';

/** How a callee is tied to its caller; see the evidence model above. */
export type HopEvidence = 'parent-link' | 'peer';

const DEFAULT_PORT: Readonly<Record<string, number>> = { http: 80, https: 443, grpc: 80 };

/** A string attribute, or the single element of a one-element array (how captured headers are recorded). */
export function stringAttribute(span: Span, name: string): string | undefined {
  const value = span.attributes[name];
  if (typeof value === 'string') return value || undefined;
  if (Array.isArray(value) && value.length === 1 && typeof value[0] === 'string') return value[0] || undefined;
  return undefined;
}

function port(value: unknown): number | undefined {
  const n = typeof value === 'string' ? Number(value) : value;
  return typeof n === 'number' && Number.isInteger(n) && n > 0 && n < 65536 ? n : undefined;
}

/** `host:port` with the host lower-cased and IPv6 bracketed; `undefined` without a host. */
function authority(host: unknown, portValue: unknown, scheme: string | undefined): string | undefined {
  if (typeof host !== 'string' || host === '') return undefined;
  const h = host.toLowerCase();
  const p = port(portValue) ?? DEFAULT_PORT[scheme ?? 'http'];
  return `${h.includes(':') && !h.startsWith('[') ? `[${h}]` : h}:${p}`;
}

function fromUrl(value: unknown): { authority: string; path: string } | undefined {
  if (typeof value !== 'string') return undefined;
  try {
    const url = new URL(value);
    const scheme = url.protocol.slice(0, -1);
    return { authority: authority(url.hostname, url.port, scheme) ?? '', path: url.pathname };
  } catch {
    return undefined;
  }
}

/** `host:port` from a `Host`-style value (`orders:8080`, `[::1]:80`, `orders`). */
function fromHostHeader(value: unknown, scheme: string | undefined): string | undefined {
  if (typeof value !== 'string' || value === '') return undefined;
  const close = value.startsWith('[') ? value.indexOf(']') : -1;
  const colon = value.indexOf(':', close + 1);
  if (colon < 0) return authority(close > 0 ? value.slice(1, close) : value, undefined, scheme);
  return authority(close > 0 ? value.slice(1, close) : value.slice(0, colon), value.slice(colon + 1), scheme);
}

/**
 * The authority a SERVER span says it was called at: the `Host` its caller sent (`server.address` and
 * `server.port`; `http.host` or `net.host.*` in the older conventions). Proxies that keep `:authority`
 * (Envoy, Caddy) leave it as the caller wrote it, so it matches the caller's CLIENT span.
 */
export function calledAt(span: Span): string | undefined {
  const a = span.attributes;
  const scheme = typeof a['url.scheme'] === 'string' ? a['url.scheme'] : undefined;
  const oldScheme = typeof a['http.scheme'] === 'string' ? a['http.scheme'] : scheme;
  // Older conventions: `http.host` is the Host header, which may leave out the port that `net.host.port`
  // (the port the server listens on) then gives; OpenTelemetry Python's aiohttp server records it so.
  const host = typeof a['http.host'] === 'string' ? a['http.host'] : undefined;
  const hostOnly = host !== undefined && !/:\d+$/.test(host);
  return (
    authority(a['server.address'], a['server.port'], scheme) ??
    (hostOnly && port(a['net.host.port']) !== undefined
      ? authority(host.replace(/^\[|\]$/g, ''), a['net.host.port'], oldScheme)
      : fromHostHeader(host, oldScheme)) ??
    authority(a['net.host.name'], a['net.host.port'], scheme)
  );
}

/**
 * The authority a CLIENT span called: `server.address`/`server.port`, `url.full`, or the older `net.peer.*`/`http.url`.
 */
export function peerOf(span: Span): string | undefined {
  const a = span.attributes;
  const full = fromUrl(a['url.full']) ?? fromUrl(a['http.url']);
  const scheme = typeof a['url.scheme'] === 'string' ? a['url.scheme'] : undefined;
  return (
    authority(a['server.address'], a['server.port'] ?? full?.authority.split(':').pop(), scheme) ??
    (full?.authority || undefined) ??
    authority(a['net.peer.name'], a['net.peer.port'], scheme)
  );
}

/** The request path a span names: `url.path`, `http.target` without its query, or the path of `url.full`/`http.url`. */
export function pathOf(span: Span): string | undefined {
  const a = span.attributes;
  if (typeof a['url.path'] === 'string') return a['url.path'];
  if (typeof a['http.target'] === 'string') return a['http.target'].split('?')[0];
  return (fromUrl(a['url.full']) ?? fromUrl(a['http.url']))?.path;
}

/** Whether `span` carries `probeId` as the `meshtrace.probe` attribute (`probe-id`) or a captured `x-request-id`. */
export function probeTieOf(span: Span, probeId: string): ProbeTie | undefined {
  if (span.attributes[ATTR.probe] === probeId) return 'probe-id';
  const requestId = span.attributes[ATTR.requestId];
  if (requestId === probeId || (Array.isArray(requestId) && requestId.includes(probeId))) return 'request-id';
  return undefined;
}

const CALLEE_KINDS = new Set(['server', 'consumer']);
const CALLER_KINDS = new Set(['client', 'producer']);

/** Whether the span receives a call (SERVER, CONSUMER). */
export const isCallee = (span: Span): boolean => CALLEE_KINDS.has(span.kind);
/** Whether the span makes a call (CLIENT, PRODUCER). */
export const isCaller = (span: Span): boolean => CALLER_KINDS.has(span.kind);

const spanKey = (traceId: string, spanId: string): string => `${traceId}/${spanId}`;

/** Spans indexed by id and by parent, and which services are proxies. */
export class SpanGraph {
  private readonly byKey = new Map<string, Span>();
  private readonly kids = new Map<string, Span[]>();
  /** Services that pass calls on with spans of their own (a sidecar, an ingress). */
  readonly proxies: ReadonlySet<string>;

  /** `passedOn` names services known to be proxies from elsewhere (see {@link proxiesPassingOn}). */
  constructor(
    readonly spans: readonly Span[],
    passedOn: Iterable<string> = [],
  ) {
    for (const span of spans) this.byKey.set(spanKey(span.traceId, span.spanId), span);
    for (const span of spans) {
      if (span.parentSpanId === undefined) continue;
      const key = spanKey(span.traceId, span.parentSpanId);
      const list = this.kids.get(key);
      if (list === undefined) this.kids.set(key, [span]);
      else list.push(span);
    }
    const proxies = new Set<string>(passedOn);
    for (const span of spans) if (this.passesOn(span)) proxies.add(span.service);
    this.proxies = proxies;
  }

  /** The span's parent, when it arrived. */
  parent(span: Span): Span | undefined {
    return span.parentSpanId === undefined ? undefined : this.byKey.get(spanKey(span.traceId, span.parentSpanId));
  }

  /** The spans whose parent is `span`. */
  children(span: Span): readonly Span[] {
    return this.kids.get(spanKey(span.traceId, span.spanId)) ?? [];
  }

  /**
   * A proxy's span: one that marks itself as a proxy's (Envoy's `component: proxy`, `upstream_cluster`),
   * a SERVER span with a SERVER child in another service and no CLIENT span between (Caddy, an
   * inbound sidecar) unless meshtrace recorded an outcome on it, or a CLIENT span whose parent is a CLIENT span of
   * another service (an egress sidecar).
   */
  private passesOn(span: Span): boolean {
    // A span with a propagation outcome is meshtrace's, in an application.
    if (span.attributes[ATTR.outcome] !== undefined) return false;
    if (span.attributes.component === 'proxy' || span.attributes.upstream_cluster !== undefined) return true;
    if (span.kind === 'server')
      return this.children(span).some((c) => c.kind === 'server' && c.service !== span.service);
    if (span.kind === 'client') {
      const parent = this.parent(span);
      return parent !== undefined && parent.kind === 'client' && parent.service !== span.service;
    }
    return false;
  }

  /** Whether the span is a proxy's. */
  isProxy(span: Span): boolean {
    return this.proxies.has(span.service);
  }

  /**
   * From `span` up through proxy spans to the application span that made the call: that span (undefined
   * when the chain leaves the spans that arrived) and the proxies passed, caller side first.
   */
  callerOf(span: Span): { caller: Span | undefined; proxies: string[]; missingParent: string | undefined } {
    const proxies: string[] = [];
    let at = this.parent(span);
    let missingParent = at === undefined ? span.parentSpanId : undefined;
    while (at !== undefined && this.isProxy(at)) {
      if (!proxies.includes(at.service)) proxies.unshift(at.service);
      const next = this.parent(at);
      if (next === undefined) missingParent = at.parentSpanId;
      at = next;
    }
    return { caller: at, proxies, missingParent };
  }

  /** From a proxy span up to the application span that called through it, with the proxies passed. */
  applicationAbove(span: Span): { app: Span | undefined; proxies: string[] } {
    if (!this.isProxy(span)) return { app: span, proxies: [] };
    const { caller, proxies } = this.callerOf(span);
    return { app: caller, proxies: [...proxies, span.service] };
  }
}

/**
 * A span that made a call nothing recorded the other end of: a CLIENT span without a child, or a proxy's span without
 * one.
 */
export function isOpenCall(graph: SpanGraph, span: Span): boolean {
  if (graph.children(span).length > 0) return false;
  return isCaller(span) || (span.kind === 'server' && graph.isProxy(span));
}

/**
 * The authority an open call went to: a CLIENT span's peer, or (a proxy's SERVER span) the authority it was called at.
 */
export function openCallTarget(span: Span): string | undefined {
  return isCaller(span) ? peerOf(span) : calledAt(span);
}

/**
 * Whether the open call `call` went where the root `callee` says it was called: the same authority, and path when both
 * name one.
 */
export function peerMatches(call: Span, callee: Span): boolean {
  const target = openCallTarget(call);
  if (target === undefined || target !== calledAt(callee)) return false;
  const a = pathOf(call);
  const b = pathOf(callee);
  return a === undefined || b === undefined || a === b;
}

const HEALTH_PATHS = /^\/(healthz?|readyz?|livez?|ready|alive|ping|status|metrics)(\/|$)/i;
const HEALTH_AGENTS = /^(kube-probe|GoogleHC|ELB-HealthChecker|Consul Health Check|Envoy\/HC)/i;

/** Health-check traffic by its path or user agent: it never enters a verdict. */
export function isHealthCheck(span: Span): boolean {
  const path = pathOf(span);
  const agent = stringAttribute(span, 'user_agent.original') ?? stringAttribute(span, 'http.user_agent');
  return (path !== undefined && HEALTH_PATHS.test(path)) || (agent !== undefined && HEALTH_AGENTS.test(agent));
}

/**
 * Services whose leaf SERVER span was called at the same authority and path as a new root in another
 * service: a proxy that passed the call on without the trace (a sidecar that strips the headers).
 */
export function proxiesPassingOn(spans: readonly Span[], roots: readonly Span[]): Set<string> {
  const graph = new SpanGraph(spans);
  const out = new Set<string>();
  for (const leaf of spans) {
    if (leaf.kind !== 'server' || graph.children(leaf).length > 0 || out.has(leaf.service)) continue;
    if (roots.some((r) => r.service !== leaf.service && r.traceId !== leaf.traceId && peerMatches(leaf, r)))
      out.add(leaf.service);
  }
  return out;
}

/** What ties a trace to others besides parent links: the probe id, and the captured `x-request-id`. */
export const TRACE_KEYS = [
  ['probe-id', ATTR.probe],
  ['request-id', ATTR.requestId],
] as const;

/** The traces among `spans` carrying each key value, by `via` and the value joined with a NUL. */
export function tracesByKey(spans: readonly Span[]): Map<string, Set<string>> {
  const byKey = new Map<string, Set<string>>();
  for (const s of spans)
    for (const [via, name] of TRACE_KEYS) {
      const value = stringAttribute(s, name);
      if (value === undefined) continue;
      const key = `${via}\u0000${value}`;
      const traces = byKey.get(key) ?? new Set<string>();
      traces.add(s.traceId);
      byKey.set(key, traces);
    }
  return byKey;
}

/**
 * Whether a service's callee span began its trace: nothing above it but proxy spans, the top one a root. Behind a
 * tracing sidecar that nothing reached, the sidecar's span is the root and the service continued it.
 */
export function beganTrace(graph: SpanGraph, span: Span): boolean {
  if (!isCallee(span) || graph.isProxy(span)) return false;
  const above = graph.callerOf(span);
  return above.caller === undefined && above.missingParent === undefined;
}

/** Traces that came from elsewhere: a span's parent never arrived, or the trace began at one of `entry`. */
export function tracesFromElsewhere(graph: SpanGraph, entry: ReadonlySet<string>): Set<string> {
  const heads = new Set<string>();
  for (const s of graph.spans)
    if (
      (s.parentSpanId !== undefined && graph.parent(s) === undefined) ||
      (entry.has(s.service) && (s.parentSpanId === undefined || beganTrace(graph, s)))
    )
      heads.add(s.traceId);
  return heads;
}

/** The root spans among `spans` that started in `window`. */
export function rootsIn(spans: readonly Span[], window: { readonly startMs: number; readonly endMs: number }): Span[] {
  return spans.filter((s) => s.parentSpanId === undefined && s.startMs >= window.startMs && s.startMs <= window.endMs);
}

/**
 * The spans of those traces in `spans` that hold a span carrying `probeId`: a backend may ignore a filter it does not
 * know.
 */
export function tracesCarrying(spans: readonly Span[], probeId: string): Span[] {
  const traces = new Set(spans.filter((s) => probeTieOf(s, probeId) !== undefined).map((s) => s.traceId));
  return spans.filter((s) => traces.has(s.traceId));
}
