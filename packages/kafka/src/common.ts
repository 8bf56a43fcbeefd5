import { SpanStatusCode, trace } from '@opentelemetry/api';
import type { Attributes, Span, Tracer, TracerProvider } from '@opentelemetry/api';
import { optionError } from '@meshtrace/core';

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

/** Marks the span failed; `error.type` is the Kafka error code name when there is one (semconv `KAFKA_STORAGE_ERROR`). */
export function recordError(span: Span, error: unknown): void {
  if (error instanceof Error) {
    span.recordException(error);
    const code = (error as { type?: unknown }).type;
    span.setAttribute('error.type', typeof code === 'string' && code.length > 0 ? code : error.name || 'Error');
    span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
  } else {
    span.setAttribute('error.type', '_OTHER');
    span.setStatus({ code: SpanStatusCode.ERROR, message: String(error) });
  }
}

/** Checks the options both factories share; returns the tracer of `tracerProvider`, if given. */
export function checkCommon(options: unknown, hookName: string): Tracer | undefined {
  if (options === null || typeof options !== 'object') throw optionError(PACKAGE, 'options', 'an object', options);
  const o = options as { tracerProvider?: TracerProvider } & Record<string, unknown>;
  if (o.tracerProvider !== undefined && typeof o.tracerProvider?.getTracer !== 'function') {
    throw optionError(PACKAGE, 'tracerProvider', 'a TracerProvider', o.tracerProvider);
  }
  if (o[hookName] !== undefined && typeof o[hookName] !== 'function') throw optionError(PACKAGE, hookName, 'a function', o[hookName]);
  return o.tracerProvider?.getTracer(PACKAGE);
}

/** The fixed tracer, or the global provider's at call time so setup order does not matter. */
export function tracerOf(fixed: Tracer | undefined): Tracer {
  return fixed ?? trace.getTracer(PACKAGE);
}

/** Says what a non-kafkajs argument was, for the TypeError. */
export function typeName(value: unknown): string {
  return value === null ? 'null' : typeof value;
}
