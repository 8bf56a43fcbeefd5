import type { Span, Tracer, TracerProvider } from '@opentelemetry/api';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { warner } from '../internal/diagnostics';
import { checkOptions, optionError } from '../internal/options';
import type { InboundPolicy } from './trust';

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
  /**
   * Baggage keys copied onto the server span as `baggage.<key>`. Never all keys: values can be high-cardinality.
   * Default none.
   */
  baggageAttributes?: readonly string[];
  /** Send the W3C Level 2 `traceresponse` header so callers and proxies can correlate. Default `false`. */
  traceResponse?: boolean;
  /**
   * Append the `trace;desc=<traceparent>` metric to `server-timing` (after any the application sets), so a page can
   * read the server span through the Performance API; cross-origin pages need `Timing-Allow-Origin`. Default `false`.
   */
  serverTiming?: boolean;
  /**
   * Record `x-request-id` and the proxy that forwarded the request (`meshtrace.proxy`: envoy, istio, linkerd). Default
   * `true`.
   */
  proxyAttributes?: boolean;
}

/**
 * A route's own options (Fastify route `config.meshTrace`, `meshTraceRoute()` on an Express or Koa router); they
 * replace the adapter's for that route.
 */
export interface MeshTraceRouteOptions<Req = IncomingMessage> {
  /** The route's inbound policy, in any form the adapter's `inbound` takes. */
  inbound: InboundPolicy<Req>;
}

/**
 * What an adapter tells core about its framework: its name, Node's request and response under its own, and the route.
 */
export interface ServerAdapter<Req, Res> {
  /** The adapter's package name, used in configuration errors and diagnostics. */
  readonly name: string;
  /** Node's request under the framework's (`request.raw`, `ctx.req`); omitted when `Req` is Node's. */
  readonly incoming?: (request: Req) => IncomingMessage;
  /** Node's response under the framework's (`reply.raw`, `ctx.res`); omitted when `Res` is Node's. */
  readonly outgoing?: (response: Res) => ServerResponse;
  /** The route template of a finished request (`/users/:id`), if the framework matched one. */
  readonly route?: (request: Req) => string | undefined;
}

/**
 * The options every meshtrace instrumentation takes, HTTP or not: where spans come from, what is ignored, the hooks.
 */
export type CommonOptions<Req, Res> = Pick<
  MeshTraceOptions<Req, Res>,
  'tracerProvider' | 'ignore' | 'requestHook' | 'responseHook'
>;

const COMMON_RULES = { tracerProvider: 'tracerProvider', requestHook: 'function', responseHook: 'function' } as const;

/** {@link CommonOptions} checked once, for the per-request path. */
export interface ResolvedOptions<Req, Res> {
  /** The tracer of `tracerProvider`, named after the package; undefined to use the global provider at request time. */
  readonly tracer: Tracer | undefined;
  /**
   * `ignore` as one predicate (a throw in the user's is warned about and counts as not ignored); undefined when nothing
   * is ignored.
   */
  readonly ignored: ((path: string, request: Req) => boolean) | undefined;
  readonly requestHook: CommonOptions<Req, Res>['requestHook'];
  readonly responseHook: CommonOptions<Req, Res>['responseHook'];
}

/**
 * Checks the options every instrumentation shares at setup: a wrong type throws a `TypeError` naming
 * `pkg` and the option. `paths` says what `ignore` lists, for that message.
 * @example const { tracer, ignored } = resolveOptions('@my/adapter', options);
 */
export function resolveOptions<Req, Res>(
  pkg: string,
  options: CommonOptions<Req, Res> | undefined,
  paths = 'strings',
): ResolvedOptions<Req, Res> {
  const { tracerProvider, ignore, requestHook, responseHook } = checkOptions(pkg, options ?? undefined, COMMON_RULES);
  return {
    tracer: tracerProvider?.getTracer(pkg),
    ignored: ignoreMatcher(pkg, ignore, paths),
    requestHook,
    responseHook,
  };
}

function ignoreMatcher<Req>(
  pkg: string,
  ignore: CommonOptions<Req, unknown>['ignore'],
  paths: string,
): ((path: string, request: Req) => boolean) | undefined {
  if (ignore === undefined) return undefined;
  if (typeof ignore === 'function') {
    return (path, request) => {
      try {
        return ignore(path, request) === true;
      } catch (err) {
        warner.warn(
          `${pkg}:ignore`,
          () =>
            `${pkg}: the ignore predicate threw, so the request is traced: ` +
            `${err instanceof Error ? err.message : String(err)}`,
        );
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
