import { context } from '@opentelemetry/api';
import type { Context, Span } from '@opentelemetry/api';
import { recordSpanError } from './errors';

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    value !== null &&
    (typeof value === 'object' || typeof value === 'function') &&
    typeof (value as PromiseLike<unknown>).then === 'function'
  );
}

/** How {@link runInSpan} reports the end of a handler. */
export interface SettleOptions {
  /** Records a thrown error or rejection on the span. Default `recordSpanError`. */
  readonly record?: (span: Span, error: unknown) => void;
  /** Called once the handler has returned, thrown or settled, after `record`. Default: end the span. */
  readonly settled?: (span: Span, failed: boolean) => void;
}

function endSpan(span: Span): void {
  span.end();
}

/**
 * Runs `fn.call(thisArg, arg)` inside `ctx` and ends `span` once it returns, throws, or (for a promise)
 * settles; a throw or rejection is recorded on the span and passed on unchanged. The caller gets what
 * `fn` returned, or a promise that settles like it, so an unhandled rejection stays unhandled.
 * @example return runInSpan(span, trace.setSpan(extracted.context, span), handler, this, message);
 */
export function runInSpan<T, A, R>(
  span: Span,
  ctx: Context,
  fn: (this: T, arg: A) => R,
  thisArg: T,
  arg: A,
  options?: SettleOptions,
): R {
  const record = options?.record ?? recordSpanError;
  const settled = options?.settled ?? endSpan;
  let result: R;
  try {
    result = context.with(ctx, fn, thisArg, arg);
  } catch (err) {
    record(span, err);
    settled(span, true);
    throw err;
  }
  if (!isThenable(result)) {
    settled(span, false);
    return result;
  }
  return result.then(
    (value) => {
      settled(span, false);
      return value;
    },
    (err: unknown) => {
      record(span, err);
      settled(span, true);
      throw err;
    },
  ) as R;
}
