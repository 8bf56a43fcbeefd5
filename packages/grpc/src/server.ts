import { EventEmitter } from 'node:events';
import { SpanKind, context, trace } from '@opentelemetry/api';
import type { Context, Span } from '@opentelemetry/api';
import { ServerInterceptingCall, status as Status } from '@grpc/grpc-js';
import type {
  Metadata,
  ServerInterceptingCallInterface,
  ServerInterceptor,
  ServerMethodDefinition,
} from '@grpc/grpc-js';
import { extractContext, headerGetter } from '@meshtrace/core';
import { callHook, optionError, outcomeAttributes } from '@meshtrace/core/adapter';
import { PACKAGE, resolveOptions, tracerOf } from './options';
import type { GrpcStatus, MeshGrpcOptions, Resolved } from './options';
import { endSpan, rpcAttributes, setAddress } from './rpc-span';

/** Status codes that make a SERVER span an error (OpenTelemetry semconv, gRPC, "gRPC Status"). */
const SERVER_ERRORS = new Set<number>([
  Status.UNKNOWN,
  Status.DEADLINE_EXCEEDED,
  Status.UNIMPLEMENTED,
  Status.INTERNAL,
  Status.UNAVAILABLE,
  Status.DATA_LOSS,
]);

const CANCELLED: GrpcStatus = Object.freeze({ code: Status.CANCELLED, details: 'Cancelled by the client' });
const DEADLINE_EXCEEDED: GrpcStatus = Object.freeze({ code: Status.DEADLINE_EXCEEDED, details: 'Deadline exceeded' });

/**
 * Whether a cancel is the caller's deadline. On the wire both are an RST_STREAM, and the server's deadline
 * runs from when the call arrived, so the caller's own deadline cancel lands early by the request's
 * latency: a cancel in the last quarter of the allowed time counts as the deadline.
 */
function deadlinePassed(call: ServerInterceptingCallInterface, opened: number): boolean {
  const d = call.getDeadline();
  const deadline = d instanceof Date ? d.getTime() : d;
  if (!Number.isFinite(deadline)) return false;
  return Date.now() >= deadline - Math.max(0, deadline - opened) / 4;
}

/** One call on the server: its context, its SERVER span (none when ignored), ended once. */
class ServerCall {
  /** Set by {@link open}: grpc-js always delivers metadata before messages or half-close. */
  context!: Context;
  private span: Span | undefined;
  private readonly opened = Date.now();

  constructor(
    private readonly o: Resolved,
    private readonly path: string,
    private readonly call: ServerInterceptingCallInterface,
  ) {}

  open(metadata: Metadata): Context {
    // Metadata.toJSON() is a plain map of value lists (strings, Buffers for -bin keys), which core's getter reads.
    const extracted = extractContext(metadata.toJSON(), headerGetter, context.active());
    const info = { path: this.path, metadata };
    if (this.o.ignored(info)) {
      this.context = extracted.context;
      return this.context;
    }
    const [name, attributes] = rpcAttributes(this.path);
    outcomeAttributes(extracted.outcome, attributes);
    setAddress(attributes, 'server', this.call.getHost());
    setAddress(attributes, 'network.peer', this.call.getPeer());
    const span = tracerOf(this.o).startSpan(
      name,
      { kind: SpanKind.SERVER, attributes, links: extracted.links ? [...extracted.links] : undefined },
      extracted.context,
    );
    this.span = span;
    callHook('requestHook', this.o.requestHook, span, info);
    this.context = trace.setSpan(extracted.context, span);
    return this.context;
  }

  end(status: GrpcStatus): void {
    const span = this.span;
    if (span === undefined) return;
    this.span = undefined;
    endSpan(span, status, SERVER_ERRORS.has(status.code), this.o);
  }

  cancelled(): void {
    // grpc-js reports a passed deadline to handlers as a cancellation; the span says which it was.
    this.end(deadlinePassed(this.call, this.opened) ? DEADLINE_EXCEEDED : CANCELLED);
  }
}

/**
 * A grpc-js server interceptor: one SERVER span per call in the caller's trace; the handler and each message
 * it receives run in the call's context. Put it first in `interceptors`, and see {@link meshService} for streams.
 * @example
 * const server = new Server({ interceptors: [meshServerInterceptor()] });
 */
export function meshServerInterceptor(options?: MeshGrpcOptions): ServerInterceptor {
  const o = resolveOptions(options);
  return function meshServerInterceptor(
    method: ServerMethodDefinition<unknown, unknown>,
    call: ServerInterceptingCallInterface,
  ): ServerInterceptingCall {
    const c = new ServerCall(o, method.path, call);
    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, next) {
            context.with(c.open(metadata), next, undefined, metadata);
          },
          // Each message is delivered in a scope of its own over the call's context, never in the
          // context that happened to trigger the read, so nothing one message's handling sets reaches the next.
          onReceiveMessage(message, next) {
            context.with(c.context, next, undefined, message);
          },
          onReceiveHalfClose(next) {
            context.with(c.context, next);
          },
          onCancel() {
            c.cancelled();
          },
        });
      },
      sendStatus(status, next) {
        next(status);
        c.end(status);
      },
    });
  };
}

/**
 * Wraps a service implementation so every event of its calls runs in the call's context, even messages a
 * paused or piped stream emits later from another scope, and a handler's throw is recorded on the call's span.
 * @example
 * server.addService(EchoService, meshService({ unary(call, callback) { callback(null, call.request); } }));
 */
export function meshService<T extends object>(implementation: T): T {
  if (implementation === null || typeof implementation !== 'object')
    throw optionError(PACKAGE, 'implementation', 'an object', implementation);
  const wrapped: Record<string, unknown> = {};
  // Class instances keep their handlers on the prototype, where grpc-js finds them too.
  for (let o: object | null = implementation; o !== null && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
    for (const name of Object.getOwnPropertyNames(o)) {
      if (name === 'constructor' || Object.hasOwn(wrapped, name)) continue;
      const handler = (implementation as Record<string, unknown>)[name];
      if (typeof handler === 'function') wrapped[name] = wrapHandler(handler as Handler, implementation);
    }
  }
  return wrapped as T;
}

/** A grpc-js handler as the service implementation holds it: `(call)` or `(call, callback)`, on its instance. */
type Handler = (this: object, call: unknown, callback: unknown) => unknown;

function wrapHandler(handler: Handler, self: object) {
  return function meshHandler(call: unknown, callback: unknown): unknown {
    const ctx = context.active();
    if (call instanceof EventEmitter) context.bind(ctx, call);
    try {
      return handler.call(self, call, callback);
    } catch (err) {
      trace.getSpan(ctx)?.recordException(err instanceof Error ? err : String(err));
      throw err;
    }
  };
}
