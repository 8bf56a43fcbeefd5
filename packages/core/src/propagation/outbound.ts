import { isSpanContextValid, propagation, trace } from '@opentelemetry/api';
import type { BaggageEntry, Context, SpanContext, TextMapGetter } from '@opentelemetry/api';
import { parseBaggage } from '../w3c/baggage';
import { headerGetter } from './carrier';
import type { HeaderCarrier } from './carrier';
import { recordDropped } from '../internal/diagnostics';
import { extractWith } from './extract';
import type { ExtractConfig } from './extraction';

/**
 * The trace headers a caller's own are replaced as one set, lower case: W3C and both B3 forms, so
 * state from another trace (its `tracestate`, its B3 ids) never rides beside this trace's `traceparent`.
 */
const TRACE_HEADERS: readonly string[] = [
  'traceparent',
  'tracestate',
  'b3',
  'x-b3-traceid',
  'x-b3-spanid',
  'x-b3-parentspanid',
  'x-b3-sampled',
  'x-b3-flags',
];

/**
 * Reads what trace context a caller's own headers name, counting nothing: they are outbound, not a request received.
 */
const CALLER: ExtractConfig = Object.freeze({ formats: Object.freeze(['w3c', 'b3'] as const), baggage: false });

/** Text of one header value from any client's form; lists element-wise, Buffers decoded. */
function texts(value: unknown, into: string[]): void {
  if (typeof value === 'string') into.push(value);
  else if (value instanceof Uint8Array)
    into.push(Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('utf8'));
  else if (Array.isArray(value)) for (const v of value) texts(v, into);
}

/**
 * Reads a header, in any letter case, from every form an HTTP client or a message header map takes:
 * a plain object, `Headers`, an array of `[name, value]` pairs, or Node's flat `[name, value, ...]` array.
 */
export const clientHeaderGetter: TextMapGetter<unknown> = {
  keys(carrier) {
    if (carrier instanceof Headers) return [...carrier.keys()];
    if (Array.isArray(carrier)) return pairsOf(carrier).map(([k]) => String(k));
    return headerGetter.keys(carrier as HeaderCarrier);
  },
  get(carrier, key) {
    if (carrier === null || typeof carrier !== 'object') return undefined;
    if (carrier instanceof Headers) return carrier.get(key) ?? undefined;
    if (!Array.isArray(carrier)) return headerGetter.get(carrier as HeaderCarrier, key);
    const lower = key.toLowerCase();
    const found: string[] = [];
    for (const [name, value] of pairsOf(carrier))
      if (typeof name === 'string' && name.toLowerCase() === lower) texts(value, found);
    return found.length === 0 ? undefined : found.length === 1 ? found[0] : found;
  },
};

/** The `[name, value]` pairs of an array header form, flat or paired. */
function pairsOf(headers: readonly unknown[]): Array<readonly [unknown, unknown]> {
  const pairs: Array<readonly [unknown, unknown]> = [];
  if (typeof headers[0] === 'string') {
    for (let i = 0; i < headers.length; i += 2) pairs.push([headers[i], headers[i + 1]]);
  } else {
    for (const pair of headers) if (Array.isArray(pair)) pairs.push([pair[0], pair[1]]);
  }
  return pairs;
}

/** What one outbound call sends, decided by {@link outboundTrace} from the active context and the caller's headers. */
export class OutboundTrace {
  /** @internal */
  constructor(
    /**
     * The context to start the call's span in, or to run an instrumented call in: the active one, its
     * baggage merged with the caller's; with {@link keepCaller}, the trace the caller's own header names.
     */
    readonly context: Context,
    /** No active trace, and the caller set a trace header of its own: those go out as they are. */
    readonly keepCaller: boolean,
    /** The valid context the caller's own trace header names, when it is kept (a span link for a batch, say). */
    readonly caller: SpanContext | undefined,
    /** The caller's headers, in a form that can be read again (a one-shot iterable becomes an array of pairs). */
    readonly headers: unknown,
  ) {}

