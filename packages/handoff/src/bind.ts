import { context } from '@opentelemetry/api';
import { EventEmitter } from 'node:events';

const PKG = '@meshtrace/handoff';

/**
 * Binds `fn` to the context active now, so it runs there whoever calls it later. Use it for a
 * callback handed to something created outside the request: a listener on an emitter made at
 * startup, a pooled connection, a queue. Remove such a listener by the returned function.
 * @example
 * jobs.once('done', bindToActive((result) => res.json(result)));
 */
export function bindToActive<F extends (...args: never[]) => unknown>(fn: F): F {
  if (typeof fn !== 'function') throw new TypeError(`${PKG}: bindToActive expects a function, got ${typeof fn}`);
  return context.bind(context.active(), fn);
}

/**
 * Makes every listener added to `emitter` from now on run in the context active now, whoever
 * emits. Only for an emitter that serves this request alone (a stream or query object driven by a
 * pooled connection): the binding is permanent, and binding an emitter again does not move it.
 * For an emitter shared across requests, bind each listener with {@link bindToActive} instead.
 * @example
 * const query = bindEmitterToActive(connection.query(sql));
 * query.on('row', (row) => rows.push(row));
 */
export function bindEmitterToActive<E extends EventEmitter>(emitter: E): E {
  if (!(emitter instanceof EventEmitter))
    throw new TypeError(`${PKG}: bindEmitterToActive expects an EventEmitter, got ${typeof emitter}`);
  return context.bind(context.active(), emitter);
}
