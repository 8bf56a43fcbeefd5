import { ROOT_CONTEXT, defaultTextMapGetter, propagation, trace } from '@opentelemetry/api';
import type { Context, Link, SpanContext, TextMapGetter } from '@opentelemetry/api';
import { B3_DENY, parseB3Multi, parseB3Single } from '../w3c/b3';
import type { B3Context } from '../w3c/b3';
import { InboundBaggage } from '../w3c/baggage';
import { FLAG_RANDOM, FLAG_SAMPLED, parseTraceparent, remoteTraceparent } from '../w3c/traceparent';
import type { TraceparentReason } from '../w3c/traceparent';
import { MeshTraceState } from '../w3c/tracestate';
import { ExtractedContext } from './extracted-context';
import { EXTRACTION_KEY } from './extraction';
import type { ExtractConfig, ExtractResult, Extraction } from './extraction';
import { CONTINUED, MALFORMED, MISSING, outcomeOf, recordOutcome, recordUnreadable } from './outcome';
import type { ExtractOutcome, TraceFormat } from './outcome';

function fromB3(b3: B3Context): SpanContext {
  return { traceId: b3.traceId, spanId: b3.spanId, traceFlags: b3.sampled ? FLAG_SAMPLED : 0, isRemote: true };
}

/**
 * Extracts with `config` from a carrier: formats are tried in order and the first valid one is
 * continued; a valid one that disagrees becomes a link. Never throws. Counts the outcome.
 * @internal the propagator's engine; use `propagation.extract` or {@link extractContext}.
 */
export function extractWith<C>(
  config: ExtractConfig,
  carrier: C,
  getter: TextMapGetter<C>,
  base: Context,
  count = true,
): ExtractedContext {
  const formats = config.formats;
  const b3First = formats[0] === 'b3';
  const readW3c = formats[0] === 'w3c' || formats[1] === 'w3c';
  const readB3 = b3First || formats[1] === 'b3';
  let w3c: SpanContext | TraceparentReason = 'missing';
  let b3: B3Context | typeof B3_DENY | 'missing' | 'bad-b3' = 'missing';
  let rawTraceparent: unknown;
  let rawTracestate: unknown;
  let rawBaggage: unknown;
  let unreadable = false;
  // The default getter is `carrier[key]`: read a plain carrier (Node's header object) by name, which is an
  // inline-cached load instead of a keyed lookup per header.
  const h =
    getter === defaultTextMapGetter && typeof carrier === 'object' && carrier !== null
      ? (carrier as Record<string, unknown>)
      : undefined;
  try {
    if (readW3c) {
      rawTraceparent = h !== undefined ? h.traceparent : getter.get(carrier, 'traceparent');
      w3c = remoteTraceparent(rawTraceparent);
      if (typeof w3c !== 'string') rawTracestate = h !== undefined ? h.tracestate : getter.get(carrier, 'tracestate');
    }
    if (readB3) {
      const single = h !== undefined ? h.b3 : getter.get(carrier, 'b3');
      if (single !== undefined) {
        b3 = parseB3Single(single);
      } else {
        const traceId = h !== undefined ? h['x-b3-traceid'] : getter.get(carrier, 'x-b3-traceid');
        // Without a trace id the multi headers hold at most a sampling hint or a fault, which only matter when W3C gave
        // nothing.
        if (traceId !== undefined || typeof w3c === 'string')
          b3 = parseB3Multi(
            traceId,
            getter.get(carrier, 'x-b3-spanid'),
            getter.get(carrier, 'x-b3-sampled'),
            getter.get(carrier, 'x-b3-flags'),
          );
      }
    }
    if (config.baggage) rawBaggage = h !== undefined ? h.baggage : getter.get(carrier, 'baggage');
  } catch {
    // A carrier that cannot be read is a malformed one, not a reason to fail the message.
    w3c = 'bad-format';
    b3 = 'missing';
    rawTracestate = rawBaggage = undefined;
    unreadable = true;
  }

  // The first valid format in the configured order is continued; the other, if valid and different, becomes a link.
  const w3cSc = typeof w3c === 'string' ? undefined : w3c;
  const b3Sc = typeof b3 === 'string' ? undefined : fromB3(b3);
  const w3cWins = w3cSc !== undefined && (!b3First || b3Sc === undefined);
  const chosen = w3cWins ? w3cSc : b3Sc;
  const other = w3cWins ? b3Sc : w3cSc;
  let links: Link[] | undefined;
  if (
    chosen !== undefined &&
    other !== undefined &&
    (chosen.traceId !== other.traceId || chosen.spanId !== other.spanId)
  ) {
    links = [{ context: other, attributes: { 'meshtrace.link.format': w3cWins ? 'b3' : 'w3c' } }];
  }
  let result: ExtractOutcome;
  let samplingHint: Extraction['samplingHint'];
  let random = false;
  if (chosen === undefined) {
    // Not continued: a malformed format in the list explains it better than a missing one.
    const w3cBad = typeof w3c === 'string' && w3c !== 'missing' ? w3c : undefined;
    const b3Bad = b3 === 'bad-b3' ? b3 : undefined;
    const first = b3First ? (b3Bad ?? w3cBad) : (w3cBad ?? b3Bad);
    result = first === undefined ? MISSING : MALFORMED[first];
    if (b3 === B3_DENY) samplingHint = 'deny';
    // The SDK generates the fresh root's trace id randomly, so Level 2 lets us say so downstream.
    random = true;
  } else if (w3cWins) {
    result = CONTINUED.w3c;
    random = (chosen.traceFlags & FLAG_RANDOM) !== 0;
    // §3.3: tracestate only means something beside a valid traceparent.
    if (rawTracestate !== undefined && rawTracestate !== '') chosen.traceState = MeshTraceState.inbound(rawTracestate);
  } else {
    result = CONTINUED.b3;
    if ((b3 as B3Context).sampled === undefined) samplingHint = 'defer';
  }
  const baggage = rawBaggage === undefined || rawBaggage === '' ? undefined : new InboundBaggage(rawBaggage, base);
  if (count && unreadable) recordUnreadable('the getter threw');
  else if (count) recordOutcome(result, rawTraceparent);
  return new ExtractedContext(
    base,
    chosen,
    baggage,
    random,
    result,
    links,
    samplingHint,
    typeof b3 === 'object' && b3.debug,
  );
}

