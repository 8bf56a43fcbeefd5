import { createServer, get } from 'node:http';
import type { RequestListener, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, context, propagation, trace } from '@opentelemetry/api';
import type { Span } from '@opentelemetry/api';
import { HEADER_CASES, PARENT_ID, observe, runHttpCase, setupTestTracing } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';
import { meshTrace } from '@meshtrace/express';
import type { ExpressMeshTraceOptions } from '@meshtrace/express';

type Express = typeof import('express');

const tracing = setupTestTracing();
type ReadableSpan = ReturnType<typeof tracing.spans>[number];
const servers: Server[] = [];

async function listen(listener: RequestListener): Promise<{ base: string; port: number }> {
  const server = createServer(listener);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return { base: `http://127.0.0.1:${port}`, port };
}

afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  await tracing.shutdown();
});

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const newTraceId = () => randomBytes(16).toString('hex');
const traceparent = (traceId: string) => `00-${traceId}-${PARENT_ID}-01`;
const activeTraceId = () => trace.getSpanContext(context.active())?.traceId ?? 'none';

function serverSpans(traceId: string): ReadableSpan[] {
  return tracing.spans().filter((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.SERVER);
}

/** The SERVER span of a trace, once the response has finished and the span ended. */
async function serverSpan(traceId: string): Promise<ReadableSpan> {
  for (let i = 0; i < 400; i++) {
    const [span] = serverSpans(traceId);
    if (span !== undefined) return span;
    await sleep(5);
  }
  throw new Error(`no server span for trace ${traceId}`);
}

function getJson(url: string, headers: Record<string, string>): Promise<unknown> {
  return new Promise((resolve, reject) => {
    get(url, { headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve(JSON.parse(body)));
    }).on('error', reject);
  });
}

const MAJORS: ReadonlyArray<readonly [string, Express]> = [
  ['express 4', require('express4') as Express],
  ['express 5', require('express5') as Express],
];

