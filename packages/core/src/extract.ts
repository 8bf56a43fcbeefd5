import { ROOT_CONTEXT, createContextKey, defaultTextMapGetter, propagation, trace } from '@opentelemetry/api';
import type { Attributes, Context, SpanContext, TextMapGetter } from '@opentelemetry/api';
import { parseBaggage } from './baggage';
import { PACKAGE, droppedCounter, extractCounter, preview, warner } from './diagnostics';
import { FLAG_RANDOM, KNOWN_FLAGS, parseTraceparent } from './traceparent';
import type { TraceparentReason } from './traceparent';
import { MeshTraceState, parseTracestate } from './tracestate';

/** What happened to the inbound trace context. */
export type ExtractOutcome =
  | { readonly outcome: 'continued'; readonly format: 'w3c'; readonly reason: undefined; readonly attributes: Attributes }
  | { readonly outcome: 'missing'; readonly format: undefined; readonly reason: undefined; readonly attributes: Attributes }
  | { readonly outcome: 'malformed'; readonly format: undefined; readonly reason: TraceparentReason; readonly attributes: Attributes };

/** The context to run the request in, and why it is what it is. */
export interface ExtractResult {
  readonly context: Context;
  readonly outcome: ExtractOutcome;
}

function outcome<O extends ExtractOutcome>(o: Omit<O, 'attributes'>): O {
  const attributes: Attributes = { outcome: o.outcome };
  if (o.reason !== undefined) attributes.reason = o.reason;
  if (o.format !== undefined) attributes.format = o.format;
  return Object.freeze({ ...o, attributes: Object.freeze(attributes) }) as O;
}

// Outcomes are constants: extracting allocates no outcome objects.
const CONTINUED_W3C = outcome({ outcome: 'continued', format: 'w3c', reason: undefined });
const MISSING = outcome({ outcome: 'missing', format: undefined, reason: undefined });
const MALFORMED: Record<string, ExtractOutcome> = {};
for (const r of ['bad-version', 'bad-trace-id', 'zero-trace-id', 'bad-parent-id', 'zero-parent-id', 'bad-flags', 'bad-format', 'multiple'] as const) {
  MALFORMED[r] = outcome({ outcome: 'malformed', format: undefined, reason: r });
}

/** The outcome constant for a parse result; useful to classify a header without extracting it. */
export function outcomeOf(parsed: ReturnType<typeof parseTraceparent>): ExtractOutcome {
  if (typeof parsed !== 'string') return CONTINUED_W3C;
  return parsed === 'missing' ? MISSING : MALFORMED[parsed];
}

/** Marks a context whose trace id is known to be random (W3C trace-context-2 flag 0x02). */
export const RANDOM_TRACE_ID_KEY = createContextKey('meshtrace.random-trace-id');

function traceparentWarning(reason: TraceparentReason, raw: unknown): string {
  return reason === 'missing'
    ? `${PACKAGE}: request without traceparent; started a fresh root trace. If a sidecar should forward one, check that nothing strips it.`
    : `${PACKAGE}: malformed traceparent (${reason}) ${preview(raw)}; started a fresh root trace and will not forward it.`;
}

/**
 * Counts an outcome through `meshtrace.propagation.extract` and warns (rate-limited) when the
 * trace was not continued. Adapters that only classify a header call this once per request.
 */
export function recordOutcome(result: ExtractOutcome, raw?: unknown): void {
  extractCounter.add(1, result.attributes);
  if (result.reason !== undefined) {
    const reason = result.reason;
    warner.warn(`traceparent:${reason}`, () => traceparentWarning(reason, raw));
  }
}

/** Counts and warns about members dropped from an inbound or outbound header. */
export function recordDropped(header: 'tracestate' | 'baggage', reason: string, count: number, raw?: unknown): void {
  droppedCounter.add(count, { header, reason });
  warner.warn(`${header}:${reason}`, () => `${PACKAGE}: dropped ${count} ${header} member(s) (${reason})${raw === undefined ? '' : ` from ${preview(raw)}`}.`);
}

/** The extraction itself, from the three raw header values. */
function extractFrom(traceparent: unknown, tracestate: unknown, baggage: unknown, base: Context): ExtractResult {
  const tp = parseTraceparent(traceparent);
  let ctx = base;
  let result: ExtractOutcome;
  if (typeof tp === 'string') {
    result = tp === 'missing' ? MISSING : MALFORMED[tp];
    // The SDK generates the fresh root's trace id randomly, so Level 2 lets us say so downstream.
    ctx = ctx.setValue(RANDOM_TRACE_ID_KEY, true);
  } else {
    result = CONTINUED_W3C;
    const spanContext: SpanContext = { traceId: tp.traceId, spanId: tp.spanId, traceFlags: tp.traceFlags & KNOWN_FLAGS, isRemote: true };
    // §3.3: tracestate only means something beside a valid traceparent.
    const ts = parseTracestate(tracestate);
    if (ts instanceof MeshTraceState) spanContext.traceState = ts;
    else if (ts !== undefined) recordDropped('tracestate', ts, 1, tracestate);
    ctx = trace.setSpanContext(ctx, spanContext);
    if (tp.traceFlags & FLAG_RANDOM) ctx = ctx.setValue(RANDOM_TRACE_ID_KEY, true);
  }
  if (baggage !== undefined) {
    const parsed = parseBaggage(baggage);
    if (parsed.baggage !== undefined) ctx = propagation.setBaggage(ctx, parsed.baggage);
    if (parsed.reason !== undefined) recordDropped('baggage', parsed.reason, parsed.dropped, baggage);
  }
  recordOutcome(result, traceparent);
  return { context: ctx, outcome: result };
}

/**
 * Extracts the W3C trace context from HTTP request headers (Node's lower-cased header object).
 * A missing or malformed `traceparent` gives a fresh root; every outcome is counted. Never throws.
 * @example
 * const { context: ctx, outcome } = extractRequestContext(req.headers);
 * context.with(ctx, () => handle(req, res));
 */
export function extractRequestContext(headers: Readonly<Record<string, unknown>>, base: Context = ROOT_CONTEXT): ExtractResult {
  return extractFrom(headers.traceparent, headers.tracestate, headers.baggage, base);
}

/**
 * Extracts from any carrier through a `TextMapGetter` (messages, metadata, frames), with the same
 * validation, outcome and counting as {@link extractRequestContext}.
 */
export function extractContext<C>(carrier: C, getter: TextMapGetter<C> = defaultTextMapGetter, base: Context = ROOT_CONTEXT): ExtractResult {
  let traceparent: unknown;
  let tracestate: unknown;
  let baggage: unknown;
  try {
    traceparent = getter.get(carrier, 'traceparent');
    tracestate = getter.get(carrier, 'tracestate');
    baggage = getter.get(carrier, 'baggage');
  } catch {
    // A carrier that cannot be read is a malformed one, not a reason to fail the message.
    traceparent = NaN;
    tracestate = baggage = undefined;
  }
  return extractFrom(traceparent, tracestate, baggage, base);
}
