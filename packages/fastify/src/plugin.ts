import { context } from '@opentelemetry/api';
import { createServerTracing } from '@meshtrace/core';
import type { MeshTraceOptions, RequestTrace } from '@meshtrace/core';
import type { FastifyError, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
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

/** Runs `done` in the request's context, so the stage it resumes starts there whatever context the last one ended in. */
function resume<A extends unknown[]>(request: FastifyRequest, done: (...args: A) => void, ...args: A): void {
  // Unset when a hook registered before the plugin answered the request before its onRequest ran.
  const trace = request.meshTrace as RequestTrace<FastifyRequest, FastifyReply> | undefined;
  if (trace === undefined) done(...args);
  else context.with(trace.context, done, undefined, ...args);
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
  // from outside it: onResponse runs from the response's 'finish', which for pipelined requests fires in
  // the previous request's context, and a callback-style hook may call done() from a pooled client's callback.
  fastify.addHook('preParsing', (request, _reply, payload, done) => resume(request, done, null, payload));
  fastify.addHook('preValidation', (request, _reply, done) => resume(request, done));
  fastify.addHook('preHandler', (request, _reply, done) => resume(request, done));
  fastify.addHook('preSerialization', (request, _reply, payload, done) => resume(request, done, null, payload));
  fastify.addHook('onSend', (request, _reply, payload, done) => resume(request, done, null, payload));
  fastify.addHook('onResponse', (request, _reply, done) => resume(request, done));
  fastify.addHook('onError', function meshTraceError(request, reply, error, done) {
    const trace = request.meshTrace as RequestTrace<FastifyRequest, FastifyReply> | undefined;
    if (trace !== undefined) {
      // onError runs before the error handler sets the status. A 4xx is the caller's fault: the exception
      // is recorded, the status left unset (semantic conventions, HTTP span status for SERVER spans).
      if (errorStatus(error, reply.statusCode) >= 500) trace.recordException(error);
      else trace.span.recordException(error);
    }
    resume(request, done);
  });
};

/**
 * Fastify 4/5 plugin: each request continues its caller's trace in one SERVER span, its context active in every hook.
 * @example
 * await app.register(meshTrace, { ignore: ['/healthz'] });
 */
export const meshTrace = fastifyPlugin(plugin, { fastify: '4.x || 5.x', name: PACKAGE });
