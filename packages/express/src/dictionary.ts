// Measured in instructions per Express request (bench/dist/instructions.js): on Node 22 (V8 12.4) the
// step takes meshtrace from 1,270k to 909k, below bare Express's 906k plus tracing; on Node 24 (V8 13.6),
// which no longer leaves prototype-swapped objects slow, it adds 70k (437k against 367k). So it runs
// only on V8 before 13, and never with MESHTRACE_PUBLIC_API_ONLY=1, which turns off every shortcut that
// relies on OpenTelemetry's internals or V8's behaviour (see core's internal/otel-internals.ts).
const PAYS = Number(process.versions.v8.split('.')[0]) < 13 && process.env.MESHTRACE_PUBLIC_API_ONLY !== '1';

/**
 * Moves a request's `req` and `res` to V8 dictionary mode, keeping their properties and values, where
 * that pays. Express gives both its app's prototypes (`Object.setPrototypeOf`), which before V8 13 left
 * each on a hidden class of its own: every property added afterwards copied that class and every read
 * missed the inline caches. A deleted property makes an object a dictionary, where neither happens.
 */
export function toDictionaryMode(req: object, res: object): void {
  if (!PAYS) return;
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
