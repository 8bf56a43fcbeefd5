import { context } from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import { RoutePolicy, createServerTracing, warner } from '@meshtrace/core/adapter';
import type { MeshTraceOptions, MeshTraceRouteOptions } from '@meshtrace/core';
import type { RequestTrace } from '@meshtrace/core/adapter';
import type {
  FastifyError,
  FastifyInstance,
  FastifyPluginAsync,
  FastifyReply,
  FastifyRequest,
  HookHandlerDoneFunction,
  RouteHandlerMethod,
} from 'fastify';
import { fastifyPlugin } from 'fastify-plugin';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Options of {@link meshTrace}: the core options with Fastify's request and reply. */
export type FastifyMeshTraceOptions = MeshTraceOptions<FastifyRequest, FastifyReply>;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** This route's own meshtrace options: `{ inbound }` replaces the plugin's inbound policy for its requests. */
    meshTrace?: MeshTraceRouteOptions<FastifyRequest>;
  }
  interface FastifyRequest {
    /**
     * The request's trace (context, SERVER span, how the caller's trace was continued), set by the
     * plugin's `onRequest` hook: register the plugin before routes and other hooks.
     */
    meshTrace: RequestTrace<FastifyRequest, FastifyReply>;
  }
}

const PACKAGE = '@meshtrace/fastify';

/** Route policies by the route's `config.meshTrace` object, which Fastify hands every request of the route as it is. */
type Policies = WeakMap<object, RoutePolicy<FastifyRequest> | null>;

/** Checks a route's `config.meshTrace` when the route is added; a bad one throws there, at setup. */
function addRoutePolicy(policies: Policies, config: unknown): void {
  const options = (config as { meshTrace?: unknown } | undefined)?.meshTrace;
  if (options === undefined) return;
  const policy = new RoutePolicy<FastifyRequest>(
    PACKAGE,
    options as MeshTraceRouteOptions<FastifyRequest>,
    'config.meshTrace',
  );
  policies.set(options as object, policy);
}

/**
 * The policy of the request's route; one added before the plugin was registered is checked on its first request (a bad
 * one is reported and skipped).
 */
function routePolicyOf(policies: Policies, request: FastifyRequest): RoutePolicy<FastifyRequest> | undefined {
  const options = (request.routeOptions?.config as { meshTrace?: unknown } | undefined)?.meshTrace;
  if (options === undefined || options === null || typeof options !== 'object') return undefined;
  let policy = policies.get(options);
  if (policy === undefined) {
    try {
      policy = new RoutePolicy<FastifyRequest>(
        PACKAGE,
        options as MeshTraceRouteOptions<FastifyRequest>,
        'config.meshTrace',
      );
    } catch (err) {
      policy = null;
      warner.warn(
        `${PACKAGE}:route-policy`,
        () =>
          `${(err as Error).message}; the route was added before the plugin was registered, so the plugin's own ` +
          'inbound policy applies to it.',
      );
    }
    policies.set(options, policy);
  }
  return policy ?? undefined;
}

/**
 * `request.routeOptions` exists from Fastify 4.10; the deprecated `routerPath` warns on every read, so it is never
 * touched.
 */
function route(request: FastifyRequest): string | undefined {
  return request.routeOptions?.url;
}

const rawRequest = (request: FastifyRequest): IncomingMessage => request.raw;
const rawReply = (reply: FastifyReply): ServerResponse => reply.raw;

/** The status Fastify's error handling will give `error` (fastify lib/error-handler.js `setErrorHeaders`). */
function answerStatus(error: FastifyError & { status?: unknown }, replyStatus: number): number {
  const own = error.statusCode ?? error.status;
  if (typeof own === 'number' && own >= 400 && own <= 599) return own;
  return replyStatus >= 400 && replyStatus <= 599 ? replyStatus : 500;
}

/**
 * The request's context; unset when a hook registered before the plugin answered the request before its onRequest ran.
 */
