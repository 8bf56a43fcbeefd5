import { context } from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import { MeshPropagator, extractContext, headerGetter, headerSetter } from '@meshtrace/core';
import type { HeaderCarrier } from '@meshtrace/core';

/** A context as plain strings (`traceparent`, `tracestate`, `baggage`): survives `postMessage`, JSON and job queues. */
export type ContextCarrier = Record<string, string>;

// Its own propagator, not the global one: a hand-off inside the process carries the whole context
// (baggage included) whatever the service propagates over the network, and works before setup.
const propagator = new MeshPropagator();

/**
 * Captures `ctx` (default: the active context) for work that runs off the request's async chain:
 * a `worker_threads` worker, a queue, a pool. Restore it there with {@link runWithCarrier}.
 * @example
 * worker.postMessage({ job, trace: contextCarrier() });
 */
export function contextCarrier(ctx: Context = context.active()): ContextCarrier {
  const carrier: ContextCarrier = {};
  propagator.inject(ctx, carrier, headerSetter);
  return carrier;
}

/**
 * Runs `fn` in the context a {@link contextCarrier} captured, so spans it starts join that trace.
 * Reads the carrier with core's strict extraction, not the worker's global propagator, which a
 * worker thread does not share with the main thread. Anything else (absent, garbage) gives a
 * fresh root, counted and reported; it never throws.
 * @example
 * parentPort.on('message', ({ job, trace }) => runWithCarrier(trace, () => work(job)));
 */
export function runWithCarrier<A extends unknown[], R>(carrier: unknown, fn: (...args: A) => R, ...args: A): R {
  return context.with(extractContext(carrier as HeaderCarrier, headerGetter).context, fn, undefined, ...args);
}
