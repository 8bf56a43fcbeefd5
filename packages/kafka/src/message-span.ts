import { trace } from '@opentelemetry/api';
import type { Attributes, Span, Tracer } from '@opentelemetry/api';
import { recordSpanError } from '@meshtrace/core/adapter';

/** The package name configuration errors start with, and the tracer's instrumentation scope. */
export const PACKAGE = '@meshtrace/kafka';

/** Attributes every span of this package carries. */
export const SYSTEM: Attributes = Object.freeze({ 'messaging.system': 'kafka' });

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * `messaging.kafka.message.key`: semconv asks for the key's string form, and for no value when it
 * has no unambiguous one, so a key that is not valid UTF-8 is left out.
 */
export function keyAttribute(key: unknown): string | undefined {
  if (typeof key === 'string') return key;
  if (key instanceof Uint8Array) {
    try {
      return utf8.decode(key);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/**
 * Marks the span failed; `error.type` is the Kafka error code name when there is one (semconv `KAFKA_STORAGE_ERROR`).
 */
export function recordError(span: Span, error: unknown): void {
  const code = error instanceof Error ? (error as { type?: unknown }).type : undefined;
  recordSpanError(
    span,
    error,
    typeof code === 'string' && code.length > 0 ? code : error instanceof Error ? undefined : '_OTHER',
  );
}

/** How a consumer span records a failed handler and ends: with the Kafka error code. */
export const KAFKA_ERRORS = Object.freeze({ record: recordError });

/** The fixed tracer, or the global provider's at call time so setup order does not matter. */
export function tracerOf(fixed: Tracer | undefined): Tracer {
  return fixed ?? trace.getTracer(PACKAGE);
}

/** Says what a non-kafkajs argument was, for the TypeError. */
export function typeName(value: unknown): string {
  return value === null ? 'null' : typeof value;
}
