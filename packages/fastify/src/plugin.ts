import { context } from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import { createServerTracing } from '@meshtrace/core';
import type { MeshTraceOptions, RequestTrace } from '@meshtrace/core';
import type { FastifyError, FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteHandlerMethod } from 'fastify';
import { fastifyPlugin } from 'fastify-plugin';

/** Options of {@link meshTrace}: the core options with Fastify's request and reply. */
export type FastifyMeshTraceOptions = MeshTraceOptions<FastifyRequest, FastifyReply>;

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * The request's trace (context, SERVER span, how the caller's trace was continued), set by the
     * plugin's `onRequest` hook: register the plugin before routes and other hooks.
     */
    meshTrace: RequestTrace<FastifyRequest, FastifyReply>;
  }
}

const PACKAGE = '@meshtrace/fastify';

/** `request.routeOptions` exists from Fastify 4.10; the deprecated `routerPath` warns on every read, so it is never touched. */
function route(request: FastifyRequest): string | undefined {
  return request.routeOptions?.url;
}

/** The status Fastify's error handling will give `error` (fastify lib/error-handler.js `setErrorHeaders`). */
function errorStatus(error: FastifyError & { status?: unknown }, replyStatus: number): number {
  const own = error.statusCode ?? error.status;
  if (typeof own === 'number' && own >= 400 && own <= 599) return own;
  return replyStatus >= 400 && replyStatus <= 599 ? replyStatus : 500;
}

/** The request's context; unset when a hook registered before the plugin answered the request before its onRequest ran. */
function contextOf(request: FastifyRequest): Context | undefined {
  return (request.meshTrace as RequestTrace<FastifyRequest, FastifyReply> | undefined)?.context;
}

// The resume functions start a stage in the request's context. It is active already unless the last stage
// went on from outside it, and context.with would copy its arguments three times to find that out.

/** Resumes a stage whose hooks pass nothing on (preValidation, preHandler, onResponse). */
function resumeStage(request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction): void {
  const ctx = contextOf(request);
  if (ctx === undefined || context.active() === ctx) done();
  else context.with(ctx, done);
}

/** Resumes a stage whose hooks pass a payload on (preParsing, preSerialization, onSend). */
function resumeWithPayload<P>(request: FastifyRequest, _reply: FastifyReply, payload: P, done: (err: null, payload: P) => void): void {
  const ctx = contextOf(request);
  if (ctx === undefined || context.active() === ctx) done(null, payload);
  else context.with(ctx, done, undefined, null, payload);
}

/** Runs a route's handler in the request's context: nothing re-enters it between the last preHandler hook and the handler. */
function inRequestContext(handler: RouteHandlerMethod): RouteHandlerMethod {
  return function meshTraceHandler(this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) {
    const ctx = contextOf(request);
    if (ctx === undefined || context.active() === ctx) return handler.call(this, request, reply);
    return context.with(ctx, handler, this, request, reply);
  };
}

const plugin: FastifyPluginAsync<FastifyMeshTraceOptions> = async function meshTracePlugin(fastify, options) {
  const tracing = createServerTracing<FastifyRequest, FastifyReply>(options, { name: PACKAGE, route });

  // Declared without a value (Fastify 5 refuses an object shared by all requests): each request sets its own.
  fastify.decorateRequest('meshTrace');

  fastify.addHook('onRequest', function meshTraceStart(request, reply, done) {
    const trace = tracing.start(request.raw, reply.raw, request, reply);
    request.meshTrace = trace;
    // The rest of the lifecycle starts inside the context, so AsyncLocalStorage carries it into every later hook, await and timer.
    context.with(trace.context, done);
  });

  // Each later stage re-enters the context before the user's hooks of that stage. A stage can be resumed
  // from outside it: onResponse runs from a 'finish' listener Fastify adds before onRequest, so unbound, which
  // for pipelined requests fires in the previous request's context, and a callback-style hook may call done()
  // from a pooled client's callback.
  fastify.addHook('preParsing', resumeWithPayload);
  fastify.addHook('preValidation', resumeStage);
  fastify.addHook('preHandler', resumeStage);
  fastify.addHook('preSerialization', resumeWithPayload);
  fastify.addHook('onSend', resumeWithPayload);
  fastify.addHook('onResponse', resumeStage);
  fastify.addHook('onError', function meshTraceError(request, reply, error, done) {
    const trace = request.meshTrace as RequestTrace<FastifyRequest, FastifyReply> | undefined;
    if (trace !== undefined) {
      // onError runs before the error handler sets the status. A 4xx is the caller's fault: the exception
      // is recorded, the status left unset (semantic conventions, HTTP span status for SERVER spans).
      if (errorStatus(error, reply.statusCode) >= 500) trace.recordException(error);
      else trace.span.recordException(error);
    }
    resumeStage(request, reply, done);
  });
  fastify.addHook('onRoute', (routeOptions) => {
    routeOptions.handler = inRequestContext(routeOptions.handler);
  });
};

/**
 * Fastify 4/5 plugin: each request continues its caller's trace in one SERVER span, its context active in every hook.
 * @example
 * await app.register(meshTrace, { ignore: ['/healthz'] });
 */
export const meshTrace = fastifyPlugin(plugin, { fastify: '4.x || 5.x', name: PACKAGE });
