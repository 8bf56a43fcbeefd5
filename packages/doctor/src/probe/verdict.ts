import { outcomeText } from '../analyze';
import {
  SpanGraph,
  calledAt,
  isCallee,
  isCaller,
  isHealthCheck,
  isOpenCall,
  openCallTarget,
  pathOf,
  peerMatches,
  probeTieOf,
  proxiesPassingOn,
} from '../evidence';
import type { HopEvidence, ProbeTie } from '../evidence';
import { ATTR } from '../model';
import type { Span, SpanKindName } from '../model';
import type { SentProbe } from './send';

/**
 * whole: one unbroken trace; broken: a hop lost it; unknown: the spans cannot tell; incomplete: spans may still come.
 */
export type VerdictKind = 'whole' | 'broken' | 'unknown' | 'incomplete';

/** A span named in a verdict. */
export interface SpanRef {
  readonly service: string;
  readonly kind: SpanKindName;
  readonly name: string;
  readonly traceId: string;
  readonly spanId: string;
}

/** One call between two application services, as the spans show it. */
export interface Hop {
  /** The caller's service; `probe` for the entry; null when no evidence ties a caller. */
  readonly from: string | null;
  /** The callee's service, or the address called when it recorded nothing. */
  readonly to: string;
  /** Services that recorded spans of their own between the two (sidecars, ingresses), caller side first. */
  readonly proxies: readonly string[];
  /** What ties the two ends; null when nothing does. */
  readonly evidence: HopEvidence | null;
  /**
   * continued: the callee continued the caller's trace; broken: it started another, or recorded nothing
   * though it is in the mesh; untraced: the peer exports nothing (a dependency outside the mesh);
   * unanswered: the spans cannot tell (a caller's span or a callee's never arrived).
   */
  readonly state: 'continued' | 'broken' | 'untraced' | 'unanswered';
}

/** One place the probe's trace broke. */
export interface Break {
  readonly hop: { readonly from: string | null; readonly to: string };
  readonly proxies: readonly string[];
  /** What ties the callee to its caller (`parent-link`, `peer`), else what ties it to the probe; null for neither. */
  readonly evidence: HopEvidence | ProbeTie | null;
  /** The callee's span that started a new trace, when it recorded one. */
  readonly callee: SpanRef | null;
  /** What the callee recorded: `meshtrace.propagation.outcome` and `.reason`. */
  readonly outcome: string | null;
  readonly reason: string | null;
  /** The last span that still carried the probe's trace: the caller's call, when known. */
  readonly lastCarrier: SpanRef | null;
  /** One sentence saying what happened and what tied it. */
  readonly detail: string;
}

/** A peer that recorded nothing for a call: outside the mesh unless declared in it. */
export interface UntracedPeer {
  readonly address: string;
  /** The service that called it. */
  readonly caller: string;
  readonly path: string | null;
  /** Named by `mesh`: it must be traced, so the call is a break. */
  readonly declared: boolean;
}

/** A new root that started while a call went unanswered: tied by time alone, never a named hop. */
export interface Suspect {
  readonly service: string;
  readonly traceId: string;
  readonly spanId: string;
  readonly outcome: string | null;
  readonly reason: string | null;
  readonly detail: string;
}

/** The probe's finding for one request. */
export interface ProbeVerdict {
  readonly verdict: VerdictKind;
  /** The traces tied to the probe: more than one is always broken. */
  readonly traces: readonly string[];
  readonly spans: number;
  readonly services: readonly string[];
  readonly hops: readonly Hop[];
  /** Set for broken, in the order of the trail. */
  readonly breaks: readonly Break[];
  readonly untracedPeers: readonly UntracedPeer[];
  readonly suspects: readonly Suspect[];
  /** Set for unknown and incomplete: why, and what to check. */
  readonly reason: string | null;
  readonly check: readonly string[];
}

/** What the verdict knows besides the spans. */
export interface JudgeOptions {
  /** Peers that must be traced: `host`, `host:port` or a service name. */
  readonly mesh?: readonly string[];
  /** Any untraced peer is a break. */
  readonly strict?: boolean;
  /** The spans stopped changing before the wait ended; false: some may still be in an exporter's batch. */
  readonly settled: boolean;
  /** Where spans were read, for messages. */
  readonly asked: string;
  /** New roots that started around the probe (for suspects); empty when the source cannot list them. */
  readonly recentRoots?: readonly Span[];
}

/** Where a hop whose caller is unknown sorts: after every placed one. */
const UNPLACED = Number.MAX_SAFE_INTEGER;

