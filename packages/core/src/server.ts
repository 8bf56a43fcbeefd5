import { ROOT_CONTEXT, SpanKind, SpanStatusCode, context as api, defaultTextMapGetter, propagation, trace } from '@opentelemetry/api';
import type { Attributes, Baggage, Context, Link, Span, TextMapGetter, Tracer, TracerProvider } from '@opentelemetry/api';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { RANDOM_TRACE_ID_KEY } from './context';
import { PACKAGE, callHook, checkPropagation, preview, warner } from './diagnostics';
import { bindEmitter, bindingOf } from './emitter';
import { DEFAULT_CONFIG, extractRequestContext, extractWith, extractionOf, outcomeOf, recordOutcome, trustOutcome } from './extract';
import type { ExtractConfig, ExtractOutcome, ExtractResult } from './extract';
import { httpRpcMetadata, withoutRpcMetadata } from './otel-keys';
import type { RpcMetadata } from './otel-keys';
import { optionError } from './propagator';
import { FLAG_RANDOM, formatTraceparent, parseTraceparent } from './traceparent';
import { inboundPolicy } from './trust';
import type { InboundPolicy, TrustDecider, TrustDecision } from './trust';

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
  /**
   * `'continue'` (default) the caller's trace; `'restart'` a new trace linked to the caller's, for a
   * service facing untrusted clients (nobody outside can force sampling or join another trace);
   * `'ignore'` inbound trace headers entirely. Or a policy per peer: a function of the request
   * answering one of those, or `{ trustedPeers, trustedWhen, proxyHops, otherwise }`.
   */
  inbound?: InboundPolicy<Req>;
  /** With `inbound: 'restart'` or `'ignore'`, the inbound baggage keys kept (all others are dropped). Default none. */
  baggageAllowList?: readonly string[];
  /** Baggage keys copied onto the server span as `baggage.<key>`. Never all keys: values can be high-cardinality. Default none. */
  baggageAttributes?: readonly string[];
  /** Send the W3C Level 2 `traceresponse` header so callers and proxies can correlate. Default `false`. */
  traceResponse?: boolean;
  /**
   * Append the `trace;desc=<traceparent>` metric to `server-timing` (after any the application sets), so a
   * page can read the server span through the Performance API; cross-origin pages need `Timing-Allow-Origin`. Default `false`.
   */
  serverTiming?: boolean;
  /** Record `x-request-id` and the proxy that forwarded the request (`meshtrace.proxy`: envoy, istio, linkerd). Default `true`. */
  proxyAttributes?: boolean;
}

/** A route's own options (Fastify route `config.meshTrace`, `meshTraceRoute()` on an Express or Koa router); they replace the adapter's for that route. */
export interface MeshTraceRouteOptions<Req = IncomingMessage> {
  /** The route's inbound policy, in any form the adapter's `inbound` takes. */
  inbound: InboundPolicy<Req>;
}

/** A route's options, checked at setup, for the adapter to hand to {@link ServerTracing.start} with that route's requests. */
export class RoutePolicy<Req> {
  /** @internal */
  readonly decide: TrustDecider<Req>;

  /** @internal */
  constructor(pkg: string, options: MeshTraceRouteOptions<Req>, option: string) {
    if (options === null || typeof options !== 'object' || Array.isArray(options)) throw optionError(pkg, option, 'an object with inbound', options);
    for (const key of Object.keys(options)) if (key !== 'inbound') throw optionError(pkg, `${option}.${key}`, 'absent: a route takes inbound only', (options as unknown as Record<string, unknown>)[key]);
    if (options.inbound === undefined) throw optionError(pkg, `${option}.inbound`, "'continue', 'restart', 'ignore', a function or a policy", undefined);
    this.decide = inboundPolicy(pkg, `${option}.inbound`, options.inbound, true);
  }
}

/**
 * Checks a route's options at setup (a `TypeError` naming `pkg` and `option` when they are wrong) and
 * returns what {@link ServerTracing.start} takes for that route's requests.
 * @example const policy = createRoutePolicy('@my/adapter', { inbound: 'restart' }, 'meshTraceRoute');
 */