  /**
   * The caller's headers to remove (`drop`, lower case, matched in any letter case) and the ones to add (`set`) so
   * the call carries exactly one of each: the trace of `from` (the call's own span) when the propagator writes one
   * (and the caller's is not kept), the merged baggage when the propagator writes baggage.
   */
  traceHeaders(from: Context): TraceHeaders<string> {
    const fields = propagation.fields();
    const names = traceNames(fields);
    const written: Record<string, string> = {};
    propagation.inject(from, written);
    const set: Record<string, string> = {};
    for (const key of Object.keys(written)) set[key.toLowerCase()] = written[key];
    const drop: string[] = [];
    if (
      this.keepCaller ||
      (set.traceparent === undefined && set.b3 === undefined && set['x-b3-traceid'] === undefined)
    ) {
      // The caller's trace goes out as it is (or nothing of the context's does): none of the context's trace fields.
      for (const name of names) delete set[name];
    } else {
      drop.push(...names);
    }
    // A propagator that writes baggage owns the header: the caller's entries are in the merged value.
    if (fields.includes('baggage')) drop.push('baggage');
    return { drop, set };
  }

  /**
   * The caller's headers for a call an instrumentation traces, run in `running`: without every trace header the
   * instrumentation writes itself, and without the caller's baggage when `running` has baggage the propagator
   * writes, so a stale `traceparent` never goes out as a second value.
   */
  withoutTrace(running: Context = this.context): unknown {
    const fields = propagation.fields();
    const names = traceNames(fields);
    const baggage = propagation.getBaggage(running);
    const writesBaggage = fields.includes('baggage') && baggage !== undefined && baggage.getAllEntries().length > 0;
    return rewriteHeaders(this.headers, writesBaggage ? [...names, 'baggage'] : names, {});
  }

  /**
   * A copy of `headers` (the caller's, by default) in its own form (plain object, `Headers`, `[name, value]` pairs
   * or Node's flat array) without the names in `drop` in any letter case, then with `set` added: the one place a
   * caller's trace headers are replaced. Never mutates `headers`; returns it as it is when there is nothing to
   * change, and what no client accepts as it is, for the client to reject.
   */
  rewrite<V>({ drop, set }: TraceHeaders<V>, headers: unknown = this.headers): unknown {
    return rewriteHeaders(headers, drop, set);
  }
}

/** The header names an outbound call drops (lower case) and the values it sets, from {@link OutboundTrace}. */
export interface TraceHeaders<V> {
  readonly drop: readonly string[];
  readonly set: Readonly<Record<string, V>>;
}

/**
 * Decides an outbound call's trace headers. With a valid span in `parent`, the caller's own trace
 * headers (any letter case) are replaced by the context's. Without one, a `traceparent` (or B3) the
 * caller set is left as it is, and the call's span continues it. Either way the caller's `baggage`
 * entries merge with the context's: the caller's value wins for its key (it is the more specific
 * intent), the context's entries keep their order, the caller's new ones follow; invalid members of
 * the caller's are dropped and counted. `getter` reads `headers` (default: any HTTP client form).
 * @example
 * const ot = outboundTrace(context.active(), init.headers);
 * const span = tracer.startSpan('GET', { kind: SpanKind.CLIENT }, ot.context);
 * init = { ...init, headers: ot.rewrite(ot.traceHeaders(trace.setSpan(ot.context, span))) };
 */
export function outboundTrace(
  parent: Context,
  headers: unknown,
  getter: TextMapGetter<unknown> = clientHeaderGetter,
): OutboundTrace {
  if (
    headers !== null &&
    typeof headers === 'object' &&
    !Array.isArray(headers) &&
    !(headers instanceof Headers) &&
    typeof (headers as Partial<Iterable<unknown>>)[Symbol.iterator] === 'function'
  ) {
    // Reading a one-shot iterable uses it up: the call gets the pairs read here.
    headers = Array.from(headers as Iterable<unknown>);
  }
  let ctx = withCallerBaggage(parent, headers, getter);
  const active = trace.getSpanContext(parent);
  if (active !== undefined && isSpanContextValid(active)) return new OutboundTrace(ctx, false, undefined, headers);
  const own = extractWith(CALLER, headers, getter, ctx, false);
  if (own.outcome.outcome === 'missing') return new OutboundTrace(ctx, false, undefined, headers);
  const caller = trace.getSpanContext(own);
  if (caller !== undefined) ctx = own;
  return new OutboundTrace(ctx, true, caller, headers);
}

