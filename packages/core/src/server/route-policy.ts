import { optionError } from '../internal/options';
import type { MeshTraceRouteOptions } from './options';
import { inboundPolicy } from './trust';
import type { TrustDecider } from './trust';

/** A route's options, checked at setup, for the adapter to hand to {@link ServerTracing.start} with that route's requests. */
export class RoutePolicy<Req> {
  /** @internal */
  readonly decide: TrustDecider<Req>;

  /** @internal */
  constructor(pkg: string, options: MeshTraceRouteOptions<Req>, option: string) {
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
 * Checks a route's options at setup (a `TypeError` naming `pkg` and `option` when they are wrong) and
 * returns what {@link ServerTracing.start} takes for that route's requests.
 * @example const policy = createRoutePolicy('@my/adapter', { inbound: 'restart' }, 'meshTraceRoute');
 */
export function createRoutePolicy<Req>(
  pkg: string,
  options: MeshTraceRouteOptions<Req>,
  option = 'options',
): RoutePolicy<Req> {
  return new RoutePolicy(pkg, options, option);
}
