import { subscribe } from 'node:diagnostics_channel';
import { context } from '@opentelemetry/api';
import { createRouteMarker, createServerTracing, optionError } from '@meshtrace/core/adapter';
import type { MeshTraceOptions, MeshTraceRouteOptions } from '@meshtrace/core';
import type { RequestTrace } from '@meshtrace/core/adapter';
import type {
  ErrorRequestHandler,
  Request as ExpressRequest,
  RequestHandler,
  Response as ExpressResponse,
} from 'express';
import { toDictionaryMode } from './dictionary';
import { routePolicyFor, routeTemplate } from './route';

const PACKAGE = '@meshtrace/express';

/** Options of {@link meshTrace}: the core options, with Express's own `req` and `res` in the hooks. */
export type ExpressMeshTraceOptions = MeshTraceOptions<ExpressRequest, ExpressResponse>;

/** Options of {@link meshTraceRoute}: the route's own `inbound` policy, with Express's `req` for a function. */
export type ExpressMeshTraceRouteOptions = MeshTraceRouteOptions<ExpressRequest>;

/** The {@link meshTraceRoute} policies, for `meshTrace()` to find on the router before routing. */
const routes = createRouteMarker<ExpressRequest>(
  PACKAGE,
  'meshTraceRoute() ran on a request for which meshTrace() had not found it on the router when the request ' +
    "started (a sub-application, or a URL changed after meshTrace()), so the application's inbound policy " +
    'applied. Put the route policy on a router of the application itself.',
);

declare global {
  // Express's documented way to add request properties: its Request extends this global interface.
  namespace Express {
    interface Request {
      /** The request's trace (SERVER span, context, how the caller's trace was continued), set by `meshTrace()`. */
      meshTrace?: RequestTrace<ExpressRequest, ExpressResponse>;
    }
  }
}

/**
 * The last error recorded on the request, so the channel and `meshTraceErrors()` never record one
 * twice. Registered, because a second copy of this package in the process subscribes to the same channel.
 */
const RECORDED = Symbol.for('meshtrace.express.recorded-error');

type TracedRequest = ExpressRequest & { [RECORDED]?: unknown };

function recordError(req: TracedRequest, error: unknown): void {
  const t = req.meshTrace;
  if (t === undefined || t.ended || req[RECORDED] === error) return;
  req[RECORDED] = error;
  // Express's final handler answers with the status the error asks for: core's rule reads the same.
  t.recordException(error);
}

function onRouterError(message: unknown): void {
  const req = (message as { req?: TracedRequest } | null)?.req;
  if (req !== undefined) recordError(req, (message as { error?: unknown }).error);
}

let observingRouter = false;

/**
 * Express 5's router (2.3+) publishes every handler error where it starts (a throw, `next(err)` or a
 * rejected promise) on the `express.router.request` TracingChannel, so no patching is needed there.
 */
function observeRouterErrors(): void {
  if (observingRouter) return;
  observingRouter = true;
  subscribe('tracing:express.router.request:error', onRouterError);
}

/**
 * Express middleware that continues the caller's W3C trace: one SERVER span per request, named after
 * the matched route, with every later handler running in its context. Use it first.
 * @example
 * app.use(meshTrace({ ignore: ['/healthz'] }));
 * app.get('/users/:id', (req, res) => res.json({ traceId: req.meshTrace?.span.spanContext().traceId }));
 */
export function meshTrace(options?: ExpressMeshTraceOptions): RequestHandler {
  // `app.use(meshTrace)` would call this with (req, res, next) and leave every request hanging.
  // biome-ignore lint/complexity/noArguments: a rest parameter would put the misuse into the public signature.
  if (arguments.length > 1)
    throw optionError(PACKAGE, 'options', 'an object (use app.use(meshTrace()), not app.use(meshTrace))', options);
  const tracing = createServerTracing<ExpressRequest, ExpressResponse>(options, {
    name: PACKAGE,
    route: routeTemplate,
  });
  observeRouterErrors();
  return function meshTraceMiddleware(req, res, next) {
    // Also used on a router or sub-app the request already passed through: it has its span.
    if (req.meshTrace !== undefined) {
      next();
      return;
    }
    toDictionaryMode(req, res);
    const t = tracing.start(req, res, routes.count > 0 ? routePolicyFor(req, routes.policyOf) : undefined);
    req.meshTrace = t;
    context.with(t.context, next);
  };
}

/**
 * A route's own inbound policy, for a router or a route: `meshTrace()` finds it on the path the request
 * will take before the router runs, so the request's one SERVER span starts under it (the last one on
 * the way wins). Bad options throw a `TypeError` here; a policy the request could not be matched to in
 * advance (a sub-application, a URL rewritten after `meshTrace()`) is reported when the request reaches it.
 * @example
 * const webhooks = express.Router();
 * webhooks.use(meshTraceRoute({ inbound: 'restart' }));
 * app.use('/webhooks', webhooks);
 */
export function meshTraceRoute(options: ExpressMeshTraceRouteOptions): RequestHandler {
  const middleware: RequestHandler = function meshTraceRouteMiddleware(req, _res, next) {
    routes.reached(req.meshTrace);
    next();
  };
  return routes.mark(middleware, options);
}

/**
 * Error middleware that records errors on the request's span and passes them on. Needed on Express 4
 * (and on Express 5 with a router older than 2.3), which report handler errors through no public
 * hook: add it after the routes, before your own error handlers.
 * @example
 * app.use(meshTrace());
 * app.get('/users/:id', getUser);
 * app.use(meshTraceErrors());
 * app.use(myErrorHandler);
 */
export function meshTraceErrors(): ErrorRequestHandler {
  return function meshTraceErrorRecorder(err, req, _res, next) {
    recordError(req, err);
    next(err);
  };
}
