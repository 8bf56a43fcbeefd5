import { EventEmitter } from 'node:events';
import { createServer, request } from 'node:http';
import type { IncomingMessage, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { context, trace } from '@opentelemetry/api';
import { HEADER_CASES, observe, runHttpCase, setupTestTracing } from '@meshtrace/testkit';
import { meshHttp, requestTrace } from '@meshtrace/http';

const tracing = setupTestTracing();
const traceIdNow = () => trace.getSpanContext(context.active())?.traceId;

/** The trace id seen after each kind of asynchronous hop a handler makes, body reading included. */
async function afterAsyncWork(req: IncomingMessage): Promise<Record<string, string | undefined>> {
  const seen: Record<string, string | undefined> = {};
  await new Promise<void>((resolve) => {
    req.on('data', () => (seen.data = traceIdNow()));
    req.on('end', () => resolve());
  });
  seen.body = traceIdNow();
  await new Promise((r) => setTimeout(r, 1));
  seen.setTimeout = traceIdNow();
  await new Promise((r) => setImmediate(r));
  seen.setImmediate = traceIdNow();
  seen.promiseChain = await Promise.resolve()
    .then(() => new Promise((r) => setTimeout(r, 1)))
    .then(() => traceIdNow());
  const emitter = new EventEmitter();
  seen.emitter = await new Promise<string | undefined>((resolve) => {
    emitter.on('ready', () => resolve(traceIdNow()));
    setTimeout(() => emitter.emit('ready'), 1);
  });
  seen.span = requestTrace(req)?.span.spanContext().traceId;
  return seen;
}

/** POSTs a body in two chunks, so its 'data' events come from the socket, not from the request's own tick. */
function post(path: string, traceId: string): Promise<Record<string, string | undefined>> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method: 'POST', headers: { traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01` } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(JSON.parse(body) as Record<string, string | undefined>));
    });
    req.on('error', reject);
    req.write('first half,');
    setTimeout(() => req.end('second half'), 5);
  });
}
let server: Server;
let base: string;

beforeAll(async () => {
  server = createServer(
    meshHttp((req, res) => {
      res.setHeader('content-type', 'application/json');
      if (req.url?.startsWith('/async')) void afterAsyncWork(req).then((seen) => res.end(JSON.stringify(seen)));
      else res.end(JSON.stringify(observe()));
    }),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  await tracing.shutdown();
});

test.each(HEADER_CASES.map((c) => [c.name, c] as const))('header case: %s', async (_name, c) => {
  expect(await runHttpCase(tracing, c, `${base}/cases?q=1`)).toEqual([]);
});

test('context survives body events, await, timers, promise chains and event emitters', async () => {
  const traceId = randomBytes(16).toString('hex');
  const seen = await post('/async', traceId);
  for (const hop of ['data', 'body', 'setTimeout', 'setImmediate', 'promiseChain', 'emitter', 'span']) expect([hop, seen[hop]]).toEqual([hop, traceId]);
});

test('500 concurrent requests with distinct trace ids each see only their own', async () => {
  const ids = Array.from({ length: 500 }, () => randomBytes(16).toString('hex'));
  const seen = await Promise.all(ids.map((id) => post('/async', id)));
  expect(seen.map((s) => s.emitter)).toEqual(ids);
  expect(seen.map((s) => s.data)).toEqual(ids);
});
