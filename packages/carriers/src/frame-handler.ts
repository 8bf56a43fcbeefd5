import { SpanKind, context, trace } from '@opentelemetry/api';
import type { Attributes, Span, TracerProvider } from '@opentelemetry/api';
import { callHook, extractContext, headerGetter, optionError, recordSpanError, recordUnreadable } from '@meshtrace/core';
import { decodeFrame } from './frame';
import type { Frame, FrameData, FrameError } from './frame';

const PKG = '@meshtrace/carriers';

/** Options of {@link meshFrameHandler}; all optional. */
export interface FrameHandlerOptions {
  /** Where spans come from. Default: the global tracer provider at message time. */
  tracerProvider?: TracerProvider;
  /** The span name, `{operation} {destination}` as messaging spans are named. Default `'process frame'`. */
  spanName?: string;
  /** Called once the span has started, e.g. to add attributes from the frame; a throw is reported, never breaks the message. */
  frameHook?: (span: Span, frame: Frame) => void;
  /** Called with bytes that are not a frame (the handler never sees them), e.g. to close the socket; a throw is reported. */
  onInvalidFrame?: (reason: FrameError, data: FrameData) => void;
}

/** Handles one frame inside its span; `this` is whatever the transport calls the listener with. */
export type FrameHandler<This, R> = (this: This, frame: Frame) => R;

// Bytes that are not a frame carry no readable context: counted the way core counts a carrier it cannot read.

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as PromiseLike<unknown>).then === 'function';
}

/**
 * Wraps a frame handler into a message listener: decodes the frame, continues the sender's trace
 * from its header block (a missing or malformed context gives a fresh root, counted), and runs the
 * handler inside a CONSUMER span that ends when the handler returns or its promise settles.
 * Bytes that are not a frame never throw: they are counted as `malformed` / `bad-format`, reported
 * through `diag`, handed to `onInvalidFrame` and dropped; the handler does not run.
 * @example
 * wss.on('connection', (ws) => {
 *   ws.on('message', meshFrameHandler((frame) => chat(ws, frame.payload), { onInvalidFrame: () => ws.close(1002) }));
 * });
 */
export function meshFrameHandler<This = unknown, R = unknown>(handler: FrameHandler<This, R>, options?: FrameHandlerOptions): (this: This, data: FrameData) => R | undefined {
  if (typeof handler !== 'function') throw optionError(PKG, 'handler', 'a function', handler);
  if (options === null || (options !== undefined && typeof options !== 'object')) throw optionError(PKG, 'options', 'an object', options);
  const { tracerProvider, spanName = 'process frame', frameHook, onInvalidFrame } = options ?? {};
  if (tracerProvider !== undefined && typeof tracerProvider?.getTracer !== 'function') throw optionError(PKG, 'tracerProvider', 'a TracerProvider', tracerProvider);
  if (typeof spanName !== 'string' || spanName.length === 0) throw optionError(PKG, 'spanName', 'a non-empty string', spanName);
  if (frameHook !== undefined && typeof frameHook !== 'function') throw optionError(PKG, 'frameHook', 'a function', frameHook);
  if (onInvalidFrame !== undefined && typeof onInvalidFrame !== 'function') throw optionError(PKG, 'onInvalidFrame', 'a function', onInvalidFrame);
  const fixedTracer = tracerProvider?.getTracer(PKG);

  return function meshFrameListener(this: This, data: FrameData): R | undefined {
    const frame = decodeFrame(data);
    if (typeof frame === 'string') {
      recordUnreadable(`undecodable frame: ${frame}`);
      callHook('onInvalidFrame', onInvalidFrame, frame, data);
      return undefined;
    }
    // Each message starts from ROOT, not from the active context: socket callbacks run in the
    // context the connection was opened in, which is not this message's sender.
    const extracted = extractContext(frame.headers, headerGetter);
    const attributes: Attributes = {
      'messaging.operation.type': 'process',
      'messaging.message.body.size': frame.payload.length,
      'meshtrace.propagation.outcome': extracted.outcome.outcome,
    };
    if (extracted.outcome.reason !== undefined) attributes['meshtrace.propagation.reason'] = extracted.outcome.reason;
    // CONSUMER, not SERVER: a frame is a one-way message, nobody waits on this span for a reply
    // (OpenTelemetry messaging conventions, span kind of "process" operations).
    const span = (fixedTracer ?? trace.getTracer(PKG)).startSpan(spanName, { kind: SpanKind.CONSUMER, attributes }, extracted.context);
    callHook('frameHook', frameHook, span, frame);
    let result: R;
    try {
      result = context.with(trace.setSpan(extracted.context, span), handler, this, frame);
    } catch (err) {
      recordSpanError(span, err);
      span.end();
      throw err;
    }
    if (!isThenable(result)) {
      span.end();
      return result;
    }
    // The caller gets a promise that settles like the handler's, so an unhandled rejection stays unhandled.
    return result.then(
      (value) => {
        span.end();
        return value;
      },
      (err: unknown) => {
        recordSpanError(span, err);
        span.end();
        throw err;
      },
    ) as R;
  };
}