export function createRoutePolicy<Req>(pkg: string, options: MeshTraceRouteOptions<Req>, option = 'options'): RoutePolicy<Req> {
  return new RoutePolicy(pkg, options, option);
}

/** What an adapter tells core about its framework. */
export interface ServerAdapter<Req> {
  /** The adapter's package name, used in configuration errors and diagnostics. */
  readonly name: string;
  /** The route template of a finished request (`/users/:id`), if the framework matched one. */
  readonly route?: (request: Req) => string | undefined;
}

/** The options every meshtrace instrumentation takes, HTTP or not: where spans come from, what is ignored, the hooks. */
export type CommonOptions<Req, Res> = Pick<MeshTraceOptions<Req, Res>, 'tracerProvider' | 'ignore' | 'requestHook' | 'responseHook'>;

/** {@link CommonOptions} checked once, for the per-request path. */
export interface ResolvedOptions<Req, Res> {
  /** The tracer of `tracerProvider`, named after the package; undefined to use the global provider at request time. */
  readonly tracer: Tracer | undefined;
  /** `ignore` as one predicate (a throw in the user's is warned about and counts as not ignored); undefined when nothing is ignored. */
  readonly ignored: ((path: string, request: Req) => boolean) | undefined;
  readonly requestHook: CommonOptions<Req, Res>['requestHook'];
  readonly responseHook: CommonOptions<Req, Res>['responseHook'];
}

/**
 * Checks the options every instrumentation shares at setup: a wrong type throws a `TypeError` naming
 * `pkg` and the option. `paths` says what `ignore` lists, for that message.
 * @example const { tracer, ignored } = resolveOptions('@my/adapter', options);
 */
export function resolveOptions<Req, Res>(pkg: string, options: CommonOptions<Req, Res> | undefined, paths = 'strings'): ResolvedOptions<Req, Res> {
  if (options === undefined || options === null) options = {};
  if (typeof options !== 'object') throw optionError(pkg, 'options', 'an object', options);
  const { tracerProvider, ignore, requestHook, responseHook } = options;
  if (tracerProvider !== undefined && typeof tracerProvider?.getTracer !== 'function') throw optionError(pkg, 'tracerProvider', 'a TracerProvider', tracerProvider);
  if (requestHook !== undefined && typeof requestHook !== 'function') throw optionError(pkg, 'requestHook', 'a function', requestHook);
  if (responseHook !== undefined && typeof responseHook !== 'function') throw optionError(pkg, 'responseHook', 'a function', responseHook);
  return { tracer: tracerProvider?.getTracer(pkg), ignored: ignoreMatcher(pkg, ignore, paths), requestHook, responseHook };
}

function ignoreMatcher<Req>(pkg: string, ignore: CommonOptions<Req, unknown>['ignore'], paths: string): ((path: string, request: Req) => boolean) | undefined {
  if (ignore === undefined) return undefined;
  if (typeof ignore === 'function') {
    return (path, request) => {
      try {
        return ignore(path, request) === true;
      } catch (err) {
        warner.warn(`${pkg}:ignore`, () => `${pkg}: the ignore predicate threw, so the request is traced: ${err instanceof Error ? err.message : String(err)}`);
        return false;
      }
    };
  }
  const expected = `an array of ${paths} and RegExps, or a function`;
  if (!Array.isArray(ignore)) throw optionError(pkg, 'ignore', expected, ignore);
  const exact = new Set<string>();
  const patterns: RegExp[] = [];
  for (const entry of ignore) {
    if (typeof entry === 'string') exact.add(entry);
    else if (entry instanceof RegExp) patterns.push(entry);
    else throw optionError(pkg, 'ignore', expected, entry);
  }
  if (patterns.length === 0) return (path) => exact.has(path);
  return (path) => {
    if (exact.has(path)) return true;
    for (const re of patterns) if (re.test(path)) return true;
    return false;
  };
}

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH', 'QUERY']);