describe.each(MAJORS)('%s', (_major, express) => {
  /** How often each trace's server span was ended, counted through a requestHook. */
  const ends = new Map<string, jest.SpyInstance>();
  let slowEntered: () => void = () => undefined;
  let base: string;
  let port: number;

  beforeAll(async () => {
    const app = express();
    app.use(
      meshTrace({
        ignore: ['/healthz'],
        requestHook: (span: Span) => void ends.set(span.spanContext().traceId, jest.spyOn(span, 'end')),
      }),
    );
    app.get('/cases', (_req, res) => void res.json(observe()));
    app.get(
      '/users/:id',
      (req, res) =>
        void res.json({
          id: req.params.id,
          traceId: req.meshTrace?.span.spanContext().traceId,
          outcome: req.meshTrace?.outcome.outcome,
        }),
    );
    app.get(
      '/refs',
      (req, res) =>
        void res.json({
          res: req.res === res,
          req: res.req === req,
          own: Object.hasOwn(req, 'res') && Object.hasOwn(res, 'req'),
        }),
    );
    app.get('/healthz', (req, res) => void res.json({ seen: observe(), ended: req.meshTrace?.ended }));
    app.post('/json', express.json(), async (req, res) => {
      const seen: Record<string, string> = { 'after express.json()': activeTraceId() };
      await sleep(1);
      seen.await = activeTraceId();
      seen.setTimeout = await new Promise((r) => setTimeout(() => r(activeTraceId()), 2));
      seen.setImmediate = await new Promise((r) => setImmediate(() => r(activeTraceId())));
      seen['promise chain'] = await Promise.resolve()
        .then(() => sleep(1))
        .then(() => activeTraceId());
      const emitter = new EventEmitter();
      seen.EventEmitter = await new Promise((r) => {
        emitter.once('ready', () => r(activeTraceId()));
        setTimeout(() => emitter.emit('ready'), 1);
      });
      res.json({ bytes: JSON.stringify(req.body).length, seen });
    });
    app.post('/raw', (req, res) => {
      const seen: Record<string, string> = {};
      let chunks = 0;
      req.on('data', () => {
        chunks++;
        seen["request 'data'"] ??= activeTraceId();
      });
      req.on('end', () => {
        seen["request 'end'"] = activeTraceId();
        res.json({ chunks, seen });
      });
    });
    app.get('/concurrent', async (req, res) => {
      await sleep(Math.random() * 20);
      const traceId = await new Promise<string>((r) => setImmediate(() => r(activeTraceId())));
      res.json({ traceId, sent: req.get('traceparent') });
    });
    app.get('/slow', (_req, res) => {
      slowEntered();
      // Answers only after the client left, as a handler still busy when the client aborts would.
      res.on('close', () => setTimeout(() => res.end('late'), 5));
    });
    ({ base, port } = await listen(app));
  });

  test.each(HEADER_CASES.map((c) => [c.name, c] as const))('header case: %s', async (_name, c) => {
    expect(await runHttpCase(tracing, c, `${base}/cases?q=1`)).toEqual([]);
  });

  test('context survives await, timers, promise chains and EventEmitters after express.json() read the body', async () => {
    const traceId = newTraceId();
    const body = JSON.stringify({ pad: 'x'.repeat(60_000) });
    const res = await fetch(`${base}/json`, {
      method: 'POST',
      body,
      headers: { traceparent: traceparent(traceId), 'content-type': 'application/json' },
    });
    const got = (await res.json()) as { bytes: number; seen: Record<string, string> };
    expect(got.bytes).toBe(body.length);
    const want = ['after express.json()', 'await', 'setTimeout', 'setImmediate', 'promise chain', 'EventEmitter'];
    expect(Object.keys(got.seen)).toEqual(want);
    for (const [where, seen] of Object.entries(got.seen)) expect(`${where}: ${seen}`).toBe(`${where}: ${traceId}`);
  });

  test("context reaches the request's own 'data' and 'end' listeners", async () => {
    const traceId = newTraceId();
    const res = await fetch(`${base}/raw`, {
      method: 'POST',
      body: 'y'.repeat(300_000),
      headers: { traceparent: traceparent(traceId) },
    });
    const got = (await res.json()) as { chunks: number; seen: Record<string, string> };
    expect(got.chunks).toBeGreaterThan(1);
    for (const where of ["request 'data'", "request 'end'"])
      expect(`${where}: ${got.seen[where]}`).toBe(`${where}: ${traceId}`);
  });

  test('500 concurrent requests each see only their own trace', async () => {
    const ids = Array.from({ length: 500 }, newTraceId);
    // node:http rather than fetch: a socket each, with less client work between them.
    const answers = await Promise.all(
      ids.map(
        async (id) =>
          ((await getJson(`${base}/concurrent`, { traceparent: traceparent(id) })) as { traceId: string }).traceId,
      ),
    );
    const mixedUp = ids.map((sent, i) => ({ sent, seen: answers[i] })).filter((a) => a.sent !== a.seen);
    expect(mixedUp).toEqual([]);
    const perTrace = new Map<string, number>();
    for (let i = 0; i < 400 && perTrace.size < ids.length; i++) {
      await sleep(5);
      perTrace.clear();
      for (const s of tracing.spans())
        if (s.kind === SpanKind.SERVER)
          perTrace.set(s.spanContext().traceId, (perTrace.get(s.spanContext().traceId) ?? 0) + 1);
      for (const id of perTrace.keys()) if (!ids.includes(id)) perTrace.delete(id);
    }
    expect(ids.filter((id) => perTrace.get(id) !== 1)).toEqual([]);
  });

  test('span attributes, name and status; the handler reaches its trace through req.meshTrace', async () => {
    const traceId = newTraceId();
    const res = await fetch(`${base}/users/42?expand=1`, {
      headers: { traceparent: traceparent(traceId), 'user-agent': 'meshtrace-test/1.0' },
    });
    expect(await res.json()).toEqual({ id: '42', traceId, outcome: 'continued' });
    const span = await serverSpan(traceId);
    expect(span.name).toBe('GET /users/:id');
    expect(span.status.code).toBe(SpanStatusCode.UNSET);
    expect(span.parentSpanContext?.spanId).toBe(PARENT_ID);
    expect(span.attributes).toMatchObject({
      'http.request.method': 'GET',
      'url.path': '/users/42',
      'url.scheme': 'http',
      'http.route': '/users/:id',
      'http.response.status_code': 200,
      'server.address': '127.0.0.1',
      'server.port': port,
      'client.address': '127.0.0.1',
      'user_agent.original': 'meshtrace-test/1.0',
      'network.protocol.version': '1.1',
      'meshtrace.propagation.outcome': 'continued',
    });
    await sleep(20);
    expect(ends.get(traceId)?.mock.calls.length).toBe(1);
  });

  test("Express's back-references req.res and res.req are kept", async () => {
    expect(await (await fetch(`${base}/refs`)).json()).toEqual({ res: true, req: true, own: true });
  });

  test('ignored path: no span, yet what the handler sends carries the caller trace', async () => {
    const traceId = newTraceId();
    const res = await fetch(`${base}/healthz?probe=1`, { headers: { traceparent: traceparent(traceId) } });
    const got = (await res.json()) as { seen: Observed; ended: boolean };
    expect(got.seen.traceId).toBe(traceId);
    expect(got.seen.outbound.traceparent).toBe(`00-${traceId}-${PARENT_ID}-01`);
    expect(got.ended).toBe(true);
    await sleep(20);
    expect(tracing.spans().filter((s) => s.spanContext().traceId === traceId)).toEqual([]);
    expect(ends.has(traceId)).toBe(false);
  });

  test('the span ends exactly once when the client aborts mid-request', async () => {
    const traceId = newTraceId();
    const entered = new Promise<void>((r) => (slowEntered = r));
    const aborter = new AbortController();
    const pending = fetch(`${base}/slow`, {
      headers: { traceparent: traceparent(traceId) },
      signal: aborter.signal,
    }).catch((err: { name?: string }) => err.name);
    await entered;
    aborter.abort();
    expect(await pending).toBe('AbortError');
    const span = await serverSpan(traceId);
    // The handler writes after the client left; that must not end the span again.
    await sleep(50);
    expect(ends.get(traceId)?.mock.calls.length).toBe(1);
    expect(span.events.map((e) => e.name)).toContain('meshtrace.client_aborted');
    expect(span.attributes['http.response.status_code']).toBeUndefined();
    expect(span.name).toBe('GET /slow');
  });

  test('hooks get Express req and res; hooks that throw do not break the request', async () => {
    const hooked = express();
    hooked.use(
      meshTrace({
        requestHook: (span, req) => void span.setAttribute('app.tenant', req.get('x-tenant') ?? 'none'),
        responseHook: (span, res) => void span.setAttribute('app.cache', String(res.get('x-cache'))),
      }),
    );
    hooked.get('/ok', (_req, res) => void res.set('x-cache', 'hit').send('ok'));
    const throwing = express();
    throwing.use(
      meshTrace({
        requestHook: () => {
          throw new Error('request hook broke');
        },
        responseHook: () => {
          throw new Error('response hook broke');
        },
      }),
    );
    throwing.get('/ok', (_req, res) => void res.send('ok'));
    const apps = [
      {
        name: 'working hooks',
        url: (await listen(hooked)).base,
        attributes: { 'app.tenant': 'acme', 'app.cache': 'hit' },
      },
      { name: 'throwing hooks', url: (await listen(throwing)).base, attributes: {} },
    ];
    for (const a of apps) {
      const traceId = newTraceId();
      const res = await fetch(`${a.url}/ok`, { headers: { traceparent: traceparent(traceId), 'x-tenant': 'acme' } });
      expect(`${a.name}: ${res.status} ${await res.text()}`).toBe(`${a.name}: 200 ok`);
      const span = await serverSpan(traceId);
      expect({ name: a.name, ...span.attributes }).toMatchObject({
        name: a.name,
        'http.route': '/ok',
        'http.response.status_code': 200,
        ...a.attributes,
      });
    }
  });

  test('an active server span from another instrumentation is reused and enriched, never doubled', async () => {
    const app = express();
    app.use(meshTrace());
    app.get('/users/:id', (_req, res) => void res.json(observe()));
    const other = trace.getTracer('other-http-instrumentation');
    const { base: outerBase } = await listen((req, res) => {
      const parent = propagation.extract(ROOT_CONTEXT, req.headers);
      const span = other.startSpan('GET', { kind: SpanKind.SERVER }, parent);
      // Ends where @opentelemetry/instrumentation-http ends its span: when the response closes.
      res.on('close', () => span.end());
      context.with(trace.setSpan(parent, span), () => app(req, res));
    });
    const traceId = newTraceId();
    const seen = (await (
      await fetch(`${outerBase}/users/7`, { headers: { traceparent: traceparent(traceId) } })
    ).json()) as Observed;
    const span = await serverSpan(traceId);
    await sleep(20);
    expect(serverSpans(traceId)).toHaveLength(1);
    expect(span.instrumentationScope.name).toBe('other-http-instrumentation');
    expect(seen.spanId).toBe(span.spanContext().spanId);
    expect(seen.outbound.traceparent).toBe(`00-${traceId}-${span.spanContext().spanId}-01`);
    expect(span.name).toBe('GET /users/:id');
    expect(span.attributes).toMatchObject({
      'http.route': '/users/:id',
      'http.response.status_code': 200,
      'meshtrace.propagation.outcome': 'continued',
    });
  });
});

describe('bad options throw a TypeError naming the package and the option', () => {
  const BAD: ReadonlyArray<readonly [string, unknown]> = [
    ['options', 'yes'],
    ['tracerProvider', { tracerProvider: {} }],
    ['ignore', { ignore: '/healthz' }],
    ['ignore', { ignore: ['/healthz', 42] }],
    ['requestHook', { requestHook: 'log' }],
    ['responseHook', { responseHook: {} }],
  ];
  test.each(BAD)('%s: %p', (option, options) => {
    expect(() => meshTrace(options as ExpressMeshTraceOptions)).toThrow(TypeError);
    expect(() => meshTrace(options as ExpressMeshTraceOptions)).toThrow(`@meshtrace/express: option "${option}"`);
  });

  test('app.use(meshTrace) without calling it', () => {
    const misused = meshTrace as unknown as (req: object, res: object, next: () => void) => void;
    expect(() => misused({}, {}, () => undefined)).toThrow(TypeError);
    expect(() => misused({}, {}, () => undefined)).toThrow(
      '@meshtrace/express: option "options" must be an object (use app.use(meshTrace()), not app.use(meshTrace))',
    );
  });
});
