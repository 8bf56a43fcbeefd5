import {
  DiagLogLevel,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  context,
  diag,
  propagation,
  trace,
} from '@opentelemetry/api';
import type { DiagLogger } from '@opentelemetry/api';
import { fastify } from 'fastify';
import type { FastifyInstance } from 'fastify';
import { fastify as fastify4 } from 'fastify4';
import { createServer, request as httpRequest } from 'node:http';
import { warner } from '@meshtrace/core/adapter';
import { HEADER_CASES, PARENT_ID, TRACE_ID, observe, runHttpCase, setupTestTracing } from '@meshtrace/testkit';
import type { Observed, TestTracing } from '@meshtrace/testkit';
import { meshTrace } from '@meshtrace/fastify';
import type { FastifyMeshTraceOptions } from '@meshtrace/fastify';

type ReadableSpan = ReturnType<TestTracing['spans']>[number];

const tracing = setupTestTracing();
const warnings: string[] = [];
const record = (message: string) => void warnings.push(message);
const logger: DiagLogger = {
  error: record,
  warn: record,
  info: () => undefined,
  debug: () => undefined,
  verbose: () => undefined,
};
diag.setLogger(logger, DiagLogLevel.WARN);
afterAll(() => tracing.shutdown());

// Both majors run every test; Fastify 4's types differ, its behaviour is what is under test.
const MAJORS = [
  ['fastify 5', fastify],
  ['fastify 4', fastify4 as unknown as typeof fastify],
] as const;

const traceparent = (traceId: string) => `00-${traceId}-${PARENT_ID}-01`;
const randomTraceId = () =>
  Array.from({ length: 32 }, () => '0123456789abcdef'[Math.floor(Math.random() * 16)]).join('');
const settle = () => new Promise((resolve) => setTimeout(resolve, 20));
const serverSpans = (traceId: string): ReadableSpan[] =>
  tracing.spans().filter((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.SERVER);
/** POSTs a JSON `body` in two chunks 20 ms apart, so it is parsed from a later socket read. */
function postInChunks(url: string, headers: Record<string, string>, body: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      url,
      {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve(text));
      },
    );
    req.on('error', reject);
    req.write(body.slice(0, 4));
    setTimeout(() => req.end(body.slice(4)), 20);
  });
}
const endedTwice = () => warnings.filter((w) => w.includes('ended Span'));
const abortHookSaw = new Map<string, string | undefined>();