/** `parent` with the caller's baggage entries merged into its own; `parent` itself when the caller sent none. */
function withCallerBaggage(parent: Context, headers: unknown, getter: TextMapGetter<unknown>): Context {
  let raw: unknown;
  try {
    raw = getter.get(headers, 'baggage');
  } catch {
    return parent;
  }
  if (raw === undefined || raw === '') return parent;
  const parsed = parseBaggage(raw);
  if (parsed.reason !== undefined) recordDropped('baggage', parsed.reason, parsed.dropped, raw);
  if (parsed.baggage === undefined) return parent;
  const entries = new Map<string, BaggageEntry>(propagation.getBaggage(parent)?.getAllEntries());
  for (const [key, entry] of parsed.baggage.getAllEntries()) entries.set(key, entry);
  return propagation.setBaggage(parent, propagation.createBaggage(Object.fromEntries(entries)));
}

/**
 * The lower-case names of every trace header: meshtrace's own set and whatever the registered propagator writes
 * (`fields`).
 */
function traceNames(fields: readonly string[]): string[] {
  const names = new Set(TRACE_HEADERS);
  for (const field of fields) if (field.toLowerCase() !== 'baggage') names.add(field.toLowerCase());
  return [...names];
}

/** Whether `headers` holds one of `names` (lower case) in any letter case; a form it cannot read counts as yes. */
function carriesAny(headers: object, names: readonly string[]): boolean {
  if (headers instanceof Headers) return names.some((name) => headers.has(name));
  if (Array.isArray(headers)) return pairsOf(headers).some(([name]) => names.includes(String(name).toLowerCase()));
  if (typeof (headers as Partial<Iterable<unknown>>)[Symbol.iterator] === 'function') return true;
  for (const key in headers) if (Object.hasOwn(headers, key) && names.includes(key.toLowerCase())) return true;
  return false;
}

/** See {@link OutboundTrace.rewrite}. */
function rewriteHeaders(headers: unknown, drop: readonly string[], set: Readonly<Record<string, unknown>>): unknown {
  const added = Object.keys(set);
  if (headers === undefined || headers === null) return { ...set };
  if (typeof headers !== 'object') return headers;
  if (added.length === 0 && !carriesAny(headers, drop)) return headers;
  if (headers instanceof Headers) {
    const out = new Headers(headers);
    for (const name of drop) out.delete(name);
    for (const name of added) out.set(name, String(set[name]));
    return out;
  }
  if (Array.isArray(headers) && typeof headers[0] === 'string') {
    // Node's flat form, as in `message.rawHeaders`: [name, value, name, value, ...].
    const out: unknown[] = [];
    for (let i = 0; i < headers.length; i += 2)
      if (!drop.includes(String(headers[i]).toLowerCase())) out.push(headers[i], headers[i + 1]);
    for (const name of added) out.push(name, set[name]);
    return out;
  }
  if (typeof (headers as Partial<Iterable<unknown>>)[Symbol.iterator] === 'function') {
    const out: unknown[] = [];
    for (const pair of headers as Iterable<unknown>) {
      if (!(Array.isArray(pair) && drop.includes(String(pair[0]).toLowerCase()))) out.push(pair);
    }
    for (const name of added) out.push([name, set[name]]);
    return out;
  }
  const out: Record<string, unknown> = { ...(headers as Record<string, unknown>) };
  for (const key of Object.keys(out)) {
    const lower = key.toLowerCase();
    // A lower-case key that `set` writes is overwritten in place below, which keeps the object's shape.
    if ((lower !== key || !Object.hasOwn(set, key)) && drop.includes(lower)) delete out[key];
  }
  return Object.assign(out, set);
}
