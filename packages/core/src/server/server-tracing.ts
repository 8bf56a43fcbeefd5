import { ROOT_CONTEXT, SpanKind, context as api, defaultTextMapGetter, propagation, trace } from '@opentelemetry/api';
import type {
  Attributes,
  Baggage,
  Context,
  Link,
  Span,
  TextMapGetter,
  Tracer,
  TracerProvider,
} from '@opentelemetry/api';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PACKAGE, checkPropagation, preview, warner, callHook } from '../internal/diagnostics';
import { bindEmitter } from '../internal/emitter';
import { optionError } from '../internal/options';
import { globalTracerProvider, httpRpcMetadata, withoutRpcMetadata } from '../internal/otel-internals';
import type { RpcMetadata } from '../internal/otel-internals';
import { RANDOM_TRACE_ID_KEY } from '../propagation/extracted-context';
import { DEFAULT_CONFIG, extractRequestContext, extractWith } from '../propagation/extract';
import { extractionOf } from '../propagation/extraction';
import type { ExtractConfig, ExtractResult } from '../propagation/extraction';
import { outcomeAttributes, outcomeOf, recordOutcome, trustOutcome } from '../propagation/outcome';
import type { ExtractOutcome } from '../propagation/outcome';
import { FLAG_RANDOM, formatTraceparent, parseTraceparent } from '../w3c/traceparent';
import { hostAndPort, httpMethod, probeAttribute, proxyAttributes } from './http-attributes';
import { resolveOptions } from './options';
import type { MeshTraceOptions, ServerAdapter } from './options';
import { RequestTrace, endWithResponse } from './request-trace';
import type { TraceSettings } from './request-trace';
import type { RoutePolicy } from './route-policy';
import { addServerTiming } from './server-timing';
import { inboundPolicy } from './trust';
import type { TrustDecider, TrustDecision } from './trust';

const same = <T>(x: T): T => x;

/** Reads inbound baggage and no trace header: what `inbound: 'ignore'` keeps of a request. */
const BAGGAGE_ONLY: ExtractConfig = Object.freeze({ formats: Object.freeze([]), baggage: true });

/** Builds the per-request tracing of an adapter; validates options once, at setup. */
export class ServerTracing<Req, Res> {
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
  private readonly requestHook: MeshTraceOptions<Req, Res>['requestHook'];
  /** What each request's trace reads when its response ends. */
  private readonly settings: TraceSettings<Req, Res>;
  private checked = false;
  private readonly incoming: (request: Req) => IncomingMessage;
  private readonly outgoing: (response: Res) => ServerResponse;

