import { SpanStatusCode } from '@opentelemetry/api';
import type { Attributes, Span } from '@opentelemetry/api';
import { callHook } from '@meshtrace/core/adapter';
import type { GrpcStatus, Resolved } from './options';

// What both interceptors write on a call's span: its name and RPC attributes (semconv RPC spans), the
// addresses of its ends, and how it ended.

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
  if (scheme.startsWith('unix')) return authority === undefined ? path : `/${path}`;
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