function contextOf(request: FastifyRequest): Context | undefined {
  return (request.meshTrace as RequestTrace<FastifyRequest, FastifyReply> | undefined)?.context;
}

/**
 * Resumes the lifecycle in the request's context: it is active already unless the last step went on from outside it.
 */
function resumeStage(request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction): void {
  const ctx = contextOf(request);
  if (ctx === undefined || context.active() === ctx) done();
  else context.with(ctx, done);
}

/** Runs a route's handler in the request's context: a hook before it may have gone on from outside it. */
function inRequestContext(handler: RouteHandlerMethod): RouteHandlerMethod {
  return function meshTraceHandler(this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) {
    const ctx = contextOf(request);
    if (ctx === undefined || context.active() === ctx) return handler.call(this, request, reply);
    return context.with(ctx, handler, this, request, reply);
  };
}

type Done = (err?: unknown, value?: unknown) => void;
type Hook = (this: unknown, ...args: never[]) => unknown;

/** Where each request lifecycle hook gets `done`: the number of arguments before it. */
const DONE_AT: Readonly<Record<string, number>> = {
  onRequest: 2,
  preParsing: 3,
  preValidation: 2,
  preHandler: 2,
  preSerialization: 3,
  onSend: 3,
  onResponse: 2,
  onError: 3,
  onTimeout: 2,
  onRequestAbort: 1,
};

/** `done`, going on in `ctx` however late and from wherever it is called (a pooled client's callback). */
function resumeIn(ctx: Context, done: Done): Done {
  return function resume(err, value) {
    if (context.active() === ctx) done(err, value);
    else context.with(ctx, done, undefined, err, value);
  };
}

/** An async hook that also takes `done`, which Fastify refuses: such a hook is left for Fastify to say so. */
function refusedByFastify(name: string, hook: Hook): boolean {
  if (hook.constructor?.name !== 'AsyncFunction') return false;
  return name === 'onRequestAbort' ? hook.length !== 1 : hook.length === DONE_AT[name] + 1;
}

/**
 * A lifecycle hook that starts in the request's context and, when it takes `done`, goes on in it:
 * a hook that resumes from outside the context (a pooled client's callback, a 'finish' event for a
 * pipelined request) cannot take the rest of the request out of it. Other hooks come back as they are.
 */
function inContext(name: string, hook: unknown): unknown {
  const at = DONE_AT[name];
  if (at === undefined || typeof hook !== 'function' || refusedByFastify(name, hook as Hook)) return hook;
  const fn = hook as (this: unknown, a: unknown, b?: unknown, c?: unknown, d?: unknown) => unknown;
  const takesDone = fn.length > at;
  if (at === 1) {
    return function meshTraceHook(this: unknown, request: FastifyRequest, done: Done): unknown {
      const ctx = contextOf(request);
      if (ctx === undefined) return fn.call(this, request, done);
      const next = takesDone ? resumeIn(ctx, done) : done;
      return context.active() === ctx ? fn.call(this, request, next) : context.with(ctx, fn, this, request, next);
    };
  }
  if (at === 2) {
    return function meshTraceHook(this: unknown, request: FastifyRequest, reply: FastifyReply, done: Done): unknown {
      const ctx = contextOf(request);
      if (ctx === undefined) return fn.call(this, request, reply, done);
      const next = takesDone ? resumeIn(ctx, done) : done;
      return context.active() === ctx
        ? fn.call(this, request, reply, next)
        : context.with(ctx, fn, this, request, reply, next);
    };
  }
  return function meshTraceHook(
    this: unknown,
    request: FastifyRequest,
    reply: FastifyReply,
    value: unknown,
    done: Done,
  ): unknown {
    const ctx = contextOf(request);
    if (ctx === undefined) return fn.call(this, request, reply, value, done);
    const next = takesDone ? resumeIn(ctx, done) : done;
    return context.active() === ctx
      ? fn.call(this, request, reply, value, next)
      : context.with(ctx, fn, this, request, reply, value, next);
  };
}

