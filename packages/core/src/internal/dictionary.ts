import { onlyPublicApi } from './otel-internals';

/**
 * Moves a request's `req` and `res` to V8 dictionary mode, keeping their properties and values.
 * Express gives both its app's prototypes (`Object.setPrototypeOf`), which on Node 20's V8 left each on a
 * hidden class of its own: every property added afterwards copied that class and every read missed the
 * inline caches. A deleted property makes an object a dictionary, where neither happens. The bench's
 * public-API-only row shows whether this still pays on the Node versions supported.
 */
export function toDictionaryMode(req: object, res: object): void {
  if (onlyPublicApi()) return;
  // Deleted and put back are the back-references Express sets on both before swapping the prototypes.
  const request = req as { res?: unknown };
  const response = res as { req?: unknown };
  const back = request.res;
  delete request.res;
  request.res = back;
  const forth = response.req;
  delete response.req;
  response.req = forth;
}
