import { createContextKey } from '@opentelemetry/api';
import type { Context, Span } from '@opentelemetry/api';

// `@opentelemetry/core` (SDK 2 and 3) keeps these in the context under keys made by the API's
// `createContextKey`, which is `Symbol.for(description)`: the same symbols here, without depending on
// either SDK line. Tested against the real `@opentelemetry/core` in otel-keys.test.ts.
const SUPPRESS_TRACING_KEY = createContextKey('OpenTelemetry SDK Context Key SUPPRESS_TRACING');
const RPC_METADATA_KEY = createContextKey('OpenTelemetry SDK Context Key RPC_METADATA');

/** Where `@opentelemetry/api` 1.x keeps what is registered with it (a tracer provider, meter provider, diag logger, ...). */
const API_GLOBALS = Symbol.for('opentelemetry.js.api.1');

/**
 * What is registered with the API under `name`, as stored, or undefined: one load, without the API's
 * version checks, to notice a registration (a new MeterProvider, a diag logger set) cheaply.
 */
export function registeredGlobal(name: 'metrics' | 'diag'): unknown {
  return (globalThis as { [API_GLOBALS]?: Record<string, unknown> })[API_GLOBALS]?.[name];
}

/** True when `suppressTracing` (from `@opentelemetry/core`) marked the context: exporters' own requests. */
export function isTracingSuppressed(ctx: Context): boolean {
  return ctx.getValue(SUPPRESS_TRACING_KEY) === true;
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
  const rpc = ctx.getValue(RPC_METADATA_KEY) as Partial<RpcMetadata> | undefined;
  return rpc !== undefined && rpc !== null && rpc.type === 'http' && typeof rpc.span?.spanContext === 'function' ? (rpc as RpcMetadata) : undefined;
}

/** `ctx` without RPC metadata, so nothing later takes another instrumentation's span for the request's. */
export function withoutRpcMetadata(ctx: Context): Context {
  return ctx.getValue(RPC_METADATA_KEY) === undefined ? ctx : ctx.deleteValue(RPC_METADATA_KEY);
}