/** Wraps the lifecycle hooks a route's (or the not-found handler's) options carry, each a function or an array. */
function routeHooksInContext(options: Record<string, unknown>): Record<string, unknown> {
  for (const name in DONE_AT) {
    const hook = options[name];
    if (hook !== undefined && hook !== null)
      options[name] = Array.isArray(hook) ? hook.map((h) => inContext(name, h)) : inContext(name, hook);
  }
  return options;
}

const plugin: FastifyPluginAsync<FastifyMeshTraceOptions> = async function meshTracePlugin(fastify, options) {
  const tracing = createServerTracing<FastifyRequest, FastifyReply>(options, {
    name: PACKAGE,
    incoming: rawRequest,
    outgoing: rawReply,
    route,
  });
  const policies: Policies = new WeakMap();

  // Declared without a value (Fastify 5 refuses an object shared by all requests): each request sets its own.
  fastify.decorateRequest('meshTrace');

  // onRequest runs after routing, so the route's own policy decides before the SERVER span starts.
  fastify.addHook('onRequest', function meshTraceStart(request, reply, done) {
    const trace = tracing.start(request, reply, routePolicyOf(policies, request));
    request.meshTrace = trace;
    // The rest of the lifecycle starts inside the context, so AsyncLocalStorage carries it into every later hook, await
    // and timer.
    context.with(trace.context, done);
  });

  fastify.addHook('onError', function meshTraceError(request, reply, error, done) {
    const trace = request.meshTrace as RequestTrace<FastifyRequest, FastifyReply> | undefined;
    if (trace !== undefined) {
      // onError runs before the error handler sets the status: pass the one Fastify will answer with.
      trace.recordException(error, answerStatus(error, reply.statusCode));
    }
    resumeStage(request, reply, done);
  });
  fastify.addHook('onRoute', (routeOptions) => {
    addRoutePolicy(policies, routeOptions.config);
    routeOptions.handler = inRequestContext(routeOptions.handler);
    routeHooksInContext(routeOptions as unknown as Record<string, unknown>);
  });

  // Every lifecycle hook added from here on, to this instance or one registered inside it, and every
  // route's own hooks start in the request's context and go on in it. Stages without hooks are left
  // alone, so Fastify still skips them (what @fastify/otel does to instrument hooks, without the spans).
  const addHook = fastify.addHook;
  fastify.addHook = function meshTraceAddHook(this: FastifyInstance, name: string, hook: unknown) {
    return addHook.call(this, name as never, inContext(name, hook) as never);
  } as typeof fastify.addHook;
  // The not-found handler is no route (onRoute never sees it): its handler and its own hooks are wrapped here.
  const setNotFoundHandler = fastify.setNotFoundHandler as unknown as (
    this: FastifyInstance,
    opts?: unknown,
    handler?: unknown,
  ) => FastifyInstance;
  fastify.setNotFoundHandler = function meshTraceSetNotFoundHandler(
    this: FastifyInstance,
    opts?: unknown,
    handler?: unknown,
  ) {
    if (typeof opts === 'function') return setNotFoundHandler.call(this, inRequestContext(opts as RouteHandlerMethod));
    if (opts !== null && typeof opts === 'object') opts = routeHooksInContext({ ...opts });
    return setNotFoundHandler.call(
      this,
      opts,
      typeof handler === 'function' ? inRequestContext(handler as RouteHandlerMethod) : handler,
    );
  } as typeof fastify.setNotFoundHandler;
};

/**
 * Fastify 4/5 plugin: each request continues its caller's trace in one SERVER span, its context active in every hook.
 * @example
 * await app.register(meshTrace, { ignore: ['/healthz'] });
 */
export const meshTrace = fastifyPlugin(plugin, { fastify: '4.x || 5.x', name: PACKAGE });
