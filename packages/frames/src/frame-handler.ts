import { SpanKind, trace } from '@opentelemetry/api';
import type { Attributes, Span, TracerProvider } from '@opentelemetry/api';
import { extractContext, headerGetter } from '@meshtrace/core';
import {
  callHook,
  checkOptions,
  optionError,
  outcomeAttributes,
  recordUnreadable,
  runInSpan,
} from '@meshtrace/core/adapter';
import { decodeFrame } from './frame';
import type { Frame, FrameData, FrameError } from './frame';

const PKG = '@meshtrace/frames';

/** Options of {@link meshFrameHandler}; all optional. */
export interface FrameHandlerOptions {
  /** Where spans come from. Default: the global tracer provider at message time. */
  tracerProvider?: TracerProvider;
  /** The span name, `{operation} {destination}` as messaging spans are named. Default `'process frame'`. */
  spanName?: string;
  /**
   * Called once the span has started, e.g. to add attributes from the frame; a throw is reported, never breaks the
   * message.
   */
  frameHook?: (span: Span, frame: Frame) => void;
  /**
   * Called with bytes that are not a frame (the handler never sees them), e.g. to close the socket; a throw is
   * reported.
   */
  onInvalidFrame?: (reason: FrameError, data: FrameData) => void;
}

/** Handles one frame inside its span; `this` is whatever the transport calls the listener with. */
export type FrameHandler<This, R> = (this: This, frame: Frame) => R;

// Bytes that are not a frame carry no readable context: counted the way core counts a carrier it cannot read.

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
export function meshFrameHandler<This = unknown, R = unknown>(
  handler: FrameHandler<This, R>,
  options?: FrameHandlerOptions,
): (this: This, data: FrameData) => R | undefined {
  if (typeof handler !== 'function') throw optionError(PKG, 'handler', 'a function', handler);
  const {
    tracerProvider,
    spanName = 'process frame',
    frameHook,
    onInvalidFrame,
  } = checkOptions(PKG, options, {
    tracerProvider: 'tracerProvider',
    spanName: 'non-empty string',
    frameHook: 'function',
    onInvalidFrame: 'function',
  });
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
    };
    outcomeAttributes(extracted.outcome, attributes);
    // CONSUMER, not SERVER: a frame is a one-way message, nobody waits on this span for a reply
    // (OpenTelemetry messaging conventions, span kind of "process" operations).
    const span = (fixedTracer ?? trace.getTracer(PKG)).startSpan(
      spanName,
      { kind: SpanKind.CONSUMER, attributes },
      extracted.context,
    );
    callHook('frameHook', frameHook, span, frame);
    return runInSpan(span, trace.setSpan(extracted.context, span), handler, this, frame);
  };
}