/** The semconv `http.request.method` for a method as sent: a known method matched exactly, else `_OTHER`. */
export function httpMethod(raw: string): string {
  return KNOWN_METHODS.has(raw) ? raw : '_OTHER';
}

/** Records `error` on `span`: an exception event, `error.type` and ERROR status. */
export function recordSpanError(span: Span, error: unknown): void {
  // Duck-typed: errors from another realm (vm, workers' structured clones) fail instanceof Error.
  const err = errorLike(error) ? error : new Error(String(error));
  span.recordException(err);
  span.setAttribute('error.type', err.name || 'Error');
  span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
}

function errorLike(value: unknown): value is Error {
  return typeof value === 'object' && value !== null && typeof (value as Error).message === 'string';
}

/** The HTTP status an error asks for (`status` / `statusCode`, as http-errors, Koa and Fastify set), if any. */
function statusOf(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const s = (error as { status?: unknown; statusCode?: unknown }).status ?? (error as { statusCode?: unknown }).statusCode;
  return typeof s === 'number' && Number.isInteger(s) ? s : undefined;
}

/** The server side of one request: its context, its SERVER span and how its trace was continued. */
export class RequestTrace<Req, Res> {
  /** True once the span ended (or the request was ignored). */
  ended: boolean;
  /** @internal An outer adapter's trace of the same response (meshHttp around a framework), ended after this one. */
  outer: RequestTrace<unknown, unknown> | undefined;
  /** @internal The route policy that decided the request's inbound trust, if one did. */
  route: RoutePolicy<Req> | undefined;
  private errored = false;

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

  /**
   * Records a thrown error on the span and marks it ERROR, unless the error asks for a 4xx status:
   * the HTTP semantic conventions leave a SERVER span answering 4xx unset (the exception is still recorded).
   */
  recordException(error: unknown): void {
    if (this.ended) return;
    const status = statusOf(error);
    if (status !== undefined && status >= 400 && status < 500) {
      this.span.recordException(errorLike(error) ? error : new Error(String(error)));
      return;
    }
    recordSpanError(this.span, error);
    this.errored = true;
  }

  /** @internal Names the span after the route template, once the framework has matched one; returns the template. */
  nameRoute(): string | undefined {
    let route: string | undefined;
    try {
      route = this.tracing.adapter.route?.(this.request);
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
      const hook = this.tracing.options.responseHook;
      // 'finish' and 'close' can fire from outside the request's context: the hook still runs in it.
      if (hook !== undefined) api.with(this.context, callHook, undefined, 'responseHook', hook, span, this.response, this.tracing.adapter.name);
      if (this.owned) span.end();
    }
    this.outer?.end(statusCode);
  }
}

