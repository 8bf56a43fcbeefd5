import { SpanStatusCode, context as api } from '@opentelemetry/api';
import type { Context, Span } from '@opentelemetry/api';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { callHook } from '../internal/diagnostics';
import { bindEmitter, bindingOf } from '../internal/emitter';
import { errorStatus, recordRequestError } from '../internal/errors';
import type { ExtractOutcome } from '../propagation/outcome';
import type { RoutePolicy } from './route-policy';

/** What a request's trace reads of its adapter when the response ends; one object per adapter, made at setup. */
export interface TraceSettings<Req, Res> {
  /** The adapter's package name, for the hooks' diagnostics. */
  readonly name: string;
  /** The route template of a finished request (`/users/:id`), if the framework matched one. */
  readonly route: ((request: Req) => string | undefined) | undefined;
  /** Called just before the span ends. */
  readonly responseHook: ((span: Span, response: Res) => void) | undefined;
}

/**
 * How a request's span came to be: `owned`, meshtrace started it and ends it; `enriched`, another
 * instrumentation's SERVER span, which its owner ends; `ignored`, no span, only the propagated context.
 */
export type TraceMode = 'owned' | 'enriched' | 'ignored';

/** The server side of one request: its context, its SERVER span and how its trace was continued. */
export class RequestTrace<Req, Res> {
  /** True once the span ended (or the request was ignored). */
  ended: boolean;
  /** @internal An outer adapter's trace of the same response (meshHttp around a framework), ended after this one. */
  outer: RequestTrace<unknown, unknown> | undefined;
  private errored = false;
  private readonly owned: boolean;

  /** @internal */
  constructor(
    private readonly settings: TraceSettings<Req, Res>,
    private readonly request: Req,
    private readonly response: Res,
    private readonly method: string,
    /** The context the request's handlers run in. */
    readonly context: Context,
    /** The SERVER span (non-recording when ignored). */
    readonly span: Span,
    /** Whether the inbound trace was continued, and if not, why. */
    readonly outcome: ExtractOutcome,
    mode: TraceMode,
    /** The route policy that decided the request's inbound trust, if one did (the adapter knew it). */
    public route: RoutePolicy<Req> | undefined,
  ) {
    this.owned = mode === 'owned';
    this.ended = mode === 'ignored';
  }

  /**
   * Records an error the handler threw, by the one rule every adapter follows ({@link recordRequestError}):
   * always the exception event; ERROR status unless the answer (`status`, else what the error asks for) is a 4xx.
   */
  recordException(error: unknown, status?: number): void {
    if (this.ended) return;
    if (recordRequestError(this.span, error, status ?? errorStatus(error))) this.errored = true;
  }

  /** @internal Names the span after the route template, once the framework has matched one; returns the template. */
  nameRoute(): string | undefined {
    let route: string | undefined;
    try {
      route = this.settings.route?.(this.request);
    } catch {
      // Runs from a 'finish' listener: a throw here would take the process down.
      route = undefined;
    }
    if (route) {
      this.span.setAttribute('http.route', route);
      this.span.updateName(`${this.method === '_OTHER' ? 'HTTP' : this.method} ${route}`);
    }
    return route;
  }

  /** Ends the span with the response status; runs once, whatever calls it first. */
  end(statusCode: number | undefined): void {
    if (this.ended) return;
    this.ended = true;
    const span = this.span;
    // Another instrumentation's span may already have ended on 'finish', before this listener ran.
    if (this.owned || span.isRecording()) {
      this.nameRoute();
      if (statusCode === undefined) {
        span.addEvent('meshtrace.client_aborted');
      } else {
        span.setAttribute('http.response.status_code', statusCode);
        // The SDK replaces the whole status: keep the message recordException set.
        if (statusCode >= 500 && !this.errored) span.setStatus({ code: SpanStatusCode.ERROR });
      }
      const hook = this.settings.responseHook;
      // 'finish' and 'close' can fire from outside the request's context: the hook still runs in it.
      if (hook !== undefined)
        api.with(this.context, callHook, undefined, 'responseHook', hook, span, this.response, this.settings.name);
      if (this.owned) span.end();
    }
    this.outer?.end(statusCode);
  }
}

/** The trace of a response, kept on its binding record (one property added to the object, not two). */
function traceOf(res: ServerResponse): RequestTrace<unknown, unknown> | undefined {
  return bindingOf(res)?.attachment as RequestTrace<unknown, unknown> | undefined;
}

function onFinish(this: ServerResponse): void {
  traceOf(this)?.end(this.statusCode);
}

function onClose(this: ServerResponse): void {
  // 'close' without 'finish': the client went away before the response was written.
  const t = traceOf(this);
  if (t !== undefined && !t.ended) t.end(this.writableFinished ? this.statusCode : undefined);
}

/**
 * Ends `rt` when `res` finishes or the client goes away, and binds `req`/`res` events to its context.
 * Two adapters on one response (meshHttp around a framework): the inner one ends both.
 */
export function endWithResponse<Req, Res>(
  rt: RequestTrace<Req, Res>,
  req: IncomingMessage,
  res: ServerResponse,
): RequestTrace<Req, Res> {
  const outer = traceOf(res);
  if (outer !== undefined) {
    rt.outer = outer;
  } else {
    // Added before this binding, so not wrapped by it: they need no context of their own, and `end` runs
    // the hooks in the request's. `on`, not `once`: each event comes once per response, `end` runs once
    // anyway, and `once` allocates a wrapper and removes it.
    res.on('finish', onFinish);
    res.on('close', onClose);
  }
  // Body parsers and 'finish' listeners run from socket callbacks: bind them to the request's context.
  bindEmitter(rt.context, req);
  bindEmitter(rt.context, res).attachment = rt;
  return rt;
}
