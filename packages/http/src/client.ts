import { SpanKind, SpanStatusCode, context, trace } from '@opentelemetry/api';
import type { Attributes, Context, Span, Tracer, TracerProvider } from '@opentelemetry/api';
import { checkOptions, httpMethod, isTracingSuppressed, outboundTrace, warner } from '@meshtrace/core/adapter';
import { errorMonitor } from 'node:events';
// The module objects themselves, not namespace copies: `.request` must be whatever an instrumentation put there last.
import http from 'node:http';
import type { ClientRequest, IncomingMessage } from 'node:http';
import https from 'node:https';
import type { RequestOptions } from 'node:https';
import { fetchInstrumented, httpInstrumented, isWrapped } from './instrumented';

const PACKAGE = '@meshtrace/http';

/** Options of {@link meshClient}; all optional. */
export interface MeshClientOptions {
  /**
   * Where meshtrace's own CLIENT spans come from (not an instrumentation's). Default: the global tracer provider at
   * call time.
   */
  tracerProvider?: TracerProvider;
}

/** `http.request` / `https.request` with the same overloads; the scheme picks the module. */
export interface MeshRequest {
  (options: RequestOptions | string | URL, callback?: (response: IncomingMessage) => void): ClientRequest;
  (url: string | URL, options: RequestOptions, callback?: (response: IncomingMessage) => void): ClientRequest;
}

/** A traced `fetch` and `request` sharing one set of options. */
export interface MeshClient {
  readonly fetch: typeof fetch;
  readonly request: MeshRequest;
}

