import { createContextKey, metrics, trace } from '@opentelemetry/api';
import type { Context, Span, TracerProvider } from '@opentelemetry/api';

// Every shortcut core takes through OpenTelemetry's internals or V8's behaviour is switched here: the
// reads of the API's internals below and the emitter binding (emitter.ts). Each has a route through the
// public API, taken when the internals have another shape, and always when MESHTRACE_PUBLIC_API_ONLY=1
// (an escape hatch, and the bench's A/B of the shortcuts). @meshtrace/express's dictionary step and
// @meshtrace/node's check for a diag logger read the same variable.
let publicApiOnly = process.env.MESHTRACE_PUBLIC_API_ONLY === '1';

/** @internal Take only the public API's routes, as if every shortcut had stopped working. */
export function usePublicApiOnly(on: boolean): void {
  publicApiOnly = on;
}

/** @internal True while only the public API's routes are taken. */
export function onlyPublicApi(): boolean {
  return publicApiOnly;
}

// `@opentelemetry/core` (SDK 2 and 3) keeps these in the context under keys made by the API's
// `createContextKey`, which is `Symbol.for(description)`: the same symbols here, without depending on
// either SDK line. Tested against the real `@opentelemetry/core` in otel-internals.test.ts.
const SUPPRESS_TRACING_KEY = createContextKey('OpenTelemetry SDK Context Key SUPPRESS_TRACING');
const RPC_METADATA_KEY = createContextKey('OpenTelemetry SDK Context Key RPC_METADATA');

/**
 * Where `@opentelemetry/api` 1.x keeps what is registered with it (a tracer provider, meter provider, diag logger,
 * ...).
 */
const API_GLOBALS = Symbol.for('opentelemetry.js.api.1');

/**
 * The MeterProvider registered with the API, as stored, or undefined: one load, without the API's version checks,
 * to notice a new registration cheaply.
 */
export function registeredMeterProvider(): unknown {
  const registry = publicApiOnly ? undefined : (globalThis as { [API_GLOBALS]?: Record<string, unknown> })[API_GLOBALS];
  if (registry !== undefined && registry !== null && typeof registry === 'object') return registry.metrics;
  // Public route: the provider itself (a no-op one until something registers).
  return metrics.getMeterProvider();
}

/**
 * The tracer provider registered with the API, behind the API's proxy (`getDelegate`), so a caller can
 * cache a tracer until the registration changes. Undefined on the public route: ask `trace.getTracer` each time.
 */
export function globalTracerProvider(): TracerProvider | undefined {
  if (publicApiOnly) return undefined;
  const proxy = trace.getTracerProvider() as TracerProvider & { getDelegate?: () => TracerProvider };
  return typeof proxy.getDelegate === 'function' ? proxy.getDelegate() : undefined;
}

/** True when `suppressTracing` (from `@opentelemetry/core`) marked the context: exporters' own requests. */
export function isTracingSuppressed(ctx: Context): boolean {
  // Public route: none; an exporter's own request is then traced like any other.
  return !publicApiOnly && ctx.getValue(SUPPRESS_TRACING_KEY) === true;
}

/** What `@opentelemetry/core`'s `setRPCMetadata` stores: instrumentation-http records its SERVER span there. */
export interface RpcMetadata {
  type: string;
  span: Span;
  route?: string;
}

/**
 * The RPC metadata of an HTTP instrumentation's server span in `ctx`, if one is there: found even
 * when another instrumentation's INTERNAL span (Express, Koa or Fastify middleware) is the active one.
 */
export function httpRpcMetadata(ctx: Context): RpcMetadata | undefined {
  // Public route: none; the instrumentation's span is then found only while it is the active span.
  if (publicApiOnly) return undefined;
  const rpc = ctx.getValue(RPC_METADATA_KEY) as Partial<RpcMetadata> | undefined;
  return rpc !== undefined && rpc !== null && rpc.type === 'http' && typeof rpc.span?.spanContext === 'function'
    ? (rpc as RpcMetadata)
    : undefined;
}

/** `ctx` without RPC metadata, so nothing later takes another instrumentation's span for the request's. */
export function withoutRpcMetadata(ctx: Context): Context {
  return ctx.getValue(RPC_METADATA_KEY) === undefined ? ctx : ctx.deleteValue(RPC_METADATA_KEY);
}
