import type { TracerProvider } from '@opentelemetry/api';
import { Stopper } from './lifecycle';
import { startGateway, startInventory, startOrders, startPlainOrders } from './services';
import type { RunningService, ServiceOptions } from './services';
import { startSidecar } from './sidecar';
import type { Sidecar, SidecarKind, SidecarTracing } from './sidecar';
import { SERVICES } from './telemetry';
import type { ServiceName } from './telemetry';

/** What {@link startMesh} builds. */
export interface MeshOptions {
  /** The proxy in front of each service. */
  sidecars: SidecarKind;
  /** Outbound calls with meshtrace's client (`true`) or plain `fetch` (`false`). */
  propagate: boolean;
  /** Each service's tracer provider. */
  providers: Readonly<Record<ServiceName, TracerProvider>>;
  /** The sidecar in front of this service drops the trace headers. */
  stripAt?: ServiceName;
  /** This service forwards the inbound trace headers itself, with the `traceparent` upper-cased. */
  uppercaseAt?: 'gateway' | 'orders';
  /** Orders is a plain node:http service without meshtrace, starting a new trace per request. */
  plainOrders?: boolean;
  /** Put a TLS-terminating ingress with this certificate in front of the gateway's sidecar. */
  ingress?: { cert: string; key: string };
  /** Where everything started is registered; `Mesh.stop()` stops it. Default: a new one. */
  stopper?: Stopper;
  /** Tracing sidecars (Caddy): the OTLP/HTTP base URL they export to, as `<service>-sidecar`. */
  sidecarOtlp?: string;
  /** Tracing sidecars (Caddy): the propagators or sampler of one service's sidecar. */
  sidecarTracing?: Partial<Record<ServiceName, Pick<SidecarTracing, 'propagators' | 'sampler'>>>;
}

/** Three services, each behind its own sidecar, calling the next one through that sidecar. */
export interface Mesh {
  /** Where requests enter: the ingress when there is one, else the gateway's sidecar. */
  readonly entry: string;
  readonly ingress: Sidecar | undefined;
  readonly sidecars: Readonly<Record<ServiceName, Sidecar>>;
  readonly services: Readonly<Record<ServiceName, RunningService>>;
  /** The service behind `port` (its own or its sidecar's), for labelling CLIENT spans. */
  describePort(port: number): string | undefined;
  stop(): Promise<void>;
}

/** The `service.name` of a tracing sidecar's spans: `orders-sidecar` in front of orders. */
export function sidecarName(service: ServiceName): string {
  return `${service}-sidecar`;
}

const STARTERS: Record<ServiceName, (o: ServiceOptions) => Promise<RunningService>> = {
  gateway: startGateway,
  orders: startOrders,
  inventory: startInventory,
};

/**
 * Starts gateway (Express) → orders (Fastify) → inventory (Koa) on 127.0.0.1, each behind a sidecar
 * of its own, services first and sidecars second, so every port is a free one the kernel chose.
 * On failure, what it started is stopped before the error is thrown (with `options.stopper`, that is the caller's job).
 */
export async function startMesh(options: MeshOptions): Promise<Mesh> {
  const stopper = options.stopper ?? new Stopper();
  const sidecars: Partial<Record<ServiceName, Sidecar>> = {};
  const next = (name: ServiceName): ServiceName | undefined => SERVICES[SERVICES.indexOf(name) + 1];
  try {
    const started = await Promise.all(
      SERVICES.map((name) => {
        const after = next(name);
        const downstream = after === undefined ? undefined : () => sidecars[after]!.url;
        const start = name === 'orders' && options.plainOrders ? startPlainOrders : STARTERS[name];
        return stopper.track(
          start({
            tracerProvider: options.providers[name],
            propagate: options.propagate,
            downstream,
            uppercaseTraceparent: options.uppercaseAt === name,
          }),
        );
      }),
    );
    const services = Object.fromEntries(started.map((s) => [s.name, s])) as Record<ServiceName, RunningService>;
    await Promise.all(
      SERVICES.map(async (name) => {
        sidecars[name] = await stopper.track(
          startSidecar(options.sidecars, {
            upstreamPort: services[name].port,
            stripTraceContext: options.stripAt === name,
            tracing: {
              ...options.sidecarTracing?.[name],
              serviceName: sidecarName(name),
              otlpEndpoint: options.sidecarOtlp,
            },
          }),
        );
      }),
    );
    const all = sidecars as Record<ServiceName, Sidecar>;
    const ingress = options.ingress
      ? await stopper.track(startSidecar(options.sidecars, { upstreamPort: all.gateway.port, tls: options.ingress }))
      : undefined;
    const ports = new Map<number, string>();
    for (const name of SERVICES) {
      // Services call each other through the callee's sidecar, so its port names the callee.
      ports.set(all[name].port, name);
      ports.set(services[name].port, name);
    }
    if (ingress) ports.set(ingress.port, 'ingress');
    return {
      entry: ingress?.url ?? all.gateway.url,
      ingress,
      sidecars: all,
      services,
      describePort: (port) => ports.get(port),
      stop: () => stopper.stop(),
    };
  } catch (err) {
    // Promise.all rejects at the first failure: the stopper still waits for the other starts.
    if (options.stopper === undefined) await stopper.stop();
    throw err;
  }
}
