import { addressOf, findOrphans } from '../analyze';
import { ATTR } from '../model';
import type { Span, SpanKindName } from '../model';
import type { Collected } from './wait';
import type { SentProbe } from './send';

/** whole: one unbroken trace; broken: a hop lost it; unknown: the spans cannot tell. */
export type VerdictKind = 'whole' | 'broken' | 'unknown';

/** A span named in a verdict. */
export interface SpanRef {
  readonly service: string;
  readonly kind: SpanKindName;
  readonly name: string;
  readonly traceId: string;
  readonly spanId: string;
}

/** One place the probe's trace broke. */
export interface Break {
  /** `from` is the caller's service (`probe` when the entry service lost the trace, undefined when unknown); `to` the callee's, or the address called when it recorded nothing. */
  readonly hop: { readonly from: string | undefined; readonly to: string };
  /** The callee's first span, when it recorded one. */
  readonly callee: SpanRef | undefined;
  /** What the callee recorded: `meshtrace.propagation.outcome` and `.reason`. */
  readonly outcome: string | undefined;
  readonly reason: string | undefined;
  /** The last span of the probe's trace before the break. */
  readonly lastCarrier: SpanRef | undefined;
  /** One sentence saying what happened. */
  readonly detail: string;
}

/** The probe's finding for one request. */
export interface ProbeVerdict {
  readonly verdict: VerdictKind;
  /** Set for broken, first break first. */
  readonly breaks: readonly Break[];
  /** Set for unknown: why, and what to check. */
  readonly reason: string | undefined;
  readonly check: readonly string[];
  readonly spans: number;
  readonly traces: number;
  readonly services: readonly string[];
}

const ref = (s: Span): SpanRef => ({
  service: s.service,
  kind: s.kind,
  name: s.name,
  traceId: s.traceId,
  spanId: s.spanId,
});
const str = (v: unknown): string | undefined => (v === undefined ? undefined : String(v));

/** Judges the spans collected for one probe request; `asked` names where they were read from. */
export function judge(sent: SentProbe, collected: Collected, asked: string, waitMs: number): ProbeVerdict {
  const spans = collected.spans;
  const base = {
    spans: spans.length,
    traces: new Set(spans.map((s) => s.traceId)).size,
    services: [...new Set(spans.map((s) => s.service))].sort(),
  };
  if (collected.error !== undefined) {
    return {
      ...base,
      verdict: 'unknown',
      breaks: [],
      reason: `could not read spans from ${asked}: ${collected.error}`,
      check: ['the endpoint is the query API of the backend the services export to, and it is up'],
    };
  }
  if (spans.length === 0) {
    const request =
      sent.error === undefined ? `the request answered HTTP ${sent.status}` : `the request failed (${sent.error})`;
    return {
      ...base,
      verdict: 'unknown',
      breaks: [],
      reason: `no spans of trace ${sent.traceId} or probe ${sent.probeId} arrived at ${asked} within ${waitMs / 1000} s; ${request}`,
      check: [
        `the services export their spans to ${asked} (OTEL_EXPORTER_OTLP_ENDPOINT, or the collector's pipeline)`,
        'the entry service is instrumented and keeps a sampled traceparent (a parent-based sampler does)',
        'the backend makes spans searchable within --wait (ingestion and flush delays)',
      ],
    };
  }
  const breaks = findBreaks(sent, spans);
  return { ...base, verdict: breaks.length === 0 ? 'whole' : 'broken', breaks, reason: undefined, check: [] };
}

/** Orphaned roots, CLIENT spans nothing answered, SERVER spans whose caller never arrived: in start order. */
function findBreaks(sent: SentProbe, spans: readonly Span[]): Break[] {
  const inTrace = spans.filter((s) => s.traceId === sent.traceId);
  const ids = new Set(inTrace.map((s) => s.spanId));
  const orphans = findOrphans(spans);
  const found: Array<{ at: number; brk: Break }> = [];
  const lastBefore = (t: number): Span | undefined =>
    inTrace
      .filter((s) => s.startMs <= t)
      .reduce<Span | undefined>((a, b) => (a === undefined || b.startMs >= a.startMs ? b : a), undefined);

  for (const o of orphans) {
    const carrier = o.caller?.traceId === sent.traceId ? o.caller : lastBefore(o.span.startMs);
    found.push({ at: o.span.startMs, brk: calleeBreak(o.hop, o.span, carrier) });
  }
  // The entry service itself started a new trace: nothing of the probe's trace exists, and the probe records no span to tie to.
  if (inTrace.length === 0) {
    const first =
      spans.filter((s) => s.parentSpanId === undefined).sort((a, b) => a.startMs - b.startMs)[0] ?? spans[0];
    if (!orphans.some((o) => o.span === first))
      found.push({ at: first.startMs, brk: calleeBreak({ from: 'probe', to: first.service }, first, undefined) });
  }
  const answered = new Set(spans.map((s) => s.parentSpanId));
  const tiedCallers = new Set(orphans.map((o) => o.caller));
  for (const client of inTrace) {
    if (client.kind !== 'client' || answered.has(client.spanId) || tiedCallers.has(client)) continue;
    const to = addressOf(client) ?? 'the service it called';
    found.push({
      at: client.startMs,
      brk: {
        hop: { from: client.service, to },
        callee: undefined,
        outcome: undefined,
        reason: undefined,
        lastCarrier: ref(client),
        detail: `${to} recorded nothing: not instrumented, not exporting, or sampled out`,
      },
    });
  }
  for (const server of inTrace) {
    const parent = server.parentSpanId;
    if (server.kind !== 'server' || parent === undefined || parent === sent.parentSpanId || ids.has(parent)) continue;
    found.push({
      at: server.startMs,
      brk: {
        hop: { from: undefined, to: server.service },
        callee: ref(server),
        outcome: str(server.attributes[ATTR.outcome]),
        reason: str(server.attributes[ATTR.reason]),
        lastCarrier: undefined,
        detail: `its caller's span ${parent} never arrived: the caller does not export its spans, or not to this backend`,
      },
    });
  }
  return found.sort((a, b) => a.at - b.at).map((f) => f.brk);
}

function calleeBreak(hop: Break['hop'], callee: Span, carrier: Span | undefined): Break {
  const outcome = str(callee.attributes[ATTR.outcome]);
  const reason = str(callee.attributes[ATTR.reason]);
  const started = `started trace ${callee.traceId}`;
  let detail: string;
  if (outcome === undefined)
    detail = `${callee.service} recorded no propagation outcome (meshtrace does not run there) and ${started}`;
  else if (outcome === 'missing')
    detail = `${callee.service} recorded outcome missing: no traceparent reached it; it ${started}`;
  else
    detail = `${callee.service} recorded outcome ${outcome}${reason === undefined ? '' : ` (${reason})`} and ${started}`;
  return {
    hop,
    callee: ref(callee),
    outcome,
    reason,
    lastCarrier: carrier === undefined ? undefined : ref(carrier),
    detail,
  };
}