// HTTP semconv (url.full): these query values are secrets and SHOULD read as REDACTED.
const SENSITIVE_QUERY = /([?&](?:AWSAccessKeyId|Signature|sig|X-Goog-Signature)=)[^&#]*/g;
const CALL = Symbol('meshtrace.http.client');

// Captured once, so `globalThis.fetch = meshFetch` does not call itself.
const nativeFetch = globalThis.fetch;

const UNTRACED_HTTP = 'http:injectHeaders:http.request-uninstrumented';
function untracedHttpWarning(): string {
  return (
    `${PACKAGE}: fetch is instrumented (a tracer listens on undici:request:create), so injectHeaders() leaves the ` +
    'trace headers to it; http.request / https.request are not instrumented, so clients built on them (axios, ' +
    'got) send no trace context. Use meshRequest for them, or enable @opentelemetry/instrumentation-http.'
  );
}

/**
 * Returns the trace headers of the active context merged into a copy of `headers` (same form), for
 * clients meshtrace does not wrap; while fetch is instrumented, the copy leaves them to the instrumentation.
 * @example
 * await axios.get(url, { headers: injectHeaders({ accept: 'application/json' }) });
 */
export function injectHeaders(headers?: undefined): Record<string, string>;
export function injectHeaders(headers: Headers): Headers;
export function injectHeaders(headers: ReadonlyArray<readonly [string, string]>): Array<[string, string]>;
export function injectHeaders<T extends Readonly<Record<string, unknown>>>(headers: T): T & Record<string, string>;
export function injectHeaders(headers?: unknown): unknown {
  const active = context.active();
  let out: unknown;
  if (isTracingSuppressed(active)) {
    out = headers;
  } else if (fetchInstrumented()) {
    // Which client the headers are for is unknown: a value here plus the instrumentation's would make two
    // traceparent lines, the next hop would discard both and the trace would break with every response a 200.
    if (!httpInstrumented()) warner.warn(UNTRACED_HTTP, untracedHttpWarning);
    // The instrumentation writes the active context's baggage, so the caller's can stay only where that has none.
    const ot = outboundTrace(active, headers);
    out = ot.withoutTrace(active);
  } else {
    const ot = outboundTrace(active, headers);
    // No CLIENT span here: the next service's parent is the active span.
    out = ot.rewrite(ot.traceHeaders(ot.context));
  }
  return out === headers ? copyOf(headers) : out;
}

/** A copy of a header collection in its own form: injectHeaders never hands back the caller's object. */
function copyOf(headers: unknown): unknown {
  if (headers === undefined || headers === null) return {};
  if (headers instanceof Headers) return new Headers(headers);
  if (Array.isArray(headers)) return headers.slice();
  return typeof headers === 'object' ? { ...headers } : headers;
}

function withoutBrackets(host: string): string {
  return host.charCodeAt(0) === 91 /* [ */ ? host.slice(1, -1) : host;
}

function redactQuery(search: string): string {
  return search.length > 1 ? search.replace(SENSITIVE_QUERY, '$1REDACTED') : search;
}

/** `url.full` without secrets: credentials become REDACTED:REDACTED, as the HTTP semconv asks. */
function fullUrl(url: URL): string {
  const search = redactQuery(url.search);
  const credentials = url.username !== '' || url.password !== '';
  if (!credentials && search === url.search) return url.href;
  return `${url.protocol}//${credentials ? 'REDACTED:REDACTED@' : ''}${url.host}${url.pathname}${search}${url.hash}`;
}

function startClientSpan(
  tracer: Tracer,
  parent: Context,
  rawMethod: string,
  full: string,
  address: string,
  port: number,
): Span {
  // fetch and http.request send known methods upper-cased whatever case the caller used.
  const method = httpMethod(rawMethod.toUpperCase());
  const attributes: Attributes = {
    'http.request.method': method,
    'url.full': full,
    'server.address': address,
    'server.port': port,
  };
  if (method === '_OTHER') attributes['http.request.method_original'] = rawMethod;
  return tracer.startSpan(method === '_OTHER' ? 'HTTP' : method, { kind: SpanKind.CLIENT, attributes }, parent);
}

/** HTTP semconv for clients: 4xx and 5xx are both errors, with the status code as `error.type`. */
function recordStatus(span: Span, status: number): void {
  span.setAttribute('http.response.status_code', status);
  if (status >= 400) {
    span.setAttribute('error.type', String(status));
    span.setStatus({ code: SpanStatusCode.ERROR });
  }
}

function errorType(err: unknown): string {
  const e = err as { code?: unknown; name?: unknown; cause?: { code?: unknown } } | null | undefined;
  if (typeof e?.code === 'string') return e.code;
  // fetch wraps socket errors: TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } }).
  if (typeof e?.cause?.code === 'string') return e.cause.code;
  return typeof e?.name === 'string' && e.name !== '' ? e.name : '_OTHER';
}

/** Marks the span failed and ends it; the error itself is only read, never changed. */
function endWithError(span: Span, err: unknown): void {
  try {
    const type = errorType(err);
    const text = (err as { message?: unknown } | null | undefined)?.message;
    const message = typeof err === 'string' ? err : typeof text === 'string' ? text : undefined;
    span.setAttribute('error.type', type);
    span.recordException(err instanceof Error ? err : { name: type, message: message ?? type });
    span.setStatus({ code: SpanStatusCode.ERROR, message });
  } finally {
    // A hostile error value (a throwing getter) must neither keep the span open nor replace the error.
    span.end();
  }
}

function fetchWith(tracer: Tracer | undefined): typeof fetch {
  return async function meshFetch(input: string | URL | Request, init?: RequestInit): Promise<Response> {
    const parent = context.active();
    if (isTracingSuppressed(parent)) return nativeFetch(input, init);
    const request = input instanceof Request ? input : undefined;
    // init.headers, when given, replaces a Request's headers (Fetch `new Request(input, init)`).
    const given = init?.headers ?? request?.headers;
    const ot = outboundTrace(parent, given);
    if (fetchInstrumented()) {
      // The instrumentation starts the CLIENT span under the call's context and appends the headers.
      const headers = ot.withoutTrace();
      return context.with(
        ot.context,
        nativeFetch,
        undefined,
        input,
        headers === given ? init : { ...init, headers: headers as RequestInit['headers'] },
      );
    }
    let url: URL;
    try {
      url = input instanceof URL ? input : new URL(request !== undefined ? request.url : String(input));
    } catch {
      // Not a URL fetch can use: let fetch reject exactly as it would.
      return nativeFetch(input, init);
    }
    const secure = url.protocol === 'https:';
    const port = url.port !== '' ? Number(url.port) : secure ? 443 : 80;
    const method = String(init?.method ?? request?.method ?? 'GET');
    const span = startClientSpan(
      tracer ?? trace.getTracer(PACKAGE),
      ot.context,
      method,
      fullUrl(url),
      withoutBrackets(url.hostname),
      port,
    );
    const headers = ot.rewrite(ot.traceHeaders(trace.setSpan(ot.context, span)));
    let response: Response;
    try {
      response = await nativeFetch(
        input,
        headers === given ? init : { ...init, headers: headers as RequestInit['headers'] },
      );
    } catch (err) {
      endWithError(span, err);
      throw err;
    }
    recordStatus(span, response.status);
    span.end();
    return response;
  };
}

interface Call {
  readonly span: Span;
  ended: boolean;
  response: IncomingMessage | undefined;
}
type Traced<T> = T & { [CALL]?: Call };

function finish(call: Call, err?: unknown): void {
  if (call.ended) return;
  call.ended = true;
  if (err === undefined) call.span.end();
  else endWithError(call.span, err);
}

const ABORTED = Object.freeze({ name: 'aborted', message: 'request closed before the response completed' });

function onResponse(this: Traced<ClientRequest>, response: Traced<IncomingMessage>): void {
  const call = this[CALL]!;
  call.response = response;
  recordStatus(call.span, response.statusCode ?? 0);
  response[CALL] = call;
  response.once('end', onResponseEnd);
  response.on(errorMonitor, onResponseError);
  response.once('close', onResponseClose);
  // Node drops an unwanted body itself only when nobody listens for 'response'; ours must not keep it.
  if (this.listenerCount('response') <= 1) response.resume();
}

function onResponseEnd(this: Traced<IncomingMessage>): void {
  finish(this[CALL]!);
}

function onResponseError(this: Traced<IncomingMessage>, err: unknown): void {
  finish(this[CALL]!, err);
}

function onResponseClose(this: Traced<IncomingMessage>): void {
  // Node emits no error for a cut-off body when the caller has no 'error' listener.
  finish(this[CALL]!, this.complete ? undefined : ABORTED);
}

function onRequestError(this: Traced<ClientRequest>, err: unknown): void {
  finish(this[CALL]!, err);
}

function onRequestClose(this: Traced<ClientRequest>): void {
  const call = this[CALL]!;
  // With a response, its own events decide; a complete but unread body may never emit 'end'.
  if (call.response === undefined) finish(call, ABORTED);
  else if (call.response.complete) finish(call);
}

function requestWith(tracer: Tracer | undefined): MeshRequest {
  return function meshRequest(...args: unknown[]): ClientRequest {
    const [first, second, third] = args;
    const hasUrl = typeof first === 'string' || first instanceof URL;
    let url: URL | undefined;
    try {
      url = typeof first === 'string' ? new URL(first) : first instanceof URL ? first : undefined;
    } catch {
      // Not a URL: let http.request throw exactly as it would.
      return (http.request as (...a: unknown[]) => ClientRequest)(...args);
    }
    const options = (hasUrl ? (typeof second === 'object' ? second : undefined) : first) as
      | RequestOptions
      | null
      | undefined;
    const agent =
      typeof options?.agent === 'object' ? (options.agent as { protocol?: string; defaultPort?: number }) : undefined;
    const protocol = options?.protocol || url?.protocol || agent?.protocol || 'http:';
    const secure = protocol === 'https:';
    const send = (secure ? https.request : http.request) as (...a: unknown[]) => ClientRequest;
    const parent = context.active();
    if (isTracingSuppressed(parent)) return send(...args);
    const callback = hasUrl ? (typeof second === 'function' ? second : third) : second;
    const ot = outboundTrace(parent, options?.headers);
    if (isWrapped(send)) {
      // instrumentation-http (or dd-trace) starts the CLIENT span under the call's context and injects.
      const headers = ot.withoutTrace();
      const next = headers === options?.headers ? undefined : { ...options, headers };
      const call =
        next === undefined ? () => send(...args) : () => (hasUrl ? send(first, next, callback) : send(next, callback));
      return context.with(ot.context, call);
    }

    // The same precedence Node applies when it merges the URL and the options; Node validates them.
    const address = String(
      options?.hostname || (url !== undefined ? withoutBrackets(url.hostname) : options?.host) || 'localhost',
    );
    const port = Number(
      options?.port || url?.port || options?.defaultPort || agent?.defaultPort || (secure ? 443 : 80),
    );
    const path = String(options?.path || (url !== undefined ? url.pathname + url.search : '/'));
    const credentials = options?.auth || url?.username || url?.password;
    const q = path.indexOf('?');
    const host = address.includes(':') ? `[${address}]` : address;
    const shownPort = port === (secure ? 443 : 80) ? '' : `:${port}`;
    const shownPath = q < 0 ? path : path.slice(0, q) + redactQuery(path.slice(q));
    const full = `${protocol}//${credentials ? 'REDACTED:REDACTED@' : ''}${host}${shownPort}${shownPath}`;
    const span = startClientSpan(
      tracer ?? trace.getTracer(PACKAGE),
      ot.context,
      String(options?.method || 'GET'),
      full,
      address,
      port,
    );

    const headers = ot.rewrite(ot.traceHeaders(trace.setSpan(ot.context, span)));
    const next = headers === options?.headers ? options : { ...options, headers };
    let req: Traced<ClientRequest>;
    try {
      req = hasUrl ? send(first, next ?? {}, callback) : send(next, callback);
    } catch (err) {
      endWithError(span, err);
      throw err;
    }
    req[CALL] = { span, ended: false, response: undefined };
    // Ours first, so the status is on the span before the caller's listeners run.
    req.prependListener('response', onResponse);
    req.on(errorMonitor, onRequestError);
    req.once('close', onRequestClose);
    return req;
  } as MeshRequest;
}

/**
 * A traced `fetch` and `http.request` with their own options (the exported `meshFetch` and
 * `meshRequest` use the defaults). Throws a `TypeError` for a bad option.
 * @example
 * const { fetch } = meshClient({ tracerProvider });
 */
export function meshClient(options: MeshClientOptions = {}): MeshClient {
  const { tracerProvider } = checkOptions(PACKAGE, options, { tracerProvider: 'tracerProvider' });
  const tracer = tracerProvider?.getTracer(PACKAGE);
  return { fetch: fetchWith(tracer), request: requestWith(tracer) };
}

const defaults = meshClient();

/**
 * `fetch` that continues the active trace: one CLIENT span per call, its context in
 * `traceparent`/`tracestate`/`baggage`; beside a fetch instrumentation, that one makes both. Same arguments,
 * result and errors as `fetch`.
 * @example
 * const res = await meshFetch('http://inventory:8080/items', { headers: { accept: 'application/json' } });
 */
export const meshFetch: typeof fetch = defaults.fetch;

/**
 * `http.request` / `https.request` (by scheme) that continues the active trace in a CLIENT span, ended on
 * response end, error or abort; beside an instrumentation that wrapped that function, its span and headers.
 * @example
 * meshRequest('http://inventory:8080/items', (res) => res.pipe(process.stdout)).end();
 */
export const meshRequest: MeshRequest = defaults.request;
