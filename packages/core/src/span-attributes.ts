/** `meshtrace.propagation.outcome` on a SERVER or CONSUMER span: continued, missing, malformed, restarted, ignored. */
export const ATTR_PROPAGATION_OUTCOME = 'meshtrace.propagation.outcome';
/** `meshtrace.propagation.reason`: why the trace context was not continued (`bad-trace-id`, a trust reason…). */
export const ATTR_PROPAGATION_REASON = 'meshtrace.propagation.reason';
/** `meshtrace.propagation.format`: the header format the context came in (`w3c`, `b3`). */
export const ATTR_PROPAGATION_FORMAT = 'meshtrace.propagation.format';
/** `meshtrace.probe`: the probe id `meshtrace probe` sends in baggage, copied onto the SERVER span. */
export const ATTR_PROBE = 'meshtrace.probe';
/** The `x-request-id` a mesh forwards, as OpenTelemetry records a captured request header (a one-element array). */
export const ATTR_REQUEST_ID = 'http.request.header.x-request-id';