describe.each(MAJORS)('%s', (_major, Fastify) => {
  let app: FastifyInstance;
  let base: string;

  beforeAll(async () => {
    app = Fastify();
    await app.register(meshTrace, { ignore: ['/healthz', /^\/internal\//] });
    app.get('/cases', async () => observe());
    app.get('/plain', async () => 'ok');
    app.get('/users/:id', async () => observe());
    app.post('/users', async (_request, reply) => reply.code(201).send(observe()));
    app.get('/healthz', async () => observe());
    app.post('/healthz', async (request) => ({ body: request.body, seen: observe() }));
    app.get('/internal/metrics', async () => observe());
    app.get('/files/*', async () => 'file');
    await app.register(
      async (child) => {
        child.get('/items/:itemId', async () => 'item');
      },
      { prefix: '/api' },
    );
    app.get('/throw', () => {
      throw new Error('handler threw');
    });
    app.get('/reject', async () => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      throw new TypeError('async rejection');
    });
    app.get(
      '/hook-error',
      { preHandler: async () => Promise.reject(new RangeError('hook failed')) },
      async () => 'unreachable',
    );
    app.get(
      '/callback-hook-error',
      { preValidation: (_request, _reply, done) => done(new Error('done with an error')) },
      async () => 'unreachable',
    );
    app.get('/bad-request', async () => {
      throw Object.assign(new Error('caller sent nonsense'), { statusCode: 400 });
    });
    app.get(
      '/validated',
      { schema: { querystring: { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] } } },
      async () => 'ok',
    );
    app.get(
      '/slow',
      {
        onRequestAbort: async (request) =>
          void abortHookSaw.set(request.headers.traceparent as string, trace.getActiveSpan()?.spanContext().spanId),
      },
      async (request) => {
        // Answers only once the client has gone away.
        await new Promise((resolve) => request.raw.once('close', resolve));
        return 'too late';
      },
    );
    base = await app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterAll(() => app.close());
  beforeEach(() => {
    tracing.reset();
    warnings.length = 0;
  });

  test.each(HEADER_CASES.map((c) => [c.name, c] as const))('header case: %s', async (_name, c) => {
    expect(await runHttpCase(tracing, c, `${base}/cases?q=1`)).toEqual([]);
  });

  test('the server span carries the HTTP attributes', async () => {
    const traceId = randomTraceId();
    const res = await fetch(`${base}/users/42?expand=1`, {
      headers: { traceparent: traceparent(traceId), 'user-agent': 'meshtrace-test/1.0' },
    });
    const seen = (await res.json()) as Observed;
    await settle();
    const [span] = serverSpans(traceId);
    expect({ name: span.name, kind: span.kind, spanId: span.spanContext().spanId }).toEqual({
      name: 'GET /users/:id',
      kind: SpanKind.SERVER,
      spanId: seen.spanId,
    });
    expect(span.attributes).toMatchObject({
      'http.request.method': 'GET',
      'url.path': '/users/42',
      'url.scheme': 'http',
      'http.route': '/users/:id',
      'http.response.status_code': 200,
      'server.address': '127.0.0.1',
      'server.port': Number(new URL(base).port),
      'client.address': '127.0.0.1',
      'user_agent.original': 'meshtrace-test/1.0',
      'network.protocol.version': '1.1',
    });
  });

  const ROUTES = [
    { name: 'plain route', method: 'GET', path: '/plain', span: 'GET /plain', route: '/plain', status: 200 },
    {
      name: 'route with a parameter',
      method: 'GET',
      path: '/users/7',
      span: 'GET /users/:id',
      route: '/users/:id',
      status: 200,
    },
    {
      name: 'POST with a JSON body',
      method: 'POST',
      path: '/users',
      span: 'POST /users',
      route: '/users',
      status: 201,
    },
    {
      name: 'wildcard route',
      method: 'GET',
      path: '/files/a/b.txt',
      span: 'GET /files/*',
      route: '/files/*',
      status: 200,
    },
    {
      name: 'route of a prefixed plugin',
      method: 'GET',
      path: '/api/items/9',
      span: 'GET /api/items/:itemId',
      route: '/api/items/:itemId',
      status: 200,
    },
    { name: 'HEAD on a GET route', method: 'HEAD', path: '/plain', span: 'HEAD /plain', route: '/plain', status: 200 },
    { name: 'no route (404)', method: 'GET', path: '/nope/1', span: 'GET', route: undefined, status: 404 },
    { name: 'unknown method', method: 'PROPFIND', path: '/plain', span: 'HTTP', route: undefined, status: 404 },
  ];
  test.each(ROUTES.map((r) => [r.name, r] as const))('route template: %s', async (name, r) => {
    const traceId = randomTraceId();
    const headers: Record<string, string> = { traceparent: traceparent(traceId) };
    const init: RequestInit = { method: r.method, headers };
    if (r.method === 'POST') {
      headers['content-type'] = 'application/json';
      init.body = '{"name":"ada"}';
    }
    const res = await fetch(base + r.path, init);
    await res.arrayBuffer();
    await settle();
    const spans = serverSpans(traceId);
    expect({ name, spans: spans.length, status: res.status }).toEqual({ name, spans: 1, status: r.status });
    expect({
      name,
      span: spans[0].name,
      route: spans[0].attributes['http.route'],
      status: spans[0].attributes['http.response.status_code'],
    }).toEqual({
      name,
      span: r.span,
      route: r.route,
      status: r.status,
    });
  });

  const ERRORS = [
    {
      name: 'throw in a handler',
      path: '/throw',
      status: 500,
      error: 'Error',
      message: 'handler threw',
      spanStatus: SpanStatusCode.ERROR,
    },
    {
      name: 'async rejection in a handler',
      path: '/reject',
      status: 500,
      error: 'TypeError',
      message: 'async rejection',
      spanStatus: SpanStatusCode.ERROR,
    },
    {
      name: 'rejection in an async hook',
      path: '/hook-error',
      status: 500,
      error: 'RangeError',
      message: 'hook failed',
      spanStatus: SpanStatusCode.ERROR,
    },
    {
      name: 'error passed to done() of a hook',
      path: '/callback-hook-error',
      status: 500,
      error: 'Error',
      message: 'done with an error',
      spanStatus: SpanStatusCode.ERROR,
    },
    // Semantic conventions: a SERVER span's status stays unset for 4xx, the caller's fault.
    {
      name: 'error with a 4xx status',
      path: '/bad-request',
      status: 400,
      error: 'Error',
      message: 'caller sent nonsense',
      spanStatus: SpanStatusCode.UNSET,
    },
    {
      name: 'schema validation error',
      path: '/validated?n=x',
      status: 400,
      error: 'FST_ERR_VALIDATION',
      message: 'querystring/n must be integer',
      spanStatus: SpanStatusCode.UNSET,
    },
  ];
  test.each(ERRORS.map((e) => [e.name, e] as const))('errors are recorded: %s', async (name, e) => {
    const traceId = randomTraceId();
    const res = await fetch(base + e.path, { headers: { traceparent: traceparent(traceId) } });
    await res.arrayBuffer();
    await settle();
    const spans = serverSpans(traceId);
    expect({ name, spans: spans.length, status: res.status }).toEqual({ name, spans: 1, status: e.status });
    const span = spans[0];
    const exceptions = span.events
      .filter((ev) => ev.name === 'exception')
      .map((ev) => ({ type: ev.attributes?.['exception.type'], message: ev.attributes?.['exception.message'] }));
    expect({ name, exceptions, status: span.status.code, code: span.attributes['http.response.status_code'] }).toEqual({
      name,
      exceptions: [{ type: e.error, message: e.message }],
      status: e.spanStatus,
      code: e.status,
    });
    expect({ name, errorType: span.attributes['error.type'] }).toEqual({
      name,
      errorType: e.spanStatus === SpanStatusCode.ERROR ? e.error : undefined,
    });
  });

  const IGNORED = [
    { name: 'exact path', method: 'GET', path: '/healthz' },
    { name: 'exact path with a query and a body', method: 'POST', path: '/healthz?probe=1' },
    { name: 'regular expression', method: 'GET', path: '/internal/metrics' },
  ];
  test.each(IGNORED.map((c) => [c.name, c] as const))(
    'ignore skips the span but still propagates: %s',
    async (name, c) => {
      const traceId = randomTraceId();
      const headers = { traceparent: traceparent(traceId), baggage: 'tenant=acme' };
      const text =
        c.method === 'POST'
          ? await postInChunks(base + c.path, headers, '{"up":true}')
          : await (await fetch(base + c.path, { headers })).text();
      const body = JSON.parse(text) as Observed | { body: unknown; seen: Observed };
      const seen = 'seen' in body ? body.seen : body;
      await settle();
      expect({ name, spans: tracing.spans().filter((s) => s.spanContext().traceId === traceId).length }).toEqual({
        name,
        spans: 0,
      });
      expect({ name, traceId: seen.traceId, outbound: seen.outbound }).toEqual({
        name,
        traceId,
        outbound: { traceparent: traceparent(traceId), baggage: 'tenant=acme' },
      });
      if ('body' in body) expect({ name, body: body.body }).toEqual({ name, body: { up: true } });
    },
  );

  test('the span ends exactly once', async () => {
    const traceId = randomTraceId();
    await (await fetch(`${base}/plain`, { headers: { traceparent: traceparent(traceId) } })).text();
    await settle();
    expect(serverSpans(traceId)).toHaveLength(1);
    expect(endedTwice()).toEqual([]);
  });

  test('the span ends exactly once when the client aborts', async () => {
    const traceId = randomTraceId();
    await new Promise<void>((resolve) => {
      const req = httpRequest(`${base}/slow`, { headers: { traceparent: traceparent(traceId) } });
      req.on('error', () => resolve());
      req.end();
      setTimeout(() => req.destroy(), 50);
    });
    // The handler answers after the abort: nothing may end the span a second time.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const spans = serverSpans(traceId);
    expect(spans).toHaveLength(1);
    expect({
      events: spans[0].events.map((e) => e.name),
      status: spans[0].attributes['http.response.status_code'],
      route: spans[0].attributes['http.route'],
      onRequestAbort: abortHookSaw.get(traceparent(traceId)),
    }).toEqual({
      events: ['meshtrace.client_aborted'],
      status: undefined,
      route: '/slow',
      onRequestAbort: spans[0].spanContext().spanId,
    });
    expect(endedTwice()).toEqual([]);
  });
});

describe.each(MAJORS)('%s options', (_major, Fastify) => {
  const BAD: ReadonlyArray<readonly [string, unknown]> = [
    ['ignore', 5],
    ['ignore', ['/ok', 42]],
    ['requestHook', 'not a function'],
    ['responseHook', {}],
    ['tracerProvider', { startSpan: () => undefined }],
    ['inbound', 'trust-everyone'],
  ];
  test.each(BAD)('a bad %s throws a TypeError naming the package and the option', async (option, value) => {
    const app = Fastify();
    const registered = app.register(meshTrace, { [option]: value } as FastifyMeshTraceOptions);
    await expect(registered.ready()).rejects.toThrow(TypeError);
    await expect(app.ready()).rejects.toThrow(`@meshtrace/fastify: option "${option}"`);
    await app.close().catch(() => undefined);
  });

  test('hooks that throw never break the request', async () => {
    warner.reset();
    const app = Fastify();
    await app.register(meshTrace, {
      requestHook: () => {
        throw new Error('requestHook broke');
      },
      responseHook: () => {
        throw new Error('responseHook broke');
      },
    });
    app.get('/ok', async () => observe());
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    tracing.reset();
    warnings.length = 0;
    const res = await fetch(`${base}/ok`, { headers: { traceparent: traceparent(TRACE_ID) } });
    const seen = (await res.json()) as Observed;
    await settle();
    await app.close();
    expect({ status: res.status, traceId: seen.traceId, spans: serverSpans(TRACE_ID).length }).toEqual({
      status: 200,
      traceId: TRACE_ID,
      spans: 1,
    });
    expect(warnings.filter((w) => w.includes('Hook threw'))).toEqual([
      '@meshtrace/fastify: requestHook threw and was ignored: requestHook broke',
      '@meshtrace/fastify: responseHook threw and was ignored: responseHook broke',
    ]);
  });

  test('requestHook and responseHook see the span, the request and the reply', async () => {
    const seen: string[] = [];
    const app = Fastify();
    await app.register(meshTrace, {
      requestHook: (span, request) => {
        span.setAttribute('app.tenant', String(request.headers['x-tenant']));
        seen.push(`request ${request.url}`);
      },
      responseHook: (span, reply) => {
        span.setAttribute('app.cache', String(reply.getHeader('x-cache')));
        seen.push(`response ${reply.statusCode}`);
      },
    });
    app.get('/ok', async (_request, reply) => reply.header('x-cache', 'hit').send('ok'));
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    tracing.reset();
    const traceId = randomTraceId();
    await (await fetch(`${base}/ok`, { headers: { traceparent: traceparent(traceId), 'x-tenant': 'acme' } })).text();
    await settle();
    await app.close();
    expect(seen).toEqual(['request /ok', 'response 200']);
    expect(serverSpans(traceId)[0].attributes).toMatchObject({ 'app.tenant': 'acme', 'app.cache': 'hit' });
  });

  test('traceResponse sends the server span in a traceresponse header beside the reply headers', async () => {
    const app = Fastify();
    await app.register(meshTrace, { traceResponse: true });
    app.get('/ok', async (_request, reply) => reply.header('x-app', 'yes').send(observe()));
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    const traceId = randomTraceId();
    const res = await fetch(`${base}/ok`, { headers: { traceparent: traceparent(traceId) } });
    const seen = (await res.json()) as Observed;
    await app.close();
    expect({ traceresponse: res.headers.get('traceresponse'), app: res.headers.get('x-app') }).toEqual({
      traceresponse: `00-${traceId}-${seen.spanId}-01`,
      app: 'yes',
    });
  });

  test('a SERVER span made before Fastify by another HTTP instrumentation is reused and enriched', async () => {
    const tracer = trace.getTracer('other-http-instrumentation');
    const app = Fastify({
      serverFactory: (handler) =>
        createServer((req, res) => {
          const parent = propagation.extract(ROOT_CONTEXT, req.headers);
          const span = tracer.startSpan('GET', { kind: SpanKind.SERVER }, parent);
          // Ends its span once the response has closed, after the plugin enriched it at 'finish'.
          res.once('close', () => span.end());
          context.with(trace.setSpan(parent, span), () => handler(req, res));
        }),
    });
    await app.register(meshTrace);
    app.get('/users/:id', async () => observe());
    const base = await app.listen({ port: 0, host: '127.0.0.1' });
    tracing.reset();
    warnings.length = 0;
    const traceId = randomTraceId();
    const seen = (await (
      await fetch(`${base}/users/5`, { headers: { traceparent: traceparent(traceId) } })
    ).json()) as Observed;
    await settle();
    await app.close();
    const spans = serverSpans(traceId);
    expect(spans.map((s) => s.instrumentationScope.name)).toEqual(['other-http-instrumentation']);
    const [span] = spans;
    expect({ spanId: span.spanContext().spanId, parent: span.parentSpanContext?.spanId, name: span.name }).toEqual({
      spanId: seen.spanId,
      parent: PARENT_ID,
      name: 'GET /users/:id',
    });
    expect(span.attributes).toMatchObject({
      'http.route': '/users/:id',
      'http.response.status_code': 200,
      'meshtrace.propagation.outcome': 'continued',
    });
    expect(endedTwice()).toEqual([]);
  });
});
