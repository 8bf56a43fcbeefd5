// What an application calls. What only adapter and carrier authors need is in `@meshtrace/core/adapter`.
export { MeshPropagator } from './propagation/propagator';
export type { MeshPropagatorOptions } from './propagation/propagator';
export { extractContext, extractRequestContext } from './propagation/extract';
export type { ExtractResult } from './propagation/extraction';
export type { ExtractOutcome, MalformedReason, TraceFormat, TrustReason } from './propagation/outcome';
export { bufferHeaderSetter, headerGetter, headerSetter } from './propagation/carrier';
export type { HeaderCarrier } from './propagation/carrier';
export { checkPropagation } from './internal/diagnostics';
export {
  ATTR_PROBE,
  ATTR_PROPAGATION_FORMAT,
  ATTR_PROPAGATION_OUTCOME,
  ATTR_PROPAGATION_REASON,
  ATTR_REQUEST_ID,
} from './span-attributes';
export type { MeshTraceOptions, MeshTraceRouteOptions } from './server/options';
export type { InboundPolicy, InboundTrust, InboundTrustPolicy } from './server/trust';
export { FLAG_RANDOM, FLAG_SAMPLED, formatTraceparent, isValidId, parseTraceparent } from './w3c/traceparent';
export type { Traceparent, TraceparentReason } from './w3c/traceparent';
export { MAX_TRACESTATE_LENGTH, MAX_TRACESTATE_MEMBERS, parseTracestate, serializeTracestate } from './w3c/tracestate';
export type { TracestateReason } from './w3c/tracestate';
export { BAGGAGE_LIMITS, parseBaggage, serializeBaggage } from './w3c/baggage';
export type { BaggageDropReason, ParsedBaggage, SerializedBaggage } from './w3c/baggage';
export { B3_DENY, formatB3Single, parseB3Multi, parseB3Single } from './w3c/b3';
export type { B3Context, B3Reason } from './w3c/b3';
