import { channel } from 'node:diagnostics_channel';
import http from 'node:http';
import https from 'node:https';

// Node's fetch (undici) publishes every request here before its headers are written. In practice only
// tracers listen (instrumentation-undici, dd-trace, Sentry): they start a CLIENT span and append their headers.
// Looked up once: channels are shared by name, so this object's `hasSubscribers` is live and a field read.
const requestCreate = channel('undici:request:create');

/** True while something subscribed to undici's `undici:request:create` will trace and inject each fetch. */
export function fetchInstrumented(): boolean {
  return requestCreate.hasSubscribers;
}

/** True when `fn` is a shimmer wrapper (the `__wrapped` mark of OpenTelemetry's and dd-trace's shimmer). */
export function isWrapped(fn: unknown): boolean {
  return typeof fn === 'function' && (fn as { __wrapped?: unknown }).__wrapped === true;
}

/** True while both `http.request` and `https.request` are wrapped by an instrumentation that injects. */
export function httpInstrumented(): boolean {
  // Read from the module objects at call time: instrumentations wrap and unwrap them while the process runs.
  return isWrapped(http.request) && isWrapped(https.request);
}
