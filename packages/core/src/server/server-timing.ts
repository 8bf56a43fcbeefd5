import type { ServerResponse } from 'node:http';

/** The `server-timing` metric a response adds, and the `writeHead` it had before. */
const SERVER_TIMING = Symbol('meshtrace.server-timing');
type Timed = ServerResponse & { [SERVER_TIMING]?: { metric: string; writeHead: ServerResponse['writeHead'] } };

/**
 * Adds `metric` to the response's `server-timing` when its head is written, after whatever the
 * application set by then (`setHeader`, or the headers given to `writeHead`, as Fastify does), never
 * replacing it: the header is a list, so a second field line is the same as one more element.
 */
export function addServerTiming(res: ServerResponse, metric: string): void {
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
      args[at] =
        typeof given[0] === 'string' ? [...given, 'server-timing', metric] : [...given, ['server-timing', metric]];
    } else {
      const key =
        given !== null && typeof given === 'object'
          ? Object.keys(given).find((k) => k.toLowerCase() === 'server-timing')
          : undefined;
      if (key !== undefined) {
        // writeHead's own headers replace what setHeader stored: extend them instead.
        args[at] = {
          ...(given as Record<string, unknown>),
          [key]: ([] as unknown[]).concat((given as Record<string, unknown>)[key], metric),
        };
      } else {
        this.appendHeader('server-timing', metric);
      }
    }
  }
  return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args);
}
