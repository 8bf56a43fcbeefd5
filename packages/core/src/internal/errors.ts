import { SpanStatusCode } from '@opentelemetry/api';
import type { Span } from '@opentelemetry/api';

/**
 * Records `error` on `span`: an exception event, `error.type` (`type`, else the error's name) and ERROR status.
 * @example recordSpanError(span, err, 'KAFKA_STORAGE_ERROR');
 */
export function recordSpanError(span: Span, error: unknown, type?: string): void {
  // Duck-typed: errors from another realm (vm, workers' structured clones) fail instanceof Error.
  const err = errorLike(error) ? error : new Error(String(error));
  span.recordException(err);
  span.setAttribute('error.type', type || err.name || 'Error');
  span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
}

function errorLike(value: unknown): value is Error {
  return typeof value === 'object' && value !== null && typeof (value as Error).message === 'string';
}

/**
 * The HTTP status an error asks for (`status` / `statusCode`, as http-errors, Koa and Fastify set), if it is one
 * (400-599).
 */
export function errorStatus(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const s =
    (error as { status?: unknown; statusCode?: unknown }).status ?? (error as { statusCode?: unknown }).statusCode;
  return typeof s === 'number' && Number.isInteger(s) && s >= 400 && s < 600 ? s : undefined;
}

/**
 * The one rule for an error thrown while serving a request, in every adapter: the exception event is
 * always recorded; the span is marked ERROR unless the answer is a 4xx, which the HTTP semantic
 * conventions leave unset on a SERVER span (the client's fault, not the server's). `status` is the
 * answer when the framework knows it, else the status the error asks for. Returns true when it marked ERROR.
 */
export function recordRequestError(
  span: Span,
  error: unknown,
  status: number | undefined = errorStatus(error),
): boolean {
  if (status !== undefined && status >= 400 && status < 500) {
    span.recordException(errorLike(error) ? error : new Error(String(error)));
    return false;
  }
  recordSpanError(span, error);
  return true;
}