/** The result of an extraction, for callers that want its parts. */
function resultOf(ctx: ExtractedContext): ExtractResult {
  return { context: ctx, outcome: ctx.outcome, links: ctx.links };
}

/** What the global propagator did with a carrier, whichever propagator it is. */
function extractGlobal<C>(carrier: C, getter: TextMapGetter<C>, base: Context): ExtractResult {
  const before = base.getValue(EXTRACTION_KEY);
  let ctx: Context;
  try {
    ctx = propagation.extract(base, carrier, getter);
  } catch {
    // Someone else's propagator threw: extract as the default MeshPropagator would.
    return resultOf(extractWith(DEFAULT_CONFIG, carrier, getter, base));
  }
  const found = ctx.getValue(EXTRACTION_KEY) as Extraction | undefined;
  if (found !== undefined && found !== before) return { context: ctx, outcome: found.outcome, links: found.links };
  if (ctx === base && propagation.fields().length === 0) {
    // No propagator registered: extract as the default MeshPropagator would.
    return resultOf(extractWith(DEFAULT_CONFIG, carrier, getter, base));
  }
  // Someone else's propagator: classify what came in so the outcome is still counted.
  let raw: unknown;
  try {
    raw = getter.get(carrier, 'traceparent');
  } catch {
    raw = NaN;
  }
  const result = outcomeOf(parseTraceparent(raw));
  recordOutcome(result, raw);
  // A header meshtrace rejects is never continued, even where the other propagator accepted it.
  if (result.outcome === 'malformed' && trace.getSpanContext(ctx)?.isRemote === true) ctx = trace.deleteSpan(ctx);
  return { context: ctx, outcome: result, links: undefined };
}

/** The default extraction: W3C first, then B3, with baggage. */
export const DEFAULT_CONFIG: ExtractConfig = Object.freeze({
  formats: Object.freeze(['w3c', 'b3'] as TraceFormat[]),
  baggage: true,
});

/**
 * Extracts the trace context from HTTP request headers (Node's lower-cased header object) through
 * the global propagator. A missing or malformed context gives a fresh root; every outcome is
 * counted. Never throws.
 * @example
 * const { context: ctx, outcome } = extractRequestContext(req.headers);
 * context.with(ctx, () => handle(req, res));
 */
export function extractRequestContext(
  headers: Readonly<Record<string, unknown>>,
  base: Context = ROOT_CONTEXT,
): ExtractResult {
  return extractGlobal(headers, defaultTextMapGetter as TextMapGetter<Readonly<Record<string, unknown>>>, base);
}

/**
 * Extracts from any carrier through a `TextMapGetter` (messages, metadata, frames), with the same
 * validation, outcome and counting as {@link extractRequestContext}.
 */
export function extractContext<C>(
  carrier: C,
  getter: TextMapGetter<C> = defaultTextMapGetter,
  base: Context = ROOT_CONTEXT,
): ExtractResult {
  return extractGlobal(carrier, getter, base);
}
