// `@meshtrace/core/adapter`: what authors of adapter and carrier packages build on. Applications use the main entry.

// A server adapter: one SERVER span per request, with the framework's request, response and route.
/** Validates an adapter's options at setup and returns its per-request tracing (`start(req, res)`). */
export { createServerTracing } from './server/server-tracing';
/** One request's context, SERVER span and propagation outcome, as `start` returns it. */
export { RequestTrace } from './server/request-trace';
/** Checks a route's own options at setup into the policy `start` takes for that route's requests. */
export { RoutePolicy } from './server/route-policy';
/** Route policies carried on middleware (`meshTraceRoute()`), found before routing; the warnings when one is not. */
export { createRouteMarker } from './server/route-policy';
/** The request method as HTTP semantic conventions name it (`_OTHER` for one they do not know). */
export { httpMethod } from './server/http-attributes';

// Outbound: one of each trace header on the wire, the caller's own merged or replaced.
/** Decides an outbound call's context and trace headers from the active context and the caller's headers. */
export { outboundTrace } from './propagation/outbound';
/** What {@link outboundTrace} decided for one call, and the headers that carry it (`traceHeaders`, `rewrite`). */
export type { OutboundTrace } from './propagation/outbound';
/** True when `suppressTracing` marked the context: an exporter's own request, never traced. */
export { isTracingSuppressed } from './internal/otel-internals';

// Carriers: messages, frames and calls, with the outcome every instrumentation records.
/** Writes an outcome's `meshtrace.propagation.*` span attributes. */
export { outcomeAttributes } from './propagation/outcome';
/** Counts a carrier that could not be read as `malformed` / `bad-format`, and warns. */
export { recordUnreadable } from './propagation/outcome';
/** What the extraction that made a context found (its outcome, links and sampling hint), if meshtrace made it. */
export { extractionOf } from './propagation/extraction';
/** Marks a context whose trace id is known to be random (W3C trace-context Level 2 flag). */
export { RANDOM_TRACE_ID_KEY } from './propagation/extracted-context';
/** Runs a handler in a span's context and ends the span when it settles, errors recorded by the one rule. */
export { runInSpan } from './internal/settle';
/** Records an error on a span by the one rule: the exception event, ERROR status unless it is a 4xx. */
export { recordSpanError } from './internal/errors';

// Options and diagnostics: bad configuration throws at setup, nothing on the request path does.
/** Checks the options every instrumentation shares (`tracerProvider`, `ignore`, the hooks) at setup. */
export { resolveOptions } from './server/options';
/** Checks a factory's options against their rules at setup; a `TypeError` names the package and option. */
export { checkOptions } from './internal/options';
/** The `TypeError` a bad option deserves, named after the package and the option. */
export { optionError } from './internal/options';
/** Calls a user hook; a throw is reported and never reaches the request. */
export { callHook } from './internal/diagnostics';
/** The rate-limited warner every meshtrace package reports through (`diag`, one line per reason every 10 s). */
export { warner } from './internal/diagnostics';
/** A counter over constant attribute objects, tallied in the process and reported when metrics are collected. */
export { TallyCounter } from './internal/diagnostics';
