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
    const req = request(
      `${base}${path}`,
      { method: 'POST', headers: { traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01` } },
      (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(JSON.parse(body) as Record<string, string | undefined>));
      },
    );
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
  for (const hop of ['data', 'body', 'setTimeout', 'setImmediate', 'promiseChain', 'emitter', 'span'])
    expect([hop, seen[hop]]).toEqual([hop, traceId]);
});

test('500 concurrent requests with distinct trace ids each see only their own', async () => {
  const ids = Array.from({ length: 500 }, () => randomBytes(16).toString('hex'));
  const seen = await Promise.all(ids.map((id) => post('/async', id)));
  expect(seen.map((s) => s.emitter)).toEqual(ids);
  expect(seen.map((s) => s.data)).toEqual(ids);
});

describe('a listener that throws: the rule every adapter follows', () => {
  test.each([
    ['a plain error is the server failing', new Error('boom'), 500, 2 /* ERROR */, 'Error'],
    [
      'an error asking for a 4xx is the client failing: recorded, status left unset',
      Object.assign(new Error('not yours'), { status: 403 }),
      403,
      0 /* UNSET */,
      undefined,
    ],
  ])('%s', async (_name, error, answer, code, errorType) => {
    const traced = meshHttp(() => {
      throw error;
    });
    const server = createServer((req, res) => {
      try {
        traced(req, res);
      } catch (err) {
        // Node would crash on this throw; the test answers instead, as an error-handling wrapper would.
        res.statusCode = (err as { status?: number }).status ?? 500;
        res.end();
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      tracing.reset();
      const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/x`);
      await res.arrayBuffer();
      await new Promise((r) => setImmediate(r));
      const [span] = tracing.spans();
      expect({
        status: res.status,
        code: span?.status.code,
        events: span?.events.map((e) => e.name),
        errorType: span?.attributes['error.type'],
      }).toEqual({ status: answer, code, events: ['exception'], errorType });
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
