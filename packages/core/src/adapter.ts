// `@meshtrace/core/adapter`: the parts of core that adapter and carrier packages build on. Applications use the main entry.
export { createServerTracing, ServerTracing } from './server/server-tracing';
export { RequestTrace } from './server/request-trace';
export { createRoutePolicy, RoutePolicy } from './server/route-policy';
export { resolveOptions } from './server/options';
export type { CommonOptions, ResolvedOptions, ServerAdapter } from './server/options';
export { httpMethod } from './server/http-attributes';
export { extractionOf } from './propagation/extraction';
export type { Extraction } from './propagation/extraction';
export { outcomeAttributes, outcomeOf, recordOutcome, recordUnreadable } from './propagation/outcome';
export { RANDOM_TRACE_ID_KEY } from './propagation/extracted-context';
export { outboundTrace, rewriteHeaders, traceHeaders } from './propagation/outbound';
export type { OutboundTrace } from './propagation/outbound';
export { MeshTraceState } from './w3c/tracestate';
export { errorStatus, recordRequestError, recordSpanError } from './internal/errors';
export { runInSpan } from './internal/settle';
export type { SettleOptions } from './internal/settle';
export { checkOptions, optionError } from './internal/options';
export type { OptionRule } from './internal/options';
export {
  LazyCounter,
  PACKAGE,
  RateLimitedWarner,
  TallyCounter,
  callHook,
  hasContextManager,
  preview,
  recordDropped,
  warner,
} from './internal/diagnostics';
export { isTracingSuppressed, registeredGlobal } from './internal/otel-internals';
export { toDictionaryMode } from './internal/dictionary';
