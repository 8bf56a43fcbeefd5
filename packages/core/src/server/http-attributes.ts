import { ATTR_PROBE, ATTR_REQUEST_ID } from '../span-attributes';
import type { Attributes } from '@opentelemetry/api';
import type { IncomingMessage } from 'node:http';
import { parseBaggage } from '../w3c/baggage';

const KNOWN_METHODS = new Set([
  'GET',
  'HEAD',
  'POST',
  'PUT',
  'DELETE',
  'CONNECT',
  'OPTIONS',
  'TRACE',
  'PATCH',
  'QUERY',
]);

/** The semconv `http.request.method` for a method as sent: a known method matched exactly, else `_OTHER`. */
export function httpMethod(raw: string): string {
  return KNOWN_METHODS.has(raw) ? raw : '_OTHER';
}

/** The host and port a request was sent to, from its `Host` header (the scheme's default port when it names none). */
export function hostAndPort(host: string | undefined, encrypted: boolean): [string | undefined, number] {
  const defaultPort = encrypted ? 443 : 80;
  if (!host) return [undefined, defaultPort];
  const close = host.charCodeAt(0) === 91 /* [ */ ? host.indexOf(']') : -1;
  const colon = host.indexOf(':', close + 1);
  if (colon < 0) return [close > 0 ? host.slice(1, close) : host, defaultPort];
  const port = Number(host.slice(colon + 1));
  return [
    close > 0 ? host.slice(1, close) : host.slice(0, colon),
    Number.isInteger(port) && port > 0 ? port : defaultPort,
  ];
}

const ENVOY_ISTIO = 'x-envoy-peer-metadata';

/** `x-request-id` and which proxy forwarded the request, from the headers it adds. */
export function proxyAttributes(headers: IncomingMessage['headers'], attributes: Attributes): void {
  const requestId = headers['x-request-id'];
  if (typeof requestId === 'string') attributes[ATTR_REQUEST_ID] = [requestId];
  let proxy: string | undefined;
  for (const name in headers) {
    if (name.charCodeAt(0) === 108 /* l */ && name.startsWith('l5d-')) {
      proxy = 'linkerd';
      break;
    }
    if (name.charCodeAt(0) === 120 /* x */) {
      if (name.startsWith(ENVOY_ISTIO)) {
        proxy = 'istio';
        break;
      }
      if (name.startsWith('x-envoy-') || name === 'x-forwarded-client-cert') proxy = 'envoy';
    }
  }
  if (proxy !== undefined) attributes['meshtrace.proxy'] = proxy;
}

/** The baggage key a `meshtrace probe` sends, copied onto the server span (a probe-only key: no cardinality risk). */
const PROBE = ATTR_PROBE;

/**
 * Copies the `meshtrace.probe` baggage entry onto the span's attributes, read from the raw header, so a
 * hop that lost or distrusted the caller's trace can still be tied to the probe that reached it.
 */
export function probeAttribute(baggage: IncomingMessage['headers']['baggage'], attributes: Attributes): void {
  if (baggage === undefined || !(typeof baggage === 'string' ? baggage : String(baggage)).includes(PROBE)) return;
  const value = parseBaggage(baggage).baggage?.getEntry(PROBE)?.value;
  if (value !== undefined) attributes[PROBE] = value;
}