/** Reads inbound baggage and no trace header: what `inbound: 'ignore'` keeps of a request. */
const BAGGAGE_ONLY: ExtractConfig = Object.freeze({ formats: Object.freeze([]), baggage: true });

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
  /** The global provider's tracer, and the provider it came from: looked up again only when that changes. */
  private globalTracer: Tracer | undefined;
  private globalProvider: TracerProvider | undefined;
  private readonly ignored: ((path: string, request: Req) => boolean) | undefined;
  private readonly decide: TrustDecider<Req>;
  private readonly allowList: readonly string[] | undefined;
  private readonly baggageAttributes: ReadonlyArray<readonly [string, string]> | undefined;
  private readonly traceResponse: boolean;
  private readonly serverTiming: boolean;
  private readonly proxyAttributes: boolean;
  private checked = false;

  constructor(
    options: MeshTraceOptions<Req, Res> | undefined,
    /** @internal */
    readonly adapter: ServerAdapter<Req>,
  ) {
    const pkg = adapter.name;
    const common = resolveOptions(pkg, options);
    const { inbound = 'continue', baggageAllowList, baggageAttributes, traceResponse = false, serverTiming = false, proxyAttributes = true } = options ?? {};
    this.decide = inboundPolicy(pkg, 'inbound', inbound);
    const keys = (name: string, v: unknown): readonly string[] | undefined => {
      if (v === undefined) return undefined;
      if (!Array.isArray(v) || v.some((k) => typeof k !== 'string' || k.length === 0)) throw optionError(pkg, name, 'an array of baggage keys', v);
      return v.length > 0 ? v : undefined;
    };
    this.allowList = keys('baggageAllowList', baggageAllowList);
    const attrKeys = keys('baggageAttributes', baggageAttributes);
    this.baggageAttributes = attrKeys?.map((k) => [k, `baggage.${k}`] as const);
    if (typeof traceResponse !== 'boolean') throw optionError(pkg, 'traceResponse', 'a boolean', traceResponse);
    if (typeof serverTiming !== 'boolean') throw optionError(pkg, 'serverTiming', 'a boolean', serverTiming);
    if (typeof proxyAttributes !== 'boolean') throw optionError(pkg, 'proxyAttributes', 'a boolean', proxyAttributes);
    this.traceResponse = traceResponse;
    this.serverTiming = serverTiming;
    this.proxyAttributes = proxyAttributes;
    this.ignored = common.ignored;
    this.options = options ?? {};
    this.tracer = common.tracer;
  }

  /**
   * Starts tracing one request: decides inbound trust (with `route`'s policy when the adapter knows the
   * route has one), extracts (or reuses an active server span), starts the SERVER span, binds `req`/`res`
   * events to the request's context and ends the span when the response finishes or the client aborts.
   * Run the rest of the request inside `context.with(trace.context, ...)`.
   */
  start(req: IncomingMessage, res: ServerResponse, request: Req, response: Res, route?: RoutePolicy<Req>): RequestTrace<Req, Res> {
    const rawMethod = req.method ?? 'GET';
    const method = httpMethod(rawMethod);
    // Express trims req.url for middleware mounted under a path; originalUrl keeps the whole target.
    const url = (req as IncomingMessage & { originalUrl?: string }).originalUrl ?? req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const headers = req.headers;
    const decision = (route?.decide ?? this.decide)(req, request);

    // Another HTTP instrumentation already made the SERVER span and extracted: enrich it, never a second one.
    // instrumentation-http keeps its span in the request's RPC metadata, so it is found even while an
    // Express, Koa or Fastify instrumentation's INTERNAL span is the active one.
    let active = api.active();
    const rpc = httpRpcMetadata(active);
    const existing = rpc?.span ?? trace.getSpan(active);
    if (existing !== undefined && isServerSpan(existing, rpc)) {
      // The global propagator was a MeshPropagator: it validated, counted and recorded the outcome already.
      const extraction = extractionOf(active);
      const raw = headers.traceparent;
      const outcome = extraction?.outcome ?? outcomeOf(parseTraceparent(raw));
      setOutcome(existing, outcome);
      if (extraction === undefined && outcome.outcome === 'malformed' && continuedFrom(existing, raw)) {
        // Another propagator continued a header meshtrace rejects: the request must not stay in that trace.
        // Its span stays as it is (it cannot be re-parented); the request gets a fresh root of its own.
        warner.warn('foreign-malformed', () => `${PACKAGE}: the global propagator continued a malformed traceparent (${outcome.reason}) ${preview(raw)}; meshtrace started a fresh root for the request. Register new MeshPropagator() as the propagator (NodeSDK's textMapPropagator) so the HTTP instrumentation rejects it too.`);
        active = withoutRpcMetadata(trace.deleteSpan(active));
      } else {
        if (extraction === undefined) recordOutcome(outcome, raw);
        if (decision.action !== 'continue') active = this.untrustedBeside(active, outcome, decision);
        const rt = new RequestTrace(active, existing, outcome, method, false, this, request, response, false);
        rt.route = route;
        // Its owner may end it on 'finish' before our listener runs: name it now if the route is known already.
        const name = rt.nameRoute();
        // @opentelemetry/instrumentation-http names its span from this when it ends it.
        if (name && rpc !== undefined) rpc.route = name;
        this.respond(res, active, existing);
        return this.track(rt, req, res);
      }
    }

    if (!this.checked) {
      this.checked = true;
      checkPropagation();
    }
    const extracted = decision.action === 'continue' ? extractRequestContext(headers, active) : this.untrusted(headers, active, decision);
    if (this.ignored?.(path, request) === true) {
      // No span, but body events still run in the propagated context.
      bindEmitter(extracted.context, req);
      bindEmitter(extracted.context, res);
      const rt = new RequestTrace(extracted.context, trace.wrapSpanContext(trace.getSpanContext(extracted.context) ?? INVALID), extracted.outcome, method, false, this, request, response, true);
      rt.route = route;
      return rt;
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
    };
    outcomeAttributes(extracted.outcome, attributes);
    if (method === '_OTHER') attributes['http.request.method_original'] = rawMethod;
    if (address !== undefined) attributes['server.address'] = address;
    const peer = req.socket?.remoteAddress;
    const client = typeof forwarded === 'string' ? forwarded.split(',', 1)[0].trim() : peer;
    if (client) attributes['client.address'] = client;
    if (peer) attributes['network.peer.address'] = peer;
    const ua = headers['user-agent'];
    if (ua !== undefined) attributes['user_agent.original'] = ua;
    if (this.proxyAttributes) proxyAttributes(headers, attributes);
    if (this.baggageAttributes !== undefined) {
      const bag = propagation.getBaggage(extracted.context);
      if (bag !== undefined) {
        for (const [key, name] of this.baggageAttributes) {
          const entry = bag.getEntry(key);
          if (entry !== undefined) attributes[name] = entry.value;
        }
      }
    }

    const tracer = this.tracer ?? this.tracerOfGlobal();
    const span = tracer.startSpan(method === '_OTHER' ? 'HTTP' : method, { kind: SpanKind.SERVER, attributes, links: extracted.links as Link[] | undefined }, extracted.context);
    const ctx = trace.setSpan(extracted.context, span);
    this.respond(res, ctx, span);
    const rt = new RequestTrace(ctx, span, extracted.outcome, method, true, this, request, response, false);
    rt.route = route;
    callHook('requestHook', this.options.requestHook, span, request, this.adapter.name);
    return this.track(rt, req, res);
  }

  /** Sends the server span's context back as configured: `traceresponse` (Level 2) and the `server-timing` trace metric. */
  private respond(res: ServerResponse, ctx: Context, span: Span): void {
    if ((!this.traceResponse && !this.serverTiming) || res.headersSent) return;
    const sc = span.spanContext();
    // The SDK's span flags carry only "sampled"; the random flag lives in the context.
    const value = formatTraceparent(sc.traceId, sc.spanId, ctx.getValue(RANDOM_TRACE_ID_KEY) === true ? sc.traceFlags | FLAG_RANDOM : sc.traceFlags);
    if (this.traceResponse) res.setHeader('traceresponse', value);
    if (this.serverTiming) addServerTiming(res, `trace;desc=${value}`);
  }

  /** The tracer named after the adapter (its instrumentation scope), cached per registered provider (the SDK hands out one tracer per name anyway). */
  private tracerOfGlobal(): Tracer {
    const proxy = trace.getTracerProvider() as TracerProvider & { getDelegate?: () => TracerProvider };
    const provider = typeof proxy.getDelegate === 'function' ? proxy.getDelegate() : proxy;
    if (provider !== this.globalProvider || this.globalTracer === undefined) {
      this.globalProvider = provider;
      this.globalTracer = trace.getTracer(this.adapter.name);
    }
    return this.globalTracer;
  }

  /** `restart` and `ignore`: a fresh root, linked (restart) to what came in, keeping only allowed baggage. */
  private untrusted(headers: IncomingMessage['headers'], active: Context, decision: TrustDecision): ExtractResult {
    const ctx = trace.deleteSpan(active).setValue(RANDOM_TRACE_ID_KEY, true);
    let links: Link[] | undefined;
    let inbound: Baggage | undefined;
    if (decision.action === 'restart') {
      const seen = extractWith(DEFAULT_CONFIG, headers, defaultTextMapGetter as TextMapGetter<typeof headers>, ROOT_CONTEXT, false);
      const sc = trace.getSpanContext(seen);
      if (sc !== undefined) links = [{ context: sc, attributes: { 'meshtrace.link.reason': 'restarted' } }];
      inbound = propagation.getBaggage(seen);
    } else if (this.allowList !== undefined && headers.baggage !== undefined) {
      const seen = extractWith(BAGGAGE_ONLY, headers, defaultTextMapGetter as TextMapGetter<typeof headers>, ROOT_CONTEXT, false);
      inbound = propagation.getBaggage(seen);
    }
    const outcome = trustOutcome(decision.action as 'restart' | 'ignore', decision.reason);
    recordOutcome(outcome);
    return { context: this.allowedBaggage(ctx, inbound), outcome, links };
  }

  /**
   * `restart` and `ignore` beside an HTTP instrumentation's SERVER span: that span cannot move to a new
   * trace without a second SERVER span, so only the baggage is cut to the allow-list; when the span
   * continued the caller's trace, a warning says how to let meshtrace make the span and apply the policy.
   */
  private untrustedBeside(active: Context, outcome: ExtractOutcome, decision: TrustDecision): Context {
    if (outcome.outcome === 'continued') {
      const pkg = this.adapter.name;
      warner.warn(`${pkg}:trust-beside-instrumentation`, () => `${pkg}: the inbound policy said '${decision.action}'${decision.reason === undefined ? '' : ` (${decision.reason})`}, but an HTTP instrumentation had already continued the caller's trace in its SERVER span, which meshtrace cannot move without a second SERVER span; only the baggage was cut to baggageAllowList. Turn the instrumentation's server side off (instrumentation-http: disableIncomingRequestInstrumentation: true) so meshtrace makes the SERVER span and applies the policy.`);
    }
    return this.allowedBaggage(active, propagation.getBaggage(active));
  }

  /** `ctx` with only the allow-listed entries of `inbound` as its baggage (none without an allow-list). */
  private allowedBaggage(ctx: Context, inbound: Baggage | undefined): Context {
    ctx = propagation.deleteBaggage(ctx);
    if (inbound === undefined || this.allowList === undefined) return ctx;
    const kept: Record<string, ReturnType<Baggage['getAllEntries']>[number][1]> = {};
    let any = false;
    for (const key of this.allowList) {
      const entry = inbound.getEntry(key);
      if (entry !== undefined) {
        kept[key] = entry;
        any = true;
      }
    }
    return any ? propagation.setBaggage(ctx, propagation.createBaggage(kept)) : ctx;
  }

  private track(rt: RequestTrace<Req, Res>, req: IncomingMessage, res: ServerResponse): RequestTrace<Req, Res> {
    const outer = traceOf(res);
    if (outer !== undefined) {
      // Two adapters on one response (meshHttp around a framework): the inner one ends both.
      rt.outer = outer;
    } else {
      // Added before this binding, so not wrapped by it: they need no context of their own, and `end` runs the hooks in the request's.
      // `on`, not `once`: each event comes once per response, `end` runs once anyway, and `once` allocates a wrapper and removes it.
      res.on('finish', onFinish);
      res.on('close', onClose);
    }
    // Body parsers and 'finish' listeners run from socket callbacks: bind them to the request's context.
    bindEmitter(rt.context, req);
    bindEmitter(rt.context, res).attachment = rt;
    return rt;
  }
}

