import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer } from 'node:http';
import type { RequestListener, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
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
import Router from '@koa/router';
import Koa from 'koa';
import type { Middleware } from 'koa';
import { warner } from '@meshtrace/core/adapter';
import { PARENT_ID, TRACE_ID, observe, setupTestTracing } from '@meshtrace/testkit';
import type { Observed, TestTracing } from '@meshtrace/testkit';
import { meshTrace } from '@meshtrace/koa';
import type { KoaMeshTraceOptions } from '@meshtrace/koa';

// Koa 2 has no types of its own; its API is the one @types/koa describes.
const Koa2 = require('koa2') as typeof Koa;
const MAJORS = [
  ['koa 2', Koa2, '2.'],
  ['koa 3', Koa, '3.'],
] as const;

type ReadableSpan = ReturnType<TestTracing['spans']>[number];

const tracing = setupTestTracing();
const diagLines: string[] = [];
const log = (message: string) => void diagLines.push(message);
diag.setLogger(
  { error: log, warn: log, info: () => undefined, debug: () => undefined, verbose: () => undefined },
  DiagLogLevel.WARN,
);
afterAll(() => tracing.shutdown());

const servers: Server[] = [];
afterAll(async () => {
  await Promise.all(
    servers.splice(0).map((s) => {
      const closed = new Promise((resolve) => s.close(resolve));
      s.closeAllConnections();
      return closed;
    }),
  );
});

/** Serves a request listener on a loopback port until this file's tests end; returns its base URL. */
async function serve(listener: RequestListener): Promise<string> {
  const server = createServer(listener);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const traceparent = (traceId: string = TRACE_ID) => `00-${traceId}-${PARENT_ID}-01`;
const newTraceId = () => randomBytes(16).toString('hex');
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function spansOf(traceId: string): ReadableSpan[] {
  return tracing.spans().filter((s) => s.spanContext().traceId === traceId);
}

/** Waits until `count` spans of the trace have ended, then a little longer so a late second end would show. */
async function ended(traceId: string, count = 1): Promise<ReadableSpan[]> {
  for (let i = 0; i < 200 && spansOf(traceId).length < count; i++) await delay(5);
  await delay(20);
  return spansOf(traceId);
}

/** The one SERVER span of a trace, once it ended. */
async function onlyServerSpan(traceId: string): Promise<ReadableSpan> {
  const spans = (await ended(traceId)).filter((s) => s.kind === SpanKind.SERVER);
  expect({ traceId, serverSpans: spans.length }).toEqual({ traceId, serverSpans: 1 });
  return spans[0];
}

beforeEach(() => {
  tracing.reset();
  diagLines.length = 0;
  warner.reset();
});

test.each([
  ['options that are not an object', 'yes', 'options'],
  ['tracerProvider without getTracer', { tracerProvider: {} }, 'tracerProvider'],
  ['ignore that is a string', { ignore: '/healthz' }, 'ignore'],
  ['ignore with a number in it', { ignore: ['/healthz', 42] }, 'ignore'],
  ['requestHook that is not a function', { requestHook: 'log' }, 'requestHook'],
  ['responseHook that is not a function', { responseHook: 1 }, 'responseHook'],
] as const)('bad options throw a TypeError at setup: %s', (name, options, option) => {
  let thrown: unknown;
  try {
    meshTrace(options as unknown as KoaMeshTraceOptions);
  } catch (err) {
    thrown = err;
  }
  const prefix = `@meshtrace/koa: option "${option}" must be`;
  expect({
    name,
    typeError: thrown instanceof TypeError,
    message: String((thrown as Error | undefined)?.message).slice(0, prefix.length),
  }).toEqual({
    name,
    typeError: true,
    message: prefix,
  });
});

describe.each(MAJORS)('%s', (major, KoaApp, version) => {
  /** A Koa app with meshTrace() first and `build` after it, served on a loopback port. */
  async function app(build: (app: Koa) => void, options?: KoaMeshTraceOptions): Promise<string> {
    const koa = new KoaApp();
    koa.silent = true;
    koa.use(meshTrace(options));
    build(koa);
    return serve(koa.callback());
  }

  test('runs the intended major', () => {
    expect({
      major,
      version: (
        require(major === 'koa 2' ? 'koa2/package.json' : 'koa/package.json') as { version: string }
      ).version.slice(0, 2),
    }).toEqual({ major, version });
  });

  test('context survives await next(), timers, promise chains, events and reading the body', async () => {
    const base = await app((koa) => {
      koa.use(async (ctx, next) => {
        const stages: Record<string, Observed> = {};
        ctx.state.stages = stages;
        stages['middleware before next()'] = observe();
        await next();
        stages['middleware after await next()'] = observe();
        ctx.body = stages;
      });
      const router = new Router();
      router.post('/items/:id', async (ctx) => {
        const stages = ctx.state.stages as Record<string, Observed>;
        stages['route handler'] = observe();
        await delay(1);
        stages['after await'] = observe();
        stages['setTimeout callback'] = await new Promise<Observed>((resolve) =>
          setTimeout(() => resolve(observe()), 1),
        );
        stages['setImmediate callback'] = await new Promise<Observed>((resolve) =>
          setImmediate(() => resolve(observe())),
        );
        stages['process.nextTick callback'] = await new Promise<Observed>((resolve) =>
          process.nextTick(() => resolve(observe())),
        );
        stages['promise chain'] = await Promise.resolve(1)
          .then((n) => n + 1)
          .then(() => observe());
        const emitter = new EventEmitter();
        const heard = new Promise<Observed>((resolve) => emitter.once('tick', () => resolve(observe())));
        setImmediate(() => emitter.emit('tick'));
        stages['EventEmitter listener'] = await heard;
        // The body arrives in two chunks, later: its events come from the socket, not from this function.
        let chunks = 0;
        const body = await new Promise<string>((resolve, reject) => {
          let text = '';
          ctx.req.on('data', (chunk: Buffer) => {
            stages[`request 'data' event ${++chunks}`] = observe();
            text += chunk.toString();
          });
          ctx.req.on('end', () => {
            stages[`request 'end' event`] = observe();
            resolve(text);
          });
          ctx.req.on('error', reject);
        });
        stages[`body ${body} after ${chunks > 1 ? 'several chunks' : 'one chunk'}`] = observe();
        ctx.status = 200;
      });
      koa.use(router.routes());
    });

    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(encoder.encode('first,'));
        await delay(50);
        controller.enqueue(encoder.encode('second'));
        controller.close();
      },
    });
    const res = await fetch(`${base}/items/7`, {
      method: 'POST',
      headers: { traceparent: traceparent() },
      body,
      duplex: 'half',
    } as RequestInit);
    const stages = (await res.json()) as Record<string, Observed>;
    const spanId = (await onlyServerSpan(TRACE_ID)).spanContext().spanId;

    expect(Object.keys(stages)).toEqual(
      expect.arrayContaining([
        'middleware before next()',
        'middleware after await next()',
        'route handler',
        'after await',
        'setTimeout callback',
        'setImmediate callback',
        'process.nextTick callback',
        'promise chain',
        'EventEmitter listener',
        "request 'data' event 1",
        "request 'data' event 2",
        "request 'end' event",
        'body first,second after several chunks',
      ]),
    );
    for (const [stage, seen] of Object.entries(stages)) {
      expect({ stage, traceId: seen.traceId, spanId: seen.spanId }).toEqual({ stage, traceId: TRACE_ID, spanId });
    }
  });

  test('500 concurrent requests each see only their own trace', async () => {
    const n = 500;
    let arrived = 0;
    let release!: () => void;
    const everyoneIn = new Promise<void>((resolve) => (release = resolve));
    const base = await app((koa) => {
      koa.use(async (ctx, next) => {
        const seen = [observe().traceId];
        // Hold every request until all have arrived, so their contexts interleave for real.
        if (++arrived === n) release();
        await everyoneIn;
        seen.push(observe().traceId);
        await next();
        seen.push(observe().traceId, ctx.state.inner as string);
        ctx.body = seen;
      });
      koa.use(async (ctx) => {
        await delay(Math.random() * 10);
        ctx.state.inner = await new Promise<string>((resolve) => setImmediate(() => resolve(observe().traceId)));
      });
    });

    const ids = Array.from({ length: n }, newTraceId);
    const answers = await Promise.all(
      ids.map((id) =>
        fetch(`${base}/c`, { headers: { traceparent: traceparent(id) } }).then((r) => r.json() as Promise<string[]>),
      ),
    );
    const wrong = answers.flatMap((seen, i) =>
      seen.length === 4 && seen.every((id) => id === ids[i]) ? [] : [`request ${i} (${ids[i]}) saw ${seen.join(' ')}`],
    );
    expect(wrong).toEqual([]);

    for (let i = 0; i < 100 && tracing.spans().length < n; i++) await delay(10);
    const byTrace = new Map<string, number>();
    for (const s of tracing.spans())
      if (s.kind === SpanKind.SERVER)
        byTrace.set(s.spanContext().traceId, (byTrace.get(s.spanContext().traceId) ?? 0) + 1);
    const missing = ids.filter((id) => byTrace.get(id) !== 1);
    expect({ spans: tracing.spans().length, tracesWithoutExactlyOneServerSpan: missing }).toEqual({
      spans: n,
      tracesWithoutExactlyOneServerSpan: [],
    });
  });

  describe('route templates', () => {
    let base: string;
    beforeAll(async () => {
      base = await app((koa) => {
        const main = new Router();
        main.get('/hello', (ctx) => {
          ctx.body = 'hi';
        });
        main.get('/users/:id', (ctx) => {
          ctx.body = ctx.params.id;
        });
        main.get('/users/me', (ctx) => {
          ctx.body = 'me';
        });
        main.post('/users', (ctx) => {
          ctx.status = 201;
        });
        const prefixed = new Router({ prefix: '/v1' });
        prefixed.get('/items/:id', (ctx) => {
          ctx.body = ctx.params.id;
        });
        const users = new Router();
        users.get('/users/:id', (ctx) => {
          ctx.body = ctx.params.id;
        });
        const orgs = new Router();
        orgs.use('/orgs/:org', users.routes());
        const api = new Router({ prefix: '/api' });
        api.use(orgs.routes());
        // Router middleware that runs after the route overwrites what the router records as matched.
        const chained = new Router();
        chained.get('/chained/:id', async (ctx, next) => {
          ctx.body = 'chained';
          await next();
        });
        chained.use(async (_ctx, next) => next());
        koa.use(main.routes());
        koa.use(prefixed.routes());
        koa.use(api.routes());
        koa.use(chained.routes());
        koa.use(main.allowedMethods());
      });
    });
    test.each([
      ['plain path', 'GET', '/hello', 200, 'GET /hello', '/hello'],
      ['path parameter', 'GET', '/users/7', 200, 'GET /users/:id', '/users/:id'],
      ['the route that answered when two match', 'GET', '/users/me', 200, 'GET /users/:id', '/users/:id'],
      ['POST', 'POST', '/users', 201, 'POST /users', '/users'],
      ['HEAD on a GET route', 'HEAD', '/users/7', 200, 'HEAD /users/:id', '/users/:id'],
      ['router with a prefix', 'GET', '/v1/items/3?x=1', 200, 'GET /v1/items/:id', '/v1/items/:id'],
      [
        'nested routers with prefixes',
        'GET',
        '/api/orgs/acme/users/7',
        200,
        'GET /api/orgs/:org/users/:id',
        '/api/orgs/:org/users/:id',
      ],
      ['router.use() middleware after the route', 'GET', '/chained/7', 200, 'GET /chained/:id', '/chained/:id'],
      ['no route (404)', 'GET', '/nowhere', 404, 'GET', undefined],
      ['method not allowed (405)', 'DELETE', '/hello', 405, 'DELETE', undefined],
    ] as const)('%s', async (name, method, path, status, spanName, route) => {
      const traceId = newTraceId();
      const res = await fetch(`${base}${path}`, { method, headers: { traceparent: traceparent(traceId) } });
      await res.arrayBuffer();
      const spans = await ended(traceId);
      expect({
        name,
        status: res.status,
        spans: spans.length,
        span: spans[0]?.name,
        route: spans[0]?.attributes['http.route'],
      }).toEqual({ name, status, spans: 1, span: spanName, route });
    });
  });

  test.each([
    ['thrown at once', '/boom', new Error('boom')],
    ['thrown after an await', '/boom-later', new RangeError('late boom')],
  ] as const)('an error %s is recorded and Koa still answers 500 and emits error', async (name, path, error) => {
    const emitted: unknown[] = [];
    const base = await app((koa) => {
      koa.on('error', (err: unknown) => void emitted.push(err));
      const router = new Router();
      router.get('/boom', () => {
        throw error;
      });
      router.get('/boom-later', async () => {
        await delay(1);
        throw error;
      });
      koa.use(router.routes());
    });
    const res = await fetch(`${base}${path}`, { headers: { traceparent: traceparent() } });
    const text = await res.text();
    const span = await onlyServerSpan(TRACE_ID);
    const exception = span.events.find((e) => e.name === 'exception');
    expect({
      name,
      status: res.status,
      text,
      emitted: emitted.length === 1 && emitted[0] === error,
      spanStatus: span.status.code,
      statusCode: span.attributes['http.response.status_code'],
      errorType: span.attributes['error.type'],
      exception: exception?.attributes?.['exception.message'],
      route: span.attributes['http.route'],
    }).toEqual({
      name,
      status: 500,
      text: 'Internal Server Error',
      emitted: true,
      spanStatus: SpanStatusCode.ERROR,
      statusCode: 500,
      errorType: error.name,
      exception: error.message,
      route: path,
    });
  });

  test('a thrown 4xx (ctx.throw) is the client error Koa answers, not a server error: the exception is recorded, the status left unset, as in every adapter', async () => {
    const emitted: unknown[] = [];
    const base = await app((koa) => {
      koa.on('error', (err: unknown) => void emitted.push(err));
      const router = new Router();
      router.get('/secret', (ctx) => ctx.throw(403, 'not yours'));
      koa.use(router.routes());
    });
    const res = await fetch(`${base}/secret`, { headers: { traceparent: traceparent() } });
    const text = await res.text();
    const span = await onlyServerSpan(TRACE_ID);
    expect({
      status: res.status,
      text,
      emitted: emitted.length,
      spanStatus: span.status.code,
      statusCode: span.attributes['http.response.status_code'],
      events: span.events.map((e) => e.name),
    }).toEqual({
      status: 403,
      text: 'not yours',
      emitted: 1,
      spanStatus: SpanStatusCode.UNSET,
      statusCode: 403,
      events: ['exception'],
    });
  });

  test.each([
    ['exact path', { ignore: ['/healthz'] }, '/healthz', {}, false],
    ['exact path, other path', { ignore: ['/healthz'] }, '/work', {}, true],
    [
      'predicate on the Koa ctx',
      { ignore: (_path: string, ctx: Koa.Context) => ctx.get('x-probe') === 'yes' },
      '/work',
      { 'x-probe': 'yes' },
      false,
    ],
    [
      'predicate on the Koa ctx, not matching',
      { ignore: (_path: string, ctx: Koa.Context) => ctx.get('x-probe') === 'yes' },
      '/work',
      {},
      true,
    ],
  ] as const)('ignore: %s', async (name, options, path, headers, traced) => {
    const base = await app((koa) => {
      koa.use((ctx) => {
        ctx.body = observe();
      });
    }, options as KoaMeshTraceOptions);
    const seen = (await (
      await fetch(`${base}${path}`, { headers: { ...headers, traceparent: traceparent() } })
    ).json()) as Observed;
    const spans = await ended(TRACE_ID, traced ? 1 : 0);
    const spanId = traced ? spans[0]?.spanContext().spanId : PARENT_ID;
    expect({
      name,
      spans: spans.length,
      traceId: seen.traceId,
      spanId: seen.spanId,
      outbound: seen.outbound.traceparent,
    }).toEqual({
      name,
      spans: traced ? 1 : 0,
      traceId: TRACE_ID,
      spanId,
      outbound: `00-${TRACE_ID}-${spanId}-01`,
    });
  });

  test('hooks get the Koa ctx, and a hook that throws does not break the request', async () => {
    const base = await app(
      (koa) => {
        const router = new Router();
        router.get('/users/:id', (ctx) => {
          ctx.body = 'ok';
        });
        koa.use(router.routes());
      },
      {
        requestHook(span, ctx) {
          span.setAttribute('test.request.path', ctx.path);
          throw new Error('request hook broke');
        },
        responseHook(span, ctx) {
          span.setAttribute('test.response.status', ctx.status);
          throw new Error('response hook broke');
        },
      },
    );
    const res = await fetch(`${base}/users/7`, { headers: { traceparent: traceparent() } });
    const text = await res.text();
    const span = await onlyServerSpan(TRACE_ID);
    expect({
      status: res.status,
      text,
      path: span.attributes['test.request.path'],
      responseStatus: span.attributes['test.response.status'],
      reported: diagLines.filter((l) => /(request|response)Hook threw/.test(l)).length,
    }).toEqual({ status: 200, text: 'ok', path: '/users/7', responseStatus: 200, reported: 2 });
  });

  test('span attributes', async () => {
    const base = await app((koa) => {
      const router = new Router();
      router.get('/users/:id', (ctx) => {
        ctx.body = 'ok';
      });
      koa.use(router.routes());
    });
    const port = Number(new URL(base).port);
    const res = await fetch(`${base}/users/7?expand=1`, {
      headers: { traceparent: traceparent(), 'user-agent': 'meshtrace-test/1.0' },
    });
    await res.text();
    const span = await onlyServerSpan(TRACE_ID);
    expect({
      name: span.name,
      kind: span.kind,
      parent: span.parentSpanContext?.spanId,
      attributes: span.attributes,
    }).toEqual({
      name: 'GET /users/:id',
      kind: SpanKind.SERVER,
      parent: PARENT_ID,
      attributes: expect.objectContaining({
        'http.request.method': 'GET',
        'url.path': '/users/7',
        'url.scheme': 'http',
        'http.route': '/users/:id',
        'http.response.status_code': 200,
        'server.address': '127.0.0.1',
        'server.port': port,
        'client.address': '127.0.0.1',
        'user_agent.original': 'meshtrace-test/1.0',
        'network.protocol.version': '1.1',
        'meshtrace.propagation.outcome': 'continued',
      }),
    });
  });

  test('ctx.meshTrace is the request trace', async () => {
    const base = await app((koa) => {
      koa.use((ctx) => {
        ctx.body = {
          outcome: ctx.meshTrace?.outcome.outcome,
          spanId: ctx.meshTrace?.span.spanContext().spanId,
          active: trace.getSpan(context.active()) === ctx.meshTrace?.span,
        };
      });
    });
    const seen = (await (await fetch(`${base}/x`, { headers: { traceparent: traceparent() } })).json()) as unknown;
    const span = await onlyServerSpan(TRACE_ID);
    expect(seen).toEqual({ outcome: 'continued', spanId: span.spanContext().spanId, active: true });
  });

  test.each([
    ['answered', '/users/7', false, 200],
    ['thrown error', '/boom', false, 500],
    ['client abort', '/slow', true, undefined],
  ] as const)('the span ends exactly once: %s', async (name, path, abort, statusCode) => {
    const ends: string[] = [];
    let handlerDone!: () => void;
    const done = new Promise<void>((resolve) => (handlerDone = resolve));
    let arrived!: () => void;
    const inHandler = new Promise<void>((resolve) => (arrived = resolve));
    const base = await app(
      (koa) => {
        const router = new Router();
        router.get('/users/:id', (ctx) => {
          ctx.body = 'ok';
        });
        router.get('/boom', () => {
          throw new Error('boom');
        });
        router.get('/slow', async (ctx) => {
          arrived();
          await new Promise((resolve) => ctx.res.once('close', resolve));
          await delay(10);
          ctx.body = 'too late';
        });
        koa.use(async (_ctx, next) => {
          try {
            await next();
          } finally {
            setImmediate(handlerDone);
          }
        });
        koa.use(router.routes());
      },
      { responseHook: (span) => void ends.push(span.spanContext().traceId) },
    );
    const traceId = newTraceId();
    const controller = new AbortController();
    const answer = fetch(`${base}${path}`, {
      headers: { traceparent: traceparent(traceId) },
      signal: controller.signal,
    }).then(
      (r) => r.text(),
      (err: Error) => err.name,
    );
    if (abort) {
      await inHandler;
      controller.abort();
    }
    await answer;
    await done;
    const spans = await ended(traceId);
    expect({
      name,
      spans: spans.length,
      ends: ends.filter((id) => id === traceId).length,
      statusCode: spans[0]?.attributes['http.response.status_code'],
      aborted: spans[0]?.events.some((e) => e.name === 'meshtrace.client_aborted'),
      opsOnEndedSpans: diagLines.filter((l) => l.includes('ended Span') || l.includes('end() on a span once')),
    }).toEqual({ name, spans: 1, ends: 1, statusCode, aborted: abort, opsOnEndedSpans: [] });
  });

  test('an active span from another HTTP instrumentation is reused and enriched, never a second SERVER span', async () => {
    const koa = new KoaApp();
    koa.silent = true;
    koa.use(meshTrace());
    const router = new Router();
    router.get('/users/:id', (ctx) => {
      ctx.body = observe();
    });
    koa.use(router.routes());
    const callback = koa.callback();
    const outerSpans: string[] = [];
    const base = await serve((req, res) => {
      // What an HTTP instrumentation does before the app runs: extract, start the SERVER span, make it active.
      const parent = propagation.extract(ROOT_CONTEXT, req.headers);
      const outer = trace.getTracer('other-http-instrumentation').startSpan('GET', { kind: SpanKind.SERVER }, parent);
      outerSpans.push(outer.spanContext().spanId);
      res.once('close', () => setImmediate(() => outer.end()));
      context.with(trace.setSpan(parent, outer), callback, undefined, req, res);
    });
    const before = await tracing.outcomeCounts();
    const seen = (await (
      await fetch(`${base}/users/7`, { headers: { traceparent: traceparent() } })
    ).json()) as Observed;
    const spans = await ended(TRACE_ID);
    const after = await tracing.outcomeCounts();
    const span = spans[0];
    expect({
      spans: spans.length,
      serverSpans: spans.filter((s) => s.kind === SpanKind.SERVER).length,
      reused: span?.spanContext().spanId === outerSpans[0],
      handlerSpan: seen.spanId === outerSpans[0],
      name: span?.name,
      route: span?.attributes['http.route'],
      statusCode: span?.attributes['http.response.status_code'],
      outcome: span?.attributes['meshtrace.propagation.outcome'],
      counted: (after.continued ?? 0) - (before.continued ?? 0),
    }).toEqual({
      spans: 1,
      serverSpans: 1,
      reused: true,
      handlerSpan: true,
      name: 'GET /users/:id',
      route: '/users/:id',
      statusCode: 200,
      outcome: 'continued',
      counted: 1,
    });
  });

  test('meshTrace() used twice on one request still makes one span', async () => {
    const inner: Middleware = meshTrace();
    const base = await app((koa) => {
      koa.use(inner);
      koa.use((ctx) => {
        ctx.body = observe();
      });
    });
    const seen = (await (await fetch(`${base}/twice`, { headers: { traceparent: traceparent() } })).json()) as Observed;
    const spans = await ended(TRACE_ID);
    expect({
      spans: spans.length,
      handlerSpan: seen.spanId,
      opsOnEndedSpans: diagLines.filter((l) => l.includes('ended Span')),
    }).toEqual({
      spans: 1,
      handlerSpan: spans[0]?.spanContext().spanId,
      opsOnEndedSpans: [],
    });
  });
});