  constructor(
    options: MeshTraceOptions<Req, Res> | undefined,
    private readonly adapter: ServerAdapter<Req, Res>,
  ) {
    const pkg = adapter.name;
    const common = resolveOptions(pkg, options);
    const {
      inbound = 'continue',
      baggageAllowList,
      baggageAttributes,
      traceResponse = false,
      serverTiming = false,
      proxyAttributes = true,
    } = options ?? {};
    this.decide = inboundPolicy(pkg, 'inbound', inbound);
    const keys = (name: string, v: unknown): readonly string[] | undefined => {
      if (v === undefined) return undefined;
      if (!Array.isArray(v) || v.some((k) => typeof k !== 'string' || k.length === 0))
        throw optionError(pkg, name, 'an array of baggage keys', v);
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
    this.tracer = common.tracer;
    this.requestHook = common.requestHook;
    this.settings = { name: pkg, route: adapter.route, responseHook: common.responseHook };
    this.incoming = adapter.incoming ?? (same as (request: Req) => IncomingMessage);
    this.outgoing = adapter.outgoing ?? (same as (response: Res) => ServerResponse);
  }

  /**
   * Starts tracing one request: decides inbound trust (with `route`'s policy when the adapter knows the
   * route has one), extracts (or reuses an active server span), starts the SERVER span, binds `req`/`res`
   * events to the request's context and ends the span when the response finishes or the client aborts.
   * Run the rest of the request inside `context.with(trace.context, ...)`.
   */
  start(request: Req, response: Res, route?: RoutePolicy<Req>): RequestTrace<Req, Res> {
    const req = this.incoming(request);
    const res = this.outgoing(response);
    const decision = (route?.decide ?? this.decide)(req, request);
    let active = api.active();
    // instrumentation-http keeps its SERVER span in the request's RPC metadata, so it is found even while
    // an Express, Koa or Fastify instrumentation's INTERNAL span is the active one.
    const rpc = httpRpcMetadata(active);
    const existing = rpc?.span ?? trace.getSpan(active);
    if (existing !== undefined && isServerSpan(existing, rpc)) {
      const enriched = this.enrich(request, response, req, res, route, decision, active, existing, rpc);
      if (enriched !== undefined) return enriched;
      // That span continued a header meshtrace rejects: the request gets a fresh root and a span of its own.
      active = withoutRpcMetadata(trace.deleteSpan(active));
    }
    const extracted = this.extract(req.headers, active, decision);
    // Express trims req.url for middleware mounted under a path; originalUrl keeps the whole target.
    const url = (req as IncomingMessage & { originalUrl?: string }).originalUrl ?? req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    if (this.ignored?.(path, request) === true) return this.ignore(request, response, req, res, route, extracted);
    return this.own(request, response, req, res, route, extracted, path);
  }

  /**
   * Another HTTP instrumentation already made the SERVER span and extracted: records the outcome on that
   * span and reuses it, never a second one. Undefined when it continued a header meshtrace rejects: the
   * span stays as it is (it cannot be re-parented) and the request must not stay in that trace.
   */
  private enrich(
    request: Req,
    response: Res,
    req: IncomingMessage,
    res: ServerResponse,
    route: RoutePolicy<Req> | undefined,
    decision: TrustDecision,
    active: Context,
    span: Span,
    rpc: RpcMetadata | undefined,
  ): RequestTrace<Req, Res> | undefined {
    const headers = req.headers;
    // The global propagator was a MeshPropagator: it validated, counted and recorded the outcome already.
    const extraction = extractionOf(active);
    const raw = headers.traceparent;
    const outcome = extraction?.outcome ?? outcomeOf(parseTraceparent(raw));
    span.setAttributes(outcomeAttributes(outcome, {}));
    if (headers.baggage !== undefined) {
      const probe: Attributes = {};
      probeAttribute(headers.baggage, probe);
      span.setAttributes(probe);
    }
    if (extraction === undefined) {
      if (outcome.outcome === 'malformed' && continuedFrom(span, raw)) {
        warnForeignMalformed(outcome, raw);
        return undefined;
      }
      recordOutcome(outcome, raw);
    }
    const ctx = decision.action === 'continue' ? active : this.untrustedBeside(active, outcome, decision);
    const method = httpMethod(req.method ?? 'GET');
    const rt = new RequestTrace(this.settings, request, response, method, ctx, span, outcome, 'enriched', route);
    // Its owner may end it on 'finish' before our listener runs: name it now if the route is known already.
    const name = rt.nameRoute();
    // @opentelemetry/instrumentation-http names its span from this when it ends it.
    if (name && rpc !== undefined) rpc.route = name;
    this.respond(res, ctx, span);
    return endWithResponse(rt, req, res);
  }

  /** An ignored request: no span, but body events still run in the propagated context. */
  private ignore(
    request: Req,
    response: Res,
    req: IncomingMessage,
    res: ServerResponse,
    route: RoutePolicy<Req> | undefined,
    extracted: ExtractResult,
  ): RequestTrace<Req, Res> {
    const ctx = extracted.context;
    bindEmitter(ctx, req);
    bindEmitter(ctx, res);
    const span = trace.wrapSpanContext(trace.getSpanContext(ctx) ?? INVALID);
    const method = httpMethod(req.method ?? 'GET');
    return new RequestTrace(this.settings, request, response, method, ctx, span, extracted.outcome, 'ignored', route);
  }

  /** meshtrace's own SERVER span, started in the extracted context and ended with the response. */
  private own(
    request: Req,
    response: Res,
    req: IncomingMessage,
    res: ServerResponse,
    route: RoutePolicy<Req> | undefined,
    extracted: ExtractResult,
    path: string,
  ): RequestTrace<Req, Res> {
    const rawMethod = req.method ?? 'GET';
    const method = httpMethod(rawMethod);
    const attributes = this.attributes(req, rawMethod, method, path, extracted);
    const tracer = this.tracer ?? this.tracerOfGlobal();
    const span = tracer.startSpan(
      method === '_OTHER' ? 'HTTP' : method,
      { kind: SpanKind.SERVER, attributes, links: extracted.links as Link[] | undefined },
      extracted.context,
    );
    const ctx = trace.setSpan(extracted.context, span);
    this.respond(res, ctx, span);
    const rt = new RequestTrace(this.settings, request, response, method, ctx, span, extracted.outcome, 'owned', route);
    callHook('requestHook', this.requestHook, span, request, this.adapter.name);
    return endWithResponse(rt, req, res);
  }

  /** The request's context from its headers, as the inbound policy decided: continued, restarted or ignored. */
  private extract(headers: IncomingMessage['headers'], active: Context, decision: TrustDecision): ExtractResult {
    if (!this.checked) {
      this.checked = true;
      checkPropagation();
    }
    return decision.action === 'continue'
      ? extractRequestContext(headers, active)
      : this.untrusted(headers, active, decision);
  }

  /** The SERVER span's attributes at start (HTTP semantic conventions, the outcome, proxy and baggage). */
  private attributes(
    req: IncomingMessage,
    rawMethod: string,
    method: string,
    path: string,
    extracted: ExtractResult,
  ): Attributes {
    const headers = req.headers;
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
    probeAttribute(headers.baggage, attributes);
    if (this.baggageAttributes !== undefined) {
      const bag = propagation.getBaggage(extracted.context);
      if (bag !== undefined) {
        for (const [key, name] of this.baggageAttributes) {
          const entry = bag.getEntry(key);
          if (entry !== undefined) attributes[name] = entry.value;
        }
      }
    }
    return attributes;
  }

  /**
   * Sends the server span's context back as configured: `traceresponse` (Level 2) and the `server-timing` trace metric.
   */
  private respond(res: ServerResponse, ctx: Context, span: Span): void {
    if ((!this.traceResponse && !this.serverTiming) || res.headersSent) return;
    const sc = span.spanContext();
    // The SDK's span flags carry only "sampled"; the random flag lives in the context.
    const value = formatTraceparent(
      sc.traceId,
      sc.spanId,
      ctx.getValue(RANDOM_TRACE_ID_KEY) === true ? sc.traceFlags | FLAG_RANDOM : sc.traceFlags,
    );
    if (this.traceResponse) res.setHeader('traceresponse', value);
    if (this.serverTiming) addServerTiming(res, `trace;desc=${value}`);
  }

  /**
   * The tracer named after the adapter (its instrumentation scope), cached per registered provider (the SDK hands out
   * one tracer per name anyway).
   */
  private tracerOfGlobal(): Tracer {
    const provider = globalTracerProvider();
    if (provider === undefined) return trace.getTracer(this.adapter.name);
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
      const seen = extractWith(
        DEFAULT_CONFIG,
        headers,
        defaultTextMapGetter as TextMapGetter<typeof headers>,
        ROOT_CONTEXT,
        false,
      );
      const sc = trace.getSpanContext(seen);
      if (sc !== undefined) links = [{ context: sc, attributes: { 'meshtrace.link.reason': 'restarted' } }];
      inbound = propagation.getBaggage(seen);
    } else if (this.allowList !== undefined && headers.baggage !== undefined) {
      const seen = extractWith(
        BAGGAGE_ONLY,
        headers,
        defaultTextMapGetter as TextMapGetter<typeof headers>,
        ROOT_CONTEXT,
        false,
      );
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
      warner.warn(
        `${pkg}:trust-beside-instrumentation`,
        () =>
          `${pkg}: the inbound policy said ` +
          `'${decision.action}'${decision.reason === undefined ? '' : ` (${decision.reason})`}, but an HTTP ` +
          "instrumentation had already continued the caller's trace in its SERVER span, which meshtrace cannot " +
          'move without a second SERVER span; only the baggage was cut to baggageAllowList. Turn the ' +
          "instrumentation's server side off (instrumentation-http: disableIncomingRequestInstrumentation: " +
          'true) so meshtrace makes the SERVER span and applies the policy.',
      );
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

/** Another propagator continued a header meshtrace rejects: says how to make the HTTP instrumentation reject it too. */
function warnForeignMalformed(outcome: ExtractOutcome, raw: unknown): void {
  warner.warn(
    'foreign-malformed',
    () =>
      `${PACKAGE}: the global propagator continued a malformed traceparent (${outcome.reason}) ${preview(raw)}; ` +
      'meshtrace started a fresh root for the request. Register new MeshPropagator() as the propagator ' +
      "(NodeSDK's textMapPropagator) so the HTTP instrumentation rejects it too.",
  );
}

const INVALID = trace
  .wrapSpanContext({ traceId: '00000000000000000000000000000000', spanId: '0000000000000000', traceFlags: 0 })
  .spanContext();

/**
 * The core of every adapter: validates `options` at setup and returns the per-request tracing.
 * @example
 * const tracing = createServerTracing(options, { name: '@my/adapter', route: (req) => req.routePattern });
 * const t = tracing.start(req, res);
 * context.with(t.context, next);
 */
export function createServerTracing<Req, Res>(
  options: MeshTraceOptions<Req, Res> | undefined,
  adapter: ServerAdapter<Req, Res>,
): ServerTracing<Req, Res> {
  return new ServerTracing(options, adapter);
}