/** The `server-timing` metric a response adds, and the `writeHead` it had before. */
const SERVER_TIMING = Symbol('meshtrace.server-timing');
type Timed = ServerResponse & { [SERVER_TIMING]?: { metric: string; writeHead: ServerResponse['writeHead'] } };

/**
 * Adds `metric` to the response's `server-timing` when its head is written, after whatever the
 * application set by then (`setHeader`, or the headers given to `writeHead`, as Fastify does), never
 * replacing it: the header is a list, so a second field line is the same as one more element.
 */
function addServerTiming(res: ServerResponse, metric: string): void {
  const timed = res as Timed;
  const installed = timed[SERVER_TIMING];
  if (installed !== undefined) {
    // A second adapter on the same response (meshHttp around a framework) reports the same span.
    installed.metric = metric;
    return;
  }
  timed[SERVER_TIMING] = { metric, writeHead: res.writeHead };
  res.writeHead = writeHeadWithTiming as ServerResponse['writeHead'];
}

/** `writeHead(status, [message], [headers])`, which Node also calls for a head written implicitly. */
function writeHeadWithTiming(this: Timed, ...args: unknown[]): ServerResponse {
  const { metric, writeHead } = this[SERVER_TIMING]!;
  if (!this.headersSent) {
    const at = typeof args[1] === 'string' ? 2 : 1;
    const given = args[at];
    if (Array.isArray(given)) {
      // Raw form: [name, value, ...] or [[name, value], ...]; writeHead appends each.
      args[at] = typeof given[0] === 'string' ? [...given, 'server-timing', metric] : [...given, ['server-timing', metric]];
    } else {
      const key = given !== null && typeof given === 'object' ? Object.keys(given).find((k) => k.toLowerCase() === 'server-timing') : undefined;
      if (key !== undefined) {
        // writeHead's own headers replace what setHeader stored: extend them instead.
        args[at] = { ...(given as Record<string, unknown>), [key]: ([] as unknown[]).concat((given as Record<string, unknown>)[key], metric) };
      } else {
        this.appendHeader('server-timing', metric);
      }
    }
  }
  return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args);
}

