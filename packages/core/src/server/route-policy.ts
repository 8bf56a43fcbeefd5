import { warner } from '../internal/diagnostics';
import { optionError } from '../internal/options';
import type { MeshTraceRouteOptions } from './options';
import { inboundPolicy } from './trust';
import type { TrustDecider } from './trust';

/**
 * A route's options, checked at setup (a `TypeError` naming `pkg` and `option` when they are wrong), for the adapter
 * to hand to `ServerTracing.start` with that route's requests.
 * @example const policy = new RoutePolicy('@my/adapter', { inbound: 'restart' }, 'meshTraceRoute');
 */
export class RoutePolicy<Req> {
  /** @internal */
  readonly decide: TrustDecider<Req>;

  constructor(pkg: string, options: MeshTraceRouteOptions<Req>, option = 'options') {
    if (options === null || typeof options !== 'object' || Array.isArray(options))
      throw optionError(pkg, option, 'an object with inbound', options);
    for (const key of Object.keys(options))
      if (key !== 'inbound')
        throw optionError(
          pkg,
          `${option}.${key}`,
          'absent: a route takes inbound only',
          (options as unknown as Record<string, unknown>)[key],
        );
    if (options.inbound === undefined)
      throw optionError(pkg, `${option}.inbound`, "'continue', 'restart', 'ignore', a function or a policy", undefined);
    this.decide = inboundPolicy(pkg, `${option}.inbound`, options.inbound, true);
  }
}

/**
 * An adapter's route policies carried on its framework's middleware (`meshTraceRoute()` on an Express or
 * Koa router), for `meshTrace()` to find on the request's way before the router runs.
 */
export class RouteMarker<Req> {
  /** How many policies were marked: while none, the adapter never looks for one. */
  count = 0;
  /** Registered, so a second copy of the adapter in the process reads the same marks. */
  private readonly key: symbol;

  /** @internal */
  constructor(
    private readonly pkg: string,
    private readonly unmatched: string,
  ) {
    this.key = Symbol.for(`${pkg.replace(/^@/, '').replace('/', '.')}.route-policy`);
  }

  /**
   * Checks `options` (a `TypeError` naming the package and `meshTraceRoute` when wrong) and marks `middleware` with
   * their policy.
   */
  mark<F extends object>(middleware: F, options: MeshTraceRouteOptions<Req>): F {
    const policy = new RoutePolicy<Req>(this.pkg, options, 'meshTraceRoute');
    this.count++;
    (middleware as Record<symbol, unknown>)[this.key] = policy;
    return middleware;
  }

  /** The policy marked on `handle`, if it is a marked middleware. */
  readonly policyOf = (handle: unknown): RoutePolicy<Req> | undefined =>
    typeof handle === 'function'
      ? (handle as unknown as Record<symbol, RoutePolicy<Req> | undefined>)[this.key]
      : undefined;

  /**
   * Called by a marked middleware when a request reaches it: warns (rate-limited) when `meshTrace()` did not
   * trace the request, or traced it without having found this policy in advance.
   */
  reached(trace: { readonly route: RoutePolicy<Req> | undefined } | undefined): void {
    const pkg = this.pkg;
    if (trace === undefined) {
      warner.warn(
        `${pkg}:route-without-trace`,
        () =>
          `${pkg}: meshTraceRoute() ran on a request meshTrace() did not trace: ` +
          'add app.use(meshTrace()) before the routers.',
      );
    } else if (trace.route === undefined) {
      warner.warn(`${pkg}:route-unmatched`, () => `${pkg}: ${this.unmatched}`);
    }
  }
}

/**
 * The route policies of an adapter whose route policies are middleware: `unmatched` is the warning (after the
 * package name) for a request that reached one `meshTrace()` had not found in advance.
 * @example const routes = createRouteMarker<Request>('@my/adapter', 'meshTraceRoute() ran on a request ...');
 */
export function createRouteMarker<Req>(pkg: string, unmatched: string): RouteMarker<Req> {
  return new RouteMarker(pkg, unmatched);
}
