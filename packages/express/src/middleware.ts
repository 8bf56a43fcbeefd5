import { subscribe } from 'node:diagnostics_channel';
import { context } from '@opentelemetry/api';
import { createServerTracing, optionError } from '@meshtrace/core';
import type { MeshTraceOptions, RequestTrace } from '@meshtrace/core';
import type { ErrorRequestHandler, Request as ExpressRequest, RequestHandler, Response as ExpressResponse } from 'express';
import { routeTemplate } from './route';

const PACKAGE = '@meshtrace/express';

/** Options of {@link meshTrace}: the core options, with Express's own `req` and `res` in the hooks. */
export type ExpressMeshTraceOptions = MeshTraceOptions<ExpressRequest, ExpressResponse>;

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

/** The status Express's final handler answers an error with, when the error carries one (`err.status`). */
function errorStatus(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const { status, statusCode } = error as { status?: unknown; statusCode?: unknown };
  if (typeof status === 'number' && status >= 400 && status < 600) return status;
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 600) return statusCode;
  return undefined;
}

function recordError(req: TracedRequest, error: unknown): void {
  const t = req.meshTrace;
  if (t === undefined || t.ended || req[RECORDED] === error) return;
  req[RECORDED] = error;
  const status = errorStatus(error);
  // HTTP semconv: a SERVER span answering 4xx keeps an unset status; the exception is still worth recording.
  if (status !== undefined && status < 500) t.span.recordException(error as Error);
  else t.recordException(error);
}

function onRouterError(message: unknown): void {
  const req = (message as { req?: TracedRequest } | null)?.req;
  if (req !== undefined) recordError(req, (message as { error?: unknown }).error);
}

/** Moves Express's `req` and `res` to V8 dictionary mode, with the same properties and values. */
function toDictionaryMode(req: ExpressRequest, res: ExpressResponse): void {
  // Express gives both its app's prototypes (Object.setPrototypeOf), which leaves each on a hidden class
  // of its own: every property added afterwards, by Express, the application or us, copies that class,
  // and every read misses V8's inline caches. A deleted property makes the object a dictionary, where
  // neither happens: on Express 5 this saves more CPU per request than tracing costs. Deleted and put back
  // are the back-references Express sets on both before swapping the prototypes.
  const request = req as { res?: unknown };
  const response = res as { req?: unknown };
  const back = request.res;
  delete request.res;
  request.res = back;
  const forth = response.req;
  delete response.req;
  response.req = forth;
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
  if (arguments.length > 1) throw optionError(PACKAGE, 'options', 'an object (use app.use(meshTrace()), not app.use(meshTrace))', options);
  const tracing = createServerTracing<ExpressRequest, ExpressResponse>(options, { name: PACKAGE, route: routeTemplate });
  observeRouterErrors();
  return function meshTraceMiddleware(req, res, next) {
    // Also used on a router or sub-app the request already passed through: it has its span.
    if (req.meshTrace !== undefined) {
      next();
      return;
    }
    toDictionaryMode(req, res);
    const t = tracing.start(req, res, req, res);
    req.meshTrace = t;
    context.with(t.context, next);
  };
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
