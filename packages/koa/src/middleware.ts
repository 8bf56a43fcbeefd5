import { context } from '@opentelemetry/api';
import { createRouteMarker, createServerTracing } from '@meshtrace/core/adapter';
import type { MeshTraceOptions, MeshTraceRouteOptions } from '@meshtrace/core';
import type { RequestTrace, RoutePolicy } from '@meshtrace/core/adapter';
import type { Context, Middleware, Next } from 'koa';

/** Options of {@link meshTrace}: the core options, with Koa's `ctx` handed to `ignore` and both hooks. */
export type KoaMeshTraceOptions = MeshTraceOptions<Context, Context>;

/** Options of {@link meshTraceRoute}: the route's own `inbound` policy, with Koa's `ctx` for a function. */
export type KoaMeshTraceRouteOptions = MeshTraceRouteOptions<Context>;

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

const PACKAGE = '@meshtrace/koa';

/** The {@link meshTraceRoute} policies, for `meshTrace()` to find by asking the routers before they run. */
const routes = createRouteMarker<Context>(
  PACKAGE,
  "meshTraceRoute() ran on a request for which meshTrace() had not found it through the application's " +
    "@koa/router routers when the request started, so the application's inbound policy applied. Use it on a " +
    'router added with app.use(router.routes()).',
);

type Policy = RoutePolicy<Context>;

/** The parts of @koa/router's router the lookup uses: its public `match`, and what its dispatch reads. */
interface KoaRouter {
  match(
    path: string,
    method: string,
  ): { readonly pathAndMethod: ReadonlyArray<{ readonly stack: readonly unknown[] }>; readonly route: boolean };
  matchHost?(host: string): boolean;
  readonly exclusive?: boolean;
  readonly opts?: { readonly routerPath?: string };
}

/**
 * The route policy of the last `meshTraceRoute()` the request will meet in the first @koa/router
 * router (`app.use(router.routes())`) holding a route for it, asked through the router's own `match`
 * before it runs, so the SERVER span starts under it. Never throws.
 */
function routePolicyFor(ctx: Context): Policy | undefined {
  try {
    for (const mw of (ctx.app as { middleware?: unknown }).middleware as readonly unknown[]) {
      const router = (mw as { router?: KoaRouter } | null)?.router;
      if (router === undefined || typeof router.match !== 'function') continue;
      if (typeof router.matchHost === 'function' && !router.matchHost(ctx.host)) continue;
      // As the router's dispatch reads it, before anything has set ctx.routerPath.
      const matched = router.match(router.opts?.routerPath || ctx.path, ctx.method);
      if (!matched.route) continue;
      const layers = router.exclusive ? matched.pathAndMethod.slice(-1) : matched.pathAndMethod;
      let found: Policy | undefined;
      for (const layer of layers) {
        for (const fn of layer.stack) {
          const policy = routes.policyOf(fn);
          if (policy !== undefined) found = policy;
        }
      }
      return found;
    }
  } catch {
    // A router this lookup cannot read: the application's policy applies.
  }
  return undefined;
}

/**
 * Koa middleware that runs each request in its caller's trace, inside one SERVER span named after
 * the @koa/router route. Use it first, so every later middleware runs in the request's context.
 * @example
 * app.use(meshTrace({ ignore: ['/healthz'] }));
 */
export function meshTrace(options?: KoaMeshTraceOptions): Middleware {
  const tracing = createServerTracing<Context, Context>(options, {
    name: PACKAGE,
    incoming: (ctx) => ctx.req,
    outgoing: (ctx) => ctx.res,
    route: routeOf,
  });
  return function meshTraceMiddleware(ctx: Context, next: Next): Promise<unknown> {
    // Used twice on one request (a mounted sub-app with its own meshTrace()): the first one traces it.
    if (ctx.meshTrace !== undefined) return next();
    const t = tracing.start(ctx, ctx, routes.count > 0 ? routePolicyFor(ctx) : undefined);
    (ctx as { meshTrace?: KoaRequestTrace }).meshTrace = t;
    return context.with(t.context, next).catch((err: unknown) => {
      // Koa answers with the status the error asks for, as core's rule reads it.
      t.recordException(err);
      throw err;
    });
  };
}

/**
 * A route's own inbound policy, for a @koa/router router (`router.use(...)`) or one route:
 * `meshTrace()` asks the router before it runs, so the request's one SERVER span starts under it
 * (the last one on the route's way wins). Bad options throw a `TypeError` here; a policy the request
 * could not be matched to in advance (a router mounted some other way, a path rewritten after
 * `meshTrace()`) is reported when the request reaches it.
 * @example
 * router.post('/webhooks/:source', meshTraceRoute({ inbound: 'restart' }), handleWebhook);
 */
export function meshTraceRoute(options: KoaMeshTraceRouteOptions): Middleware {
  return routes.mark(function meshTraceRouteMiddleware(ctx: Context, next: Next): Promise<unknown> {
    routes.reached(ctx.meshTrace);
    return next();
  }, options);
}