/** How far around an unanswered call a new root counts as a suspect: clocks of two hosts differ. */
export const SUSPECT_SLACK_MS = 1000;

const ref = (s: Span): SpanRef => ({
  service: s.service,
  kind: s.kind,
  name: s.name,
  traceId: s.traceId,
  spanId: s.spanId,
});
const attr = (s: Span, name: string): string | null => {
  const v = s.attributes[name];
  return v === undefined ? null : String(v);
};

/** The spans tied to the probe and how: its own trace, and every trace in which a span carries the probe id. */
export function tiedSpans(sent: SentProbe, spans: readonly Span[]): Map<string, ProbeTie> {
  const traces = new Map<string, ProbeTie>([[sent.traceId, 'trace']]);
  for (const span of spans) {
    const tie = probeTieOf(span, sent.probeId);
    if (tie === undefined || traces.get(span.traceId) === 'trace' || traces.get(span.traceId) === 'probe-id') continue;
    traces.set(span.traceId, tie);
  }
  return traces;
}

/** The authority of the probe's URL, as a SERVER span there records it. */
function entryAuthority(sent: SentProbe): string | undefined {
  try {
    const url = new URL(sent.url);
    return `${url.hostname.toLowerCase()}:${url.port || (url.protocol === 'https:' ? '443' : '80')}`;
  } catch {
    return undefined;
  }
}

/** Whether `peer` (`host:port`) or `service` is named by a `mesh` entry (`host`, `host:port` or a service name). */
function declared(mesh: readonly string[], peer: string, service: string | undefined): boolean {
  const host = peer.slice(0, peer.lastIndexOf(':'));
  return mesh.some((m) => {
    const entry = m.toLowerCase();
    return entry === peer || entry === host || (service !== undefined && entry === service.toLowerCase());
  });
}

