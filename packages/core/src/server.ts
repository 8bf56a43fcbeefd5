import { SpanKind, SpanStatusCode, context as api, trace } from '@opentelemetry/api';
import type { Attributes, Context, Span, Tracer, TracerProvider } from '@opentelemetry/api';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PACKAGE, callHook } from './diagnostics';
import { extractRequestContext, outcomeOf } from './extract';
import type { ExtractOutcome } from './extract';
import { optionError } from './propagator';
import { parseTraceparent } from './traceparent';

/** Options every adapter takes; all optional. `Req`/`Res` are the framework's request and response. */
export interface MeshTraceOptions<Req = IncomingMessage, Res = ServerResponse> {
  /** Where spans come from. Default: the global tracer provider at request time. */
  tracerProvider?: TracerProvider;
  /**
   * Requests that get no span but still propagate the caller's context, e.g. `['/healthz']`:
   * exact paths, regular expressions, or a predicate on the path (query string removed).
   */
  ignore?: ReadonlyArray<string | RegExp> | ((path: string, request: Req) => boolean);
  /** Called once the server span has started; a throw is reported, never breaks the request. */
  requestHook?: (span: Span, request: Req) => void;
  /** Called just before the server span ends; a throw is reported, never breaks the request. */
  responseHook?: (span: Span, response: Res) => void;
}

/** What an adapter tells core about its framework. */
export interface ServerAdapter<Req> {
  /** The adapter's package name, used in configuration errors and diagnostics. */
  readonly name: string;
  /** The route template of a finished request (`/users/:id`), if the framework matched one. */
  readonly route?: (request: Req) => string | undefined;
}

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH', 'QUERY']);
const TRACE = Symbol('meshtrace.request');

type TracedResponse = ServerResponse & { [TRACE]?: RequestTrace<unknown, unknown> };

/** The server side of one request: its context, its SERVER span and how its trace was continued. */
export class RequestTrace<Req, Res> {
  /** True once the span ended (or the request was ignored). */
  ended: boolean;

  /** @internal */
  constructor(
    /** The context the request's handlers run in. */
    readonly context: Context,
    /** The SERVER span (non-recording when ignored). */
    readonly span: Span,
    /** Whether the inbound trace was continued, and if not, why. */
    readonly outcome: ExtractOutcome,
    private readonly method: string,
    private readonly owned: boolean,
    private readonly tracing: ServerTracing<Req, Res>,
    private readonly request: Req,
    private readonly response: Res,
    ignored: boolean,
  ) {
    this.ended = ignored;
  }

  /** Records a thrown error on the span and marks it ERROR. */
  recordException(error: unknown): void {
    if (this.ended) return;
    const err = error instanceof Error ? error : new Error(String(error));
    this.span.recordException(err);
    this.span.setAttribute('error.type', err.name || 'Error');
    this.span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
  }

  /** Ends the span with the response status; runs once, whatever calls it first. */
  end(statusCode: number | undefined): void {
    if (this.ended) return;
    this.ended = true;
    const span = this.span;
    const route = this.tracing.adapter.route?.(this.request);
    if (route) {
      span.setAttribute('http.route', route);
      span.updateName(`${this.method === '_OTHER' ? 'HTTP' : this.method} ${route}`);
    }
    if (statusCode === undefined) {
      span.addEvent('meshtrace.client_aborted');
    } else {
      span.setAttribute('http.response.status_code', statusCode);
      if (statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
    }
    callHook('responseHook', this.tracing.options.responseHook, span, this.response);
    if (this.owned) span.end();
  }
}

function onFinish(this: TracedResponse): void {
  this[TRACE]?.end(this.statusCode);
}

function onClose(this: TracedResponse): void {
  // 'close' without 'finish': the client went away before the response was written.
  const t = this[TRACE];
  if (t !== undefined && !t.ended) t.end(this.writableFinished ? this.statusCode : undefined);
}

function hostAndPort(host: string | undefined, encrypted: boolean): [string | undefined, number] {
  const defaultPort = encrypted ? 443 : 80;
  if (!host) return [undefined, defaultPort];
  const close = host.charCodeAt(0) === 91 /* [ */ ? host.indexOf(']') : -1;
  const colon = host.indexOf(':', close + 1);
  if (colon < 0) return [close > 0 ? host.slice(1, close) : host, defaultPort];
  const port = Number(host.slice(colon + 1));
  return [close > 0 ? host.slice(1, close) : host.slice(0, colon), Number.isInteger(port) && port > 0 ? port : defaultPort];
}

/** Builds the per-request tracing of an adapter; validates options once, at setup. */
export class ServerTracing<Req, Res> {
  /** @internal */
  readonly options: MeshTraceOptions<Req, Res>;
  private readonly tracer: Tracer | undefined;
  private readonly ignoreExact: Set<string> | undefined;
  private readonly ignorePatterns: RegExp[] | undefined;
  private readonly ignoreFn: ((path: string, request: Req) => boolean) | undefined;

