import { SpanStatusCode, trace } from '@opentelemetry/api';
import type { Attributes, Span, TextMapSetter, Tracer, TracerProvider } from '@opentelemetry/api';
import type { Metadata } from '@grpc/grpc-js';
import { callHook, preview, resolveOptions as resolveCommon, warner } from '@meshtrace/core/adapter';

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

/** Span name `package.Service/Method` and the RPC attributes of a method path (semconv RPC spans). */
export function rpcAttributes(path: string): [string, Attributes] {
  const name = path.charCodeAt(0) === 47 /* / */ ? path.slice(1) : path;
  const slash = name.lastIndexOf('/');
  const attributes: Attributes = { 'rpc.system': 'grpc' };
  if (slash < 0) {
    attributes['rpc.service'] = name;
  } else {
    attributes['rpc.service'] = name.slice(0, slash);
    attributes['rpc.method'] = name.slice(slash + 1);
  }
  return [name, attributes];
}

/**
 * Sets `<prefix>.address` and `<prefix>.port` from `host:port`, `[v6]:port` or a bare host.
 * Nothing is set for values grpc-js uses when it does not know (`unknown`, empty).
 */
export function setAddress(
  attributes: Attributes,
  prefix: 'server' | 'network.peer',
  hostPort: string | undefined,
): void {
  // A request without :authority (HTTP/2 lets a client omit it) leaves grpc-js without a host.
  if (typeof hostPort !== 'string' || hostPort.length === 0 || hostPort === 'unknown') return;
  const close = hostPort.charCodeAt(0) === 91 /* [ */ ? hostPort.indexOf(']') : -1;
  const colon = hostPort.indexOf(':', close + 1);
  // A second colon outside brackets is a bare IPv6 address, not a port.
  const hasPort = colon > 0 && hostPort.indexOf(':', colon + 1) < 0;
  const host = hasPort ? hostPort.slice(0, colon) : hostPort;
  attributes[`${prefix}.address`] = close > 0 ? host.slice(1, close) : host;
  const port = hasPort ? Number(hostPort.slice(colon + 1)) : NaN;
  if (Number.isInteger(port) && port > 0 && port < 65536) attributes[`${prefix}.port`] = port;
}

/**
 * The endpoint of a gRPC target URI (gRPC naming, doc/naming.md): `dns:///svc:50051` gives `svc:50051`,
 * `ipv4:10.0.0.1:80,10.0.0.2:80` its first address, `unix:/run/app.sock` the socket path.
 */
export function targetEndpoint(target: string): string {
  const m = /^([a-z][a-z0-9+.-]*):(?:\/\/([^/]*)\/)?(.*)$/i.exec(target);
  if (m === null) return target;
  const [, scheme, authority, path] = m;
  // `unix:///run/app.sock` is absolute: the empty authority swallowed its leading slash.
  if (scheme.startsWith('unix')) return authority === undefined ? path : '/' + path;
  const comma = path.indexOf(',');
  return comma < 0 ? path : path.slice(0, comma);
}

/** Ends a call's span once with its status: `rpc.grpc.status_code`, ERROR when `isError`, then the hook. */
export function endSpan(span: Span, status: GrpcStatus, isError: boolean, o: Resolved): void {
  span.setAttribute('rpc.grpc.status_code', status.code);
  if (isError) span.setStatus({ code: SpanStatusCode.ERROR, message: status.details });
  callHook('responseHook', o.responseHook, span, status);
  span.end();
}

/** Writes into grpc-js `Metadata`; a value it refuses is reported, never thrown into the call. */
export const metadataSetter: TextMapSetter<Metadata> = {
  set(metadata, key, value) {
    try {
      metadata.set(key, value);
    } catch (err) {
      warner.warn(
        `grpc:inject:${key}`,
        () =>
          `${PACKAGE}: could not write ${key} ${preview(value)} into gRPC metadata: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
  },
};
