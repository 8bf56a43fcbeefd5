import { trace } from '@opentelemetry/api';
import type { Span, Tracer, TracerProvider } from '@opentelemetry/api';
import type { Metadata } from '@grpc/grpc-js';
import { resolveOptions as resolveCommon } from '@meshtrace/core/adapter';

/** The package name configuration errors and diagnostics start with. */
export const PACKAGE = '@meshtrace/grpc';

/** What `ignore` and `requestHook` see of a call. */
export interface GrpcCall {
  /** The method path, `/package.Service/Method`. */
  readonly path: string;
  /** Request metadata: as received on the server; as sent, trace context included, on the client. */
  readonly metadata: Metadata;
}

/** How a call ended, as `responseHook` sees it. */
export interface GrpcStatus {
  /** The gRPC status code (`status.OK` is 0). */
  readonly code: number;
  readonly details?: string;
  readonly metadata?: Metadata | null;
}

/** Options of {@link meshServerInterceptor} and {@link meshClientInterceptor}; all optional. */
export interface MeshGrpcOptions {
  /** Where spans come from. Default: the global tracer provider at call time. */
  tracerProvider?: TracerProvider;
  /**
   * Calls that get no span but still carry the caller's context, e.g. `['/grpc.health.v1.Health/Check']`:
   * exact method paths, regular expressions, or a predicate. Default: none.
   */
  ignore?: ReadonlyArray<string | RegExp> | ((path: string, call: GrpcCall) => boolean);
  /** Called once the call's span has started; a throw is reported, never breaks the call. */
  requestHook?: (span: Span, call: GrpcCall) => void;
  /** Called with the final status just before the span ends; a throw is reported, never breaks the call. */
  responseHook?: (span: Span, status: GrpcStatus) => void;
}

/** Options checked and merged once, for the per-call path. */
export interface Resolved {
  readonly tracer: Tracer | undefined;
  readonly ignored: (call: GrpcCall) => boolean;
  readonly requestHook: MeshGrpcOptions['requestHook'];
  readonly responseHook: MeshGrpcOptions['responseHook'];
}

const never = () => false;

/** Validates options at setup: a wrong type throws a `TypeError` naming the package and the option. */
export function resolveOptions(options: MeshGrpcOptions | undefined): Resolved {
  const o = resolveCommon<GrpcCall, GrpcStatus>(PACKAGE, options, 'method paths');
  const ignored = o.ignored;
  return {
    tracer: o.tracer,
    ignored: ignored === undefined ? never : (call) => ignored(call.path, call),
    requestHook: o.requestHook,
    responseHook: o.responseHook,
  };
}

/** The tracer of the options, else the global one as it is now (setup order does not matter). */
export function tracerOf(o: Resolved): Tracer {
  return o.tracer ?? trace.getTracer(PACKAGE);
}
