import { context } from '@opentelemetry/api';
import { createServerTracing } from '@meshtrace/core';
import type { MeshTraceOptions, RequestTrace } from '@meshtrace/core';
import type { Context, Middleware, Next } from 'koa';

/** Options of {@link meshTrace}: the core options, with Koa's `ctx` handed to `ignore` and both hooks. */
export type KoaMeshTraceOptions = MeshTraceOptions<Context, Context>;

/** The trace of one Koa request, as `ctx.meshTrace`. */
export type KoaRequestTrace = RequestTrace<Context, Context>;

declare module 'koa' {
  interface ExtendableContext {
    /** This request's trace (its context, SERVER span and propagation outcome), set by `meshTrace()`. */
    readonly meshTrace?: KoaRequestTrace;
  }
}

/** What @koa/router leaves on `ctx`. */
interface RouterState {
  /** Path of the last layer the router ran, route or `router.use()` middleware. */
  readonly _matchedRoute?: string | RegExp;
  /** Every layer whose path matched, over all routers the request went through. */
  readonly matched?: ReadonlyArray<{ readonly path: string | RegExp; readonly methods: readonly string[] }>;
}

function routeOf(ctx: Context): string | undefined {
  const { _matchedRoute: last, matched } = ctx as RouterState;
  if (last === undefined || last === null) return undefined;
  if (!Array.isArray(matched)) return String(last);
  // `router.use()` middleware (a layer without methods) running after the route overwrites
  // `_matchedRoute` with its own path: fall back to the last route layer for this method.
  let route: string | RegExp | undefined;
  for (const layer of matched) {
    if (layer.methods.length === 0) continue;
    if (layer.path === last) return String(last);
    if (layer.methods.includes(ctx.method)) route = layer.path;
  }
  return route === undefined ? undefined : String(route);
}

/**
 * Koa answers a thrown error with its `status` (or `statusCode`) when that is set; a 4xx is the
 * client's error and leaves a server span's status unset (OTel semantic conventions, HTTP spans, Status).
 */
function isClientError(err: unknown): boolean {
  const e = err as { status?: unknown; statusCode?: unknown } | null | undefined;
  const status = e?.status || e?.statusCode;
  return typeof status === 'number' && status >= 400 && status < 500;
}

/**
 * Koa middleware that runs each request in its caller's trace, inside one SERVER span named after
 * the @koa/router route. Use it first, so every later middleware runs in the request's context.
 * @example
 * app.use(meshTrace({ ignore: ['/healthz'] }));
 */
export function meshTrace(options?: KoaMeshTraceOptions): Middleware {
  const tracing = createServerTracing<Context, Context>(options, { name: '@meshtrace/koa', route: routeOf });
  return function meshTraceMiddleware(ctx: Context, next: Next): Promise<unknown> {
    // Used twice on one request (a mounted sub-app with its own meshTrace()): the first one traces it.
    if (ctx.meshTrace !== undefined) return next();
    const t = tracing.start(ctx.req, ctx.res, ctx, ctx);
    (ctx as { meshTrace?: KoaRequestTrace }).meshTrace = t;
    return context.with(t.context, next).catch((err: unknown) => {
      if (!isClientError(err)) t.recordException(err);
      throw err;
    });
  };
}