/** Judges the spans collected for one probe request. */
export function judge(sent: SentProbe, spans: readonly Span[], options: JudgeOptions): ProbeVerdict {
  const ties: Map<string, ProbeTie | 'peer'> = tiedSpans(sent, spans);
  const probed = spans.filter((s) => ties.has(s.traceId));
  // A root no key ties to the probe is the callee of a call the probe made when it is where that call went.
  const roots = [...spans, ...(options.recentRoots ?? [])].filter(
    (r) => r.parentSpanId === undefined && isCallee(r) && !isHealthCheck(r),
  );
  const passedOn = proxiesPassingOn(probed, roots);
  const probedGraph = new SpanGraph(probed, passedOn);
  const calls = probed.filter((s) => isOpenCall(probedGraph, s));
  // One call has one callee: of several such roots at the address it went to (a retry, other traffic),
  // the one that started nearest to the call stands for them; which one does not change the hop's names.
  const reached = new Map<string, Span>();
  const alike = new Map<Span, number>();
  for (const c of calls) {
    const at = roots.filter((r) => !ties.has(r.traceId) && peerMatches(c, r));
    if (at.length === 0) continue;
    const nearest = at.reduce((a, b) => (Math.abs(b.startMs - c.startMs) < Math.abs(a.startMs - c.startMs) ? b : a));
    reached.set(`${nearest.traceId}/${nearest.spanId}`, nearest);
    if (at.length > 1) alike.set(nearest, at.length - 1);
  }
  for (const r of reached.values()) ties.set(r.traceId, 'peer');
  const tied = [...probed, ...reached.values()];
  const graph = new SpanGraph(tied, passedOn);
  const traces = [...new Set(tied.map((s) => s.traceId))];
  const base = {
    traces,
    spans: tied.length,
    services: [...new Set(tied.map((s) => s.service))].sort(),
  };
  if (tied.length === 0) {
    const request =
      sent.error === undefined ? `the request answered HTTP ${sent.status}` : `the request failed (${sent.error})`;
    const exportTo = `the services export their spans to ${options.asked}`;
    return {
      ...base,
      // Nothing at all arrived in the whole wait: nothing says the spans are on their way.
      verdict: 'unknown',
      hops: [],
      breaks: [],
      untracedPeers: [],
      suspects: [],
      reason: `no span of trace ${sent.traceId} or probe ${sent.probeId} arrived at ${options.asked}; ${request}`,
      check: [
        `${exportTo} (OTEL_EXPORTER_OTLP_ENDPOINT, or the collector's pipeline)`,
        'the entry service is instrumented and keeps a sampled traceparent (a parent-based sampler does)',
        'the backend makes spans searchable within --wait (ingestion and flush delays)',
      ],
    };
  }

  const hops: Hop[] = [];
  const breaks: Break[] = [];
  const gaps: string[] = [];
  // Where each hop and break sits in the trail: the depth of its callee in the trace (unknown last). A trace
  // a callee started at a break continues the trail from there: proxies recording spans (tracing sidecars)
  // make the traces differ in depth, so a depth within one trace does not place a hop after another trace's.
  // Evaluated once every hop is placed, since a hop can be met before the break that starts its trace.
  const depthOf = new Map<Hop | Break, () => number>();
  const startedAt = new Map<string, () => number>();
  const resolving = new Set<string>();
  const depth = (span: Span): number => {
    let n = 0;
    for (let at = graph.parent(span); at !== undefined; at = graph.parent(at)) n++;
    const start = startedAt.get(span.traceId);
    // Two traces each started at a call of the other would never resolve: the second one counts from zero.
    if (start === undefined || resolving.has(span.traceId)) return n;
    resolving.add(span.traceId);
    const offset = start();
    resolving.delete(span.traceId);
    return n + offset;
  };
  const place = (d: () => number, hop: Hop, brk?: Break): void => {
    hops.push(hop);
    depthOf.set(hop, d);
    if (brk === undefined) return;
    breaks.push(brk);
    depthOf.set(brk, d);
  };
  const used = new Set<Span>();
  const entryAt = entryAuthority(sent);
  let entrySeen = false;

  // Open calls: a CLIENT span (or a proxy's span) nothing answered in the spans tied to the probe.
  const open = tied.filter((s) => isOpenCall(graph, s));

  for (const span of tied) {
    if (!isCallee(span) || graph.isProxy(span)) continue;
    const { caller, proxies, missingParent } = graph.callerOf(span);
    if (caller !== undefined) {
      place(() => depth(span), {
        from: caller.service,
        to: span.service,
        proxies,
        evidence: 'parent-link',
        state: 'continued',
      });
      continue;
    }
    if (missingParent === sent.parentSpanId) {
      entrySeen = true;
      place(() => 0, { from: 'probe', to: span.service, proxies, evidence: 'parent-link', state: 'continued' });
      continue;
    }
    if (missingParent !== undefined) {
      // The trace went on, but the caller's span is not here: it exports elsewhere, or not at all.
      place(() => UNPLACED, { from: null, to: span.service, proxies, evidence: null, state: 'unanswered' });
      const callerSpan = `${span.service}'s caller span ${missingParent}`;
      gaps.push(`${callerSpan} never arrived: the caller does not export its spans to ${options.asked}`);
      continue;
    }
    // A root: this service started a new trace while serving the probe.
    const candidates = open.filter((c) => c.traceId !== span.traceId && peerMatches(c, span));
    const call = candidates.find((c) => !used.has(c)) ?? candidates[0];
    if (call !== undefined) {
      used.add(call);
      const { app, proxies: through } = graph.applicationAbove(call);
      const from = app?.service ?? null;
      const via = [...through, ...proxies];
      const at = (): number => depth(call) + 1;
      startedAt.set(span.traceId, at);
      place(
        at,
        { from, to: span.service, proxies: via, evidence: 'peer', state: 'broken' },
        calleeBreak({ from, to: span.service }, via, 'peer', span, call, alike.get(span)),
      );
    } else if (!tied.some((s) => s.traceId === sent.traceId)) {
      // Nothing of the probe's own trace arrived: the entry lost it when the root is where the probe went.
      const entry = entryAt !== undefined && calledAt(span) === entryAt;
      if (entry) entrySeen = true;
      const from = entry ? 'probe' : null;
      place(
        () => (entry ? 0 : UNPLACED),
        { from, to: span.service, proxies, evidence: entry ? 'peer' : null, state: 'broken' },
        calleeBreak({ from, to: span.service }, proxies, entry ? 'peer' : keyTie(ties, span), span, undefined),
      );
    } else {
      place(
        () => UNPLACED,
        { from: null, to: span.service, proxies, evidence: null, state: 'broken' },
        calleeBreak({ from: null, to: span.service }, proxies, keyTie(ties, span), span, undefined),
      );
    }
  }

  // Calls nothing answered: a break when the peer is in the mesh, else a peer outside it, or cannot tell.
  const untracedPeers: UntracedPeer[] = [];
  const suspects: Suspect[] = [];
  const mesh = options.mesh ?? [];
  const tracedAt = new Map<string, string>();
  for (const s of [...spans, ...(options.recentRoots ?? [])]) {
    const at = isCallee(s) ? calledAt(s) : undefined;
    if (at !== undefined && !tracedAt.has(at)) tracedAt.set(at, s.service);
  }
  const entryService = hops.find((h) => h.from === 'probe')?.to;
  /**
   * New roots no key ties to the probe that started while `during` ran, outside `services`: suspects, by time alone.
   */
  const suspectsDuring = (during: Span, services: ReadonlyArray<string | undefined>): Span[] =>
    (options.recentRoots ?? []).filter(
      (r) =>
        !ties.has(r.traceId) &&
        r.parentSpanId === undefined &&
        isCallee(r) &&
        !services.includes(r.service) &&
        !isHealthCheck(r) &&
        r.startMs >= during.startMs - SUSPECT_SLACK_MS &&
        r.startMs <= during.endMs + SUSPECT_SLACK_MS &&
        [undefined, 'missing', 'malformed'].includes(attr(r, ATTR.outcome) ?? undefined),
    );
  const suspect = (r: Span, when: string): Suspect => {
    const outcomeNote = outcomeText(r) || 'no outcome recorded';
    return {
      service: r.service,
      traceId: r.traceId,
      spanId: r.spanId,
      outcome: attr(r, ATTR.outcome),
      reason: attr(r, ATTR.reason),
      detail: `${r.service} started trace ${r.traceId} (${outcomeNote}) ${when}; only time ties them`,
    };
  };
  for (const call of open) {
    if (used.has(call)) continue;
    const { app, proxies } = graph.applicationAbove(call);
    const from = app?.service ?? call.service;
    const target = openCallTarget(call) ?? 'an unrecorded address';
    const known = tracedAt.get(target);
    const path = pathOf(call) ?? null;
    const isDeclared = declared(mesh, target, known);
    if (!options.settled) {
      place(() => depth(call) + 1, { from, to: known ?? target, proxies, evidence: null, state: 'unanswered' });
      continue;
    }
    if (known !== undefined || isDeclared || options.strict === true) {
      const dropped = 'sampled out, or dropped before export';
      const why =
        known !== undefined
          ? `${known} at ${target} exports spans, but recorded none for this call: ${dropped}`
          : isDeclared
            ? `${target} is declared in the mesh (--mesh) but recorded nothing for this call`
            : `${target} recorded nothing for this call, and --strict fails on any untraced peer`;
      if (known === undefined) untracedPeers.push({ address: target, caller: from, path, declared: isDeclared });
      place(
        () => depth(call) + 1,
        { from, to: known ?? target, proxies, evidence: 'peer', state: 'broken' },
        {
          hop: { from, to: known ?? target },
          proxies,
          evidence: 'peer',
          callee: null,
          outcome: null,
          reason: null,
          lastCarrier: ref(call),
          detail: `${from} called ${target}${path === null ? '' : path}: ${why}`,
        },
      );
      continue;
    }
    const around = suspectsDuring(call, [entryService, from]);
    if (around.length === 0) {
      place(() => depth(call) + 1, { from, to: target, proxies, evidence: null, state: 'untraced' });
      untracedPeers.push({ address: target, caller: from, path, declared: false });
      continue;
    }
    place(() => depth(call) + 1, { from, to: target, proxies, evidence: null, state: 'unanswered' });
    for (const r of around) suspects.push(suspect(r, `while ${from}'s call to ${target} went unanswered`));
    const newTraces = around.length === 1 ? 'a new trace' : `${around.length} new traces`;
    const started = `${newTraces} started meanwhile (suspects below)`;
    const lost = `if ${target} is in the mesh, the trail is lost there; declare it with --mesh to make that a break`;
    gaps.push(`${from} called ${target}, which recorded nothing, and ${started}: ${lost}`);
  }

  // A service that recorded no call may still have called on with a client that records nothing and
  // forwards nothing (plain fetch): a new root elsewhere while it worked is a suspect, so not WHOLE.
  const probeServices = new Set(tied.map((s) => s.service));
  /** Whether the service recorded a call under `span`: a CLIENT span, or a child in another service, at any depth. */
  const callsBelow = (span: Span): boolean =>
    graph.children(span).some((c) => isCaller(c) || c.service !== span.service || callsBelow(c));
  for (const server of tied) {
    if (server.kind !== 'server' || graph.isProxy(server)) continue;
    if (breaks.length > 0 || callsBelow(server)) continue;
    const around = suspectsDuring(server, [entryService, ...probeServices]).filter(
      (r) => !suspects.some((s) => s.spanId === r.spanId),
    );
    const plainClient = '(a client that records nothing, such as plain fetch, forwards nothing)';
    const when = `while ${server.service} served the probe and recorded no call of its own ${plainClient}`;
    for (const r of around) suspects.push(suspect(r, when));
    const newTraces = around.length === 1 ? 'a new trace' : `${around.length} new traces`;
    const started = `${newTraces} started while it served the probe (suspects below)`;
    const lost = 'if it called on with a client that forwards nothing, the trail is lost there';
    if (around.length > 0) gaps.push(`${server.service} recorded no outbound call, and ${started}: ${lost}`);
  }

  // More than one trace tied to the probe is a break even where no root was found (one still in a batch).
  const verdict: VerdictKind =
    breaks.length > 0 || traces.length > 1
      ? 'broken'
      : !entrySeen || !options.settled
        ? 'incomplete'
        : gaps.length > 0
          ? 'unknown'
          : 'whole';
  let reason: string | null = null;
  const check: string[] = [];
  if (verdict === 'incomplete') {
    reason = !entrySeen
      ? `the entry's SERVER span (parent ${sent.parentSpanId}) has not arrived at ${options.asked}`
      : 'spans were still arriving when the wait ended';
    check.push(
      'the exporters flush within --wait (the batch processor waits OTEL_BSP_SCHEDULE_DELAY, 5 s by default)',
      'the entry service is instrumented and exports to the same backend as the others',
    );
  } else if (verdict === 'unknown') {
    reason = gaps.join('; ');
  }
  const inTrail = <T extends Hop | Break>(list: T[]): T[] =>
    list
      .map((x, i) => ({ x, i, d: depthOf.get(x)!() }))
      .sort((a, b) => a.d - b.d || a.i - b.i)
      .map(({ x }) => x);
  return { ...base, verdict, hops: inTrail(hops), breaks: inTrail(breaks), untracedPeers, suspects, reason, check };
}

