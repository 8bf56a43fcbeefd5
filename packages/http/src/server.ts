import { context } from '@opentelemetry/api';
import { createServerTracing } from '@meshtrace/core/adapter';
import type { MeshTraceOptions } from '@meshtrace/core';
import type { RequestTrace } from '@meshtrace/core/adapter';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Options of {@link meshHttp}: the core options with Node's own request and response. */
export type HttpMeshTraceOptions = MeshTraceOptions<IncomingMessage, ServerResponse>;

/** A `node:http` request listener (an async one's promise is watched for a rejection). */
export type Listener<Req extends IncomingMessage = IncomingMessage, Res extends ServerResponse = ServerResponse> = (
  req: Req,
  res: Res,
) => void;

const TRACE = Symbol.for('meshtrace.http.trace');

/** The request's trace, for listeners that want its span or outcome. */
export function requestTrace(req: IncomingMessage): RequestTrace<IncomingMessage, ServerResponse> | undefined {
  return (req as IncomingMessage & { [TRACE]?: RequestTrace<IncomingMessage, ServerResponse> })[TRACE];
}

/**
 * Wraps a `node:http` / `node:https` request listener so each request runs in its caller's trace,
 * inside one SERVER span.
 * @example
 * http.createServer(meshHttp((req, res) => res.end('ok'))).listen(8080);
 */
export function meshHttp<Req extends IncomingMessage, Res extends ServerResponse>(
  listener: Listener<Req, Res>,
  options?: MeshTraceOptions<Req, Res>,
): Listener<Req, Res> {
  if (typeof listener !== 'function')
    throw new TypeError(`@meshtrace/http: listener must be a function, got ${typeof listener}`);
  const tracing = createServerTracing<Req, Res>(options, { name: '@meshtrace/http' });
  return function meshHttpListener(this: unknown, req: Req, res: Res): void {
    const t = tracing.start(req, res);
    (req as Req & { [TRACE]?: unknown })[TRACE] = t;
    let result: unknown;
    try {
      result = context.with(t.context, listener, this, req, res);
    } catch (err) {
      // Recorded by the rule every adapter follows, then thrown on to Node as before.
      t.recordException(err);
      throw err;
    }
    // An async listener's rejection: recorded, and left as unhandled as Node (which ignores the promise) leaves it.
    if (typeof (result as PromiseLike<unknown> | undefined)?.then === 'function') {
      (result as PromiseLike<unknown>).then(undefined, (err: unknown) => {
        t.recordException(err);
        throw err;
      });
    }
  };
}