const ENVOY_ISTIO = 'x-envoy-peer-metadata';

/** `x-request-id` and which proxy forwarded the request, from the headers it adds. */
function proxyAttributes(headers: IncomingMessage['headers'], attributes: Attributes): void {
  const requestId = headers['x-request-id'];
  if (typeof requestId === 'string') attributes['http.request.header.x-request-id'] = [requestId];
  let proxy: string | undefined;
  for (const name in headers) {
    if (name.charCodeAt(0) === 108 /* l */ && name.startsWith('l5d-')) {
      proxy = 'linkerd';
      break;
    }
    if (name.charCodeAt(0) === 120 /* x */) {
      if (name.startsWith(ENVOY_ISTIO)) {
        proxy = 'istio';
        break;
      }
      if (name.startsWith('x-envoy-') || name === 'x-forwarded-client-cert') proxy = 'envoy';
    }
  }
  if (proxy !== undefined) attributes['meshtrace.proxy'] = proxy;
}

/**
 * The SERVER span of an HTTP instrumentation that ran first: marked by its RPC metadata (even when sampled
 * out), or an SDK span of kind SERVER not yet ended. Not any active span: a server started inside one
 * (a startup span) would otherwise put every request into it.
 */
function isServerSpan(span: Span, rpc: RpcMetadata | undefined): boolean {
  if (span.spanContext().isRemote === true) return false;
  if (rpc !== undefined && rpc.span === span) return true;
  return (span as Span & { kind?: SpanKind }).kind === SpanKind.SERVER && span.isRecording();
}

/** True when `span` is in the trace the raw header names: the other instrumentation continued that header. */
function continuedFrom(span: Span, raw: unknown): boolean {
  const traceId = span.spanContext().traceId;
  return raw !== undefined && String(raw).toLowerCase().includes(traceId);
}

/** The outcome attributes of a server span: `meshtrace.propagation.outcome`, `.reason` and `.format`. */
function outcomeAttributes(outcome: ExtractOutcome, attributes: Attributes): Attributes {
  attributes['meshtrace.propagation.outcome'] = outcome.outcome;
  if (outcome.reason !== undefined) attributes['meshtrace.propagation.reason'] = outcome.reason;
  if (outcome.format !== undefined) attributes['meshtrace.propagation.format'] = outcome.format;
  return attributes;
}

function setOutcome(span: Span, outcome: ExtractOutcome): void {
  span.setAttributes(outcomeAttributes(outcome, {}));
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