/** What tied a root's trace to the probe, when no call named its caller. */
function keyTie(ties: ReadonlyMap<string, ProbeTie | 'peer'>, span: Span): Break['evidence'] {
  const tie = ties.get(span.traceId);
  return tie === 'probe-id' || tie === 'request-id' ? tie : null;
}

function calleeBreak(
  hop: Break['hop'],
  proxies: readonly string[],
  evidence: Break['evidence'],
  callee: Span,
  call: Span | undefined,
  others = 0,
): Break {
  const outcome = attr(callee, ATTR.outcome);
  const reason = attr(callee, ATTR.reason);
  const started = `started trace ${callee.traceId}`;
  // A callee with a parent here is below a proxy that recorded a span and started the trace (a tracing sidecar
  // nothing reached): the proxy started it, and the callee continued the proxy's span.
  const starter = callee.parentSpanId === undefined ? undefined : proxies[proxies.length - 1];
  let what: string;
  if (starter !== undefined) {
    const continued = `${callee.service} continued it${outcome === null ? '' : ` (outcome ${outcome})`}`;
    what = `${starter}, a proxy that records spans, ${started} (no trace context reached it), and ${continued}`;
  } else if (outcome === null)
    what = `${callee.service} recorded no propagation outcome (meshtrace does not run there) and ${started}`;
  else if (outcome === 'missing')
    what = `${callee.service} recorded outcome missing: no traceparent reached it; it ${started}`;
  else what = `${callee.service} recorded outcome ${outcome}${reason === null ? '' : ` (${reason})`} and ${started}`;
  const lost =
    call !== undefined && proxies.length > 0 && call.kind === 'server'
      ? `; ${call.service} received the trace (span ${call.spanId}) and passed the call on without it`
      : '';
  const tie =
    evidence === 'peer'
      ? call === undefined
        ? `tied to the probe's request by the address it was called at`
        : `tied to ${call.service}'s call by the address it was called at (${calledAt(callee) ?? '?'})`
      : evidence === 'probe-id'
        ? `tied to the probe by its probe id; no recorded call names its caller`
        : evidence === 'request-id'
          ? `tied to the probe by x-request-id; no recorded call names its caller`
          : 'nothing ties it to a caller';
  const rootsWere = others === 1 ? 'root was' : 'roots were';
  const standsFor = 'called there in the window; this one stands for them';
  const more = others === 0 ? '' : ` (${others} more new ${rootsWere} ${standsFor})`;
  return {
    hop,
    proxies,
    evidence,
    callee: ref(callee),
    outcome,
    reason,
    lastCarrier: call === undefined ? null : ref(call),
    detail: `${what}${lost}; ${tie}${more}`,
  };
}