  constructor(
    options: MeshTraceOptions<Req, Res> | undefined,
    /** @internal */
    readonly adapter: ServerAdapter<Req>,
  ) {
    const pkg = adapter.name;
    if (options === undefined || options === null) options = {};
    if (typeof options !== 'object') throw optionError(pkg, 'options', 'an object', options);
    const { tracerProvider, ignore, requestHook, responseHook } = options;
    if (tracerProvider !== undefined && typeof tracerProvider?.getTracer !== 'function') {
      throw optionError(pkg, 'tracerProvider', 'a TracerProvider', tracerProvider);
    }
    if (requestHook !== undefined && typeof requestHook !== 'function') throw optionError(pkg, 'requestHook', 'a function', requestHook);
    if (responseHook !== undefined && typeof responseHook !== 'function') throw optionError(pkg, 'responseHook', 'a function', responseHook);
    if (typeof ignore === 'function') {
      this.ignoreFn = ignore;
    } else if (ignore !== undefined) {
      if (!Array.isArray(ignore)) throw optionError(pkg, 'ignore', 'an array of strings and RegExps, or a function', ignore);
      for (const entry of ignore) {
        if (typeof entry === 'string') (this.ignoreExact ??= new Set()).add(entry);
        else if (entry instanceof RegExp) (this.ignorePatterns ??= []).push(entry);
        else throw optionError(pkg, 'ignore', 'an array of strings and RegExps, or a function', entry);
      }
    }
    this.options = options;
    this.tracer = tracerProvider?.getTracer(PACKAGE);
  }

  private ignored(path: string, request: Req): boolean {
    if (this.ignoreExact?.has(path)) return true;
    if (this.ignorePatterns !== undefined) for (const re of this.ignorePatterns) if (re.test(path)) return true;
    if (this.ignoreFn !== undefined) {
      try {
        return this.ignoreFn(path, request) === true;
      } catch {
        return false;
      }
    }
    return false;
  }

  /**
   * Starts tracing one request: extracts (or reuses an active server span), starts the SERVER span,
   * binds `req`/`res` events to the request's context and ends the span when the response finishes
   * or the client aborts. Run the rest of the request inside `context.with(trace.context, ...)`.
   */
  start(req: IncomingMessage, res: ServerResponse, request: Req, response: Res): RequestTrace<Req, Res> {
    const rawMethod = req.method ?? 'GET';
    const method = KNOWN_METHODS.has(rawMethod) ? rawMethod : '_OTHER';
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const headers = req.headers;

    // Another HTTP instrumentation already made the SERVER span and extracted: enrich it, never a second one.
    const active = api.active();
    const existing = trace.getSpan(active);
    if (existing !== undefined && existing.spanContext().isRemote !== true) {
      const outcome = outcomeOf(parseTraceparent(headers.traceparent));
      existing.setAttribute('meshtrace.propagation.outcome', outcome.outcome);
      if (outcome.reason !== undefined) existing.setAttribute('meshtrace.propagation.reason', outcome.reason);
      return this.track(new RequestTrace(active, existing, outcome, method, false, this, request, response, false), req, res);
    }

    const extracted = extractRequestContext(headers, active);
    if (this.ignored(path, request)) {
      return new RequestTrace(extracted.context, trace.wrapSpanContext(trace.getSpanContext(extracted.context) ?? INVALID), extracted.outcome, method, false, this, request, response, true);
    }

    const encrypted = (req.socket as { encrypted?: boolean } | null)?.encrypted === true;
    const [address, port] = hostAndPort(headers.host, encrypted);
    const forwarded = headers['x-forwarded-for'];
    const attributes: Attributes = {
      'http.request.method': method,
      'url.path': path,
      'url.scheme': encrypted ? 'https' : 'http',
      'server.port': port,
      'network.protocol.version': req.httpVersion,
      'meshtrace.propagation.outcome': extracted.outcome.outcome,
    };
    if (method === '_OTHER') attributes['http.request.method_original'] = rawMethod;
    if (address !== undefined) attributes['server.address'] = address;
    const peer = req.socket?.remoteAddress;
    const client = typeof forwarded === 'string' ? forwarded.split(',', 1)[0].trim() : peer;
    if (client) attributes['client.address'] = client;
    if (peer) attributes['network.peer.address'] = peer;
    const ua = headers['user-agent'];
    if (ua !== undefined) attributes['user_agent.original'] = ua;
    if (extracted.outcome.reason !== undefined) attributes['meshtrace.propagation.reason'] = extracted.outcome.reason;

    const tracer = this.tracer ?? trace.getTracer(PACKAGE);
    const span = tracer.startSpan(method === '_OTHER' ? 'HTTP' : method, { kind: SpanKind.SERVER, attributes }, extracted.context);
    const ctx = trace.setSpan(extracted.context, span);
    const rt = new RequestTrace(ctx, span, extracted.outcome, method, true, this, request, response, false);
    callHook('requestHook', this.options.requestHook, span, request);
    return this.track(rt, req, res);
  }

  private track(rt: RequestTrace<Req, Res>, req: IncomingMessage, res: ServerResponse): RequestTrace<Req, Res> {
    // Body parsers and 'finish' listeners run from socket callbacks: bind them to the request's context.
    api.bind(rt.context, req);
    api.bind(rt.context, res);
    (res as TracedResponse)[TRACE] = rt as RequestTrace<unknown, unknown>;
    res.once('finish', onFinish);
    res.once('close', onClose);
    return rt;
  }
}

const INVALID = trace.wrapSpanContext({ traceId: '00000000000000000000000000000000', spanId: '0000000000000000', traceFlags: 0 }).spanContext();

/**
 * The core of every adapter: validates `options` at setup and returns the per-request tracing.
 * @example
 * const tracing = createServerTracing(options, { name: '@my/adapter', route: (req) => req.routePattern });
 * const t = tracing.start(req, res, req, res);
 * context.with(t.context, next);
 */
export function createServerTracing<Req, Res>(options: MeshTraceOptions<Req, Res> | undefined, adapter: ServerAdapter<Req>): ServerTracing<Req, Res> {
  return new ServerTracing(options, adapter);
}
