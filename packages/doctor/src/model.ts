import {
  ATTR_PROBE,
  ATTR_PROPAGATION_FORMAT,
  ATTR_PROPAGATION_OUTCOME,
  ATTR_PROPAGATION_REASON,
  ATTR_REQUEST_ID,
} from '@meshtrace/core';

/** A span attribute value as OTLP carries it (arrays of scalars; nested values flattened to JSON text). */
export type AttributeValue = string | number | boolean | ReadonlyArray<string | number | boolean>;

/** Attributes by key. */
export type Attributes = Readonly<Record<string, AttributeValue>>;

/** OTLP span kinds, by name. */
export type SpanKindName = 'unspecified' | 'internal' | 'server' | 'client' | 'producer' | 'consumer';

/**
 * One span as the doctor sees it, whatever it came from (OTLP protobuf or JSON, Jaeger, Tempo):
 * ids in lower-case hex, times in milliseconds since the epoch (fractional).
 */
export interface Span {
  readonly traceId: string;
  readonly spanId: string;
  /** Absent for a root span. */
  readonly parentSpanId: string | undefined;
  readonly name: string;
  readonly kind: SpanKindName;
  /** The resource's `service.name` (`unknown` when it has none). */
  readonly service: string;
  readonly startMs: number;
  readonly endMs: number;
  readonly attributes: Attributes;
  readonly resource: Attributes;
  readonly status: { readonly code: 'unset' | 'ok' | 'error'; readonly message?: string };
}

/** The span attributes meshtrace writes and the doctor reads. */
export const ATTR = {
  outcome: ATTR_PROPAGATION_OUTCOME,
  reason: ATTR_PROPAGATION_REASON,
  format: ATTR_PROPAGATION_FORMAT,
  /** Copied from the `meshtrace.probe` baggage entry by meshtrace's server side. */
  probe: ATTR_PROBE,
  /** OpenTelemetry's captured request header (instrumentation-http `headersToSpanAttributes`). */
  requestId: ATTR_REQUEST_ID,
} as const;

/** The baggage key (and span attribute) that ties every span of one probe together. */
export const PROBE_BAGGAGE_KEY = ATTR_PROBE;
