import { ROOT_CONTEXT, SpanKind, context, trace } from '@opentelemetry/api';
import { fastify } from 'fastify';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { fastify as fastify4 } from 'fastify4';
import { EventEmitter } from 'node:events';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { PARENT_ID, setupTestTracing } from '@meshtrace/testkit';
import { meshTrace } from '@meshtrace/fastify';

const tracing = setupTestTracing();
afterAll(() => tracing.shutdown());

// Both majors run every test; Fastify 4's types differ, its behaviour is what is under test.
const MAJORS = [
  ['fastify 5', fastify],
  ['fastify 4', fastify4 as unknown as typeof fastify],
] as const;

const HOOKS = [
  'onRequest',
  'preParsing',
  'preValidation',
  'preHandler',
  'preSerialization',
  'onError',
  'onSend',
  'onResponse',
] as const;
const STYLES = ['async', 'async, after await', 'callback', 'callback, after setImmediate'];

const randomTraceId = () =>
  Array.from({ length: 32 }, () => '0123456789abcdef'[Math.floor(Math.random() * 16)]).join('');
const traceparent = (traceId: string) => `00-${traceId}-${PARENT_ID}-01`;
const activeSpanId = () => trace.getActiveSpan()?.spanContext().spanId ?? 'no active span';
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** What each request saw, by its trace id, then by where it looked. */
const seen = new Map<string, Record<string, string>>();
function note(request: FastifyRequest, where: string): void {
  const traceId = String(request.headers.traceparent).slice(3, 35);
  const record = seen.get(traceId) ?? {};
  record[where] = activeSpanId();
  seen.set(traceId, record);
}

async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !done(); i++) await sleep(5);
}

/** The one SERVER span of a trace, once it has ended. */
async function serverSpanId(traceId: string): Promise<string> {
  const find = () => tracing.spans().filter((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.SERVER);
  await until(() => find().length > 0);
  const spans = find();
  return spans.length === 1 ? spans[0].spanContext().spanId : `${spans.length} server spans`;
}

/** POSTs `body` in two chunks 20 ms apart, so parsing resumes from later socket reads. */
function postInChunks(
  url: string,
  traceId: string,
  contentType: string,
  body: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      url,
      {
        method: 'POST',
        headers: {
          traceparent: traceparent(traceId),
          'content-type': contentType,
          'content-length': Buffer.byteLength(body),
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('error', reject);
    const half = Math.floor(body.length / 2);
    req.write(body.slice(0, half));
    setTimeout(() => req.end(body.slice(half)), 20);
  });
}

/**
 * An async and a callback-style hook for every lifecycle stage, each noting the active span before and after it waits.
 */
function observeEveryHook(app: FastifyInstance): void {
  const both = (hook: string) => ({
    async: async (request: FastifyRequest) => {
      note(request, `${hook} async`);
      await sleep(1);
      note(request, `${hook} async, after await`);
    },
    callback: (request: FastifyRequest, next: () => void) => {
      note(request, `${hook} callback`);
      setImmediate(() => {
        note(request, `${hook} callback, after setImmediate`);
        next();
      });
    },
  });
  const onRequest = both('onRequest');
  app.addHook('onRequest', onRequest.async);
  app.addHook('onRequest', (request, _reply, done) => onRequest.callback(request, done));
  const preParsing = both('preParsing');
  app.addHook('preParsing', async (request, _reply, payload) => (await preParsing.async(request), payload));
  app.addHook('preParsing', (request, _reply, payload, done) =>
    preParsing.callback(request, () => done(null, payload)),
  );
  const preValidation = both('preValidation');
  app.addHook('preValidation', preValidation.async);
  app.addHook('preValidation', (request, _reply, done) => preValidation.callback(request, done));
  const preHandler = both('preHandler');
  app.addHook('preHandler', preHandler.async);
  app.addHook('preHandler', (request, _reply, done) => preHandler.callback(request, done));
  const preSerialization = both('preSerialization');
  app.addHook('preSerialization', async (request, _reply, payload) => (await preSerialization.async(request), payload));
  app.addHook('preSerialization', (request, _reply, payload, done) =>
    preSerialization.callback(request, () => done(null, payload)),
  );
  const onError = both('onError');
  app.addHook('onError', async (request) => onError.async(request));
  app.addHook('onError', (request, _reply, _error, done) => onError.callback(request, done));
  const onSend = both('onSend');
  app.addHook('onSend', async (request, _reply, payload) => (await onSend.async(request), payload));
  app.addHook('onSend', (request, _reply, payload, done) => onSend.callback(request, () => done(null, payload)));
  const onResponse = both('onResponse');
  app.addHook('onResponse', onResponse.async);
  app.addHook('onResponse', (request, _reply, done) => onResponse.callback(request, done));
}

describe.each(MAJORS)('%s', (_major, Fastify) => {
  let app: FastifyInstance;
  let base: string;
  let port: number;

  beforeAll(async () => {
    app = Fastify();
    await app.register(meshTrace);
    // A parser of its own shows the body is parsed in the request's context, not just that the context comes back
    // after.
    app.addContentTypeParser('application/vnd.meshtrace+json', { parseAs: 'string' }, (request, body, done) => {
      note(request, 'body parser');
      done(null, JSON.parse(body as string));
    });
    await app.register(async (hooked) => {
      observeEveryHook(hooked);
      hooked.post('/hooks', async (request) => {
        note(request, 'handler');
        await sleep(1);
        note(request, 'handler, after await');
        return { body: request.body };
      });
      hooked.post('/hooks/error', async (request) => {
        note(request, 'handler');
        throw new Error('handler failed');
      });
    });

    const emitter = new EventEmitter();
    app.get('/work', async (request) => {
      note(request, 'handler');
      await sleep(1);
      note(request, 'after await');
      await new Promise<void>((resolve) => setTimeout(() => (note(request, 'in setTimeout'), resolve()), 1));
      await new Promise<void>((resolve) => setImmediate(() => (note(request, 'in setImmediate'), resolve())));
      await new Promise<void>((resolve) => process.nextTick(() => (note(request, 'in process.nextTick'), resolve())));
      await Promise.resolve()
        .then(() => sleep(1))
        .then(() => note(request, 'in a promise chain'));
      await new Promise<void>((resolve) => {
        emitter.once(request.id, () => (note(request, 'in an EventEmitter listener'), resolve()));
        setTimeout(() => emitter.emit(request.id), 1);
      });
      for await (const chunk of Readable.from(['a', 'b'])) note(request, `reading a stream (${String(chunk)})`);
      return 'done';
    });

    // A callback-style hook that resumes the lifecycle from outside the request's context, as a pooled client's
    // callback does.
    app.get(
      '/lost-in-a-hook',
      {
        preValidation: (_request, _reply, done) => {
          context.with(ROOT_CONTEXT, () => setTimeout(done, 1));
        },
        preHandler: async (request) => note(request, 'preHandler after a hook lost the context'),
      },
      async (request) => (note(request, 'handler after a hook lost the context'), 'ok'),
    );

    // Every hook of these routes, and the handler, goes on from outside the request's context.
    const fromOutside = (next: () => void): void => void context.with(ROOT_CONTEXT, () => setImmediate(next));
    app.post(
      '/lost-in-every-stage',
      {
        onRequest: (request, _reply, done) => (note(request, 'onRequest'), fromOutside(done)),
        preParsing: (request, _reply, payload, done) => (
          note(request, 'preParsing'), fromOutside(() => done(null, payload))
        ),
        preValidation: (request, _reply, done) => (note(request, 'preValidation'), fromOutside(done)),
        preHandler: (request, _reply, done) => (note(request, 'preHandler'), fromOutside(done)),
        preSerialization: (request, _reply, payload, done) => (
          note(request, 'preSerialization'), fromOutside(() => done(null, payload))
        ),
        onSend: (request, _reply, payload, done) => (note(request, 'onSend'), fromOutside(() => done(null, payload))),
      },
      (request, reply) => {
        note(request, 'handler');
        fromOutside(() => reply.send({ body: request.body }));
      },
    );
    app.post(
      '/lost-before-an-error',
      {
        preHandler: (_request, _reply, done) => fromOutside(() => done(new Error('failed outside'))),
        onError: (request, _reply, _error, done) => (note(request, 'onError'), done()),
      },
      async () => 'unreachable',
    );

    // A custom error handler, after an onError hook that goes on from outside the context.
    await app.register(async (scoped) => {
      scoped.setErrorHandler((error: Error, request, reply) => {
        note(request, 'error handler');
        void reply.code(503).send({ failed: error.message });
      });
      scoped.addHook('onError', (request, _reply, _error, done) => (note(request, 'onError'), fromOutside(done)));
      scoped.post('/lost-before-the-error-handler', async () => {
        throw new Error('handler failed');
      });
    });

    // The not-found handler, after its own preHandler went on from outside the context.
    app.setNotFoundHandler(
      { preHandler: (request, _reply, done) => (note(request, 'not-found preHandler'), fromOutside(done)) },
      (request, reply) => {
        note(request, 'not-found handler');
        void reply.code(404).send({ missing: request.url });
      },
    );

    app.addHook('onResponse', async (request) => note(request, 'onResponse'));
    app.post('/pipelined', async (request) => {
      await sleep(30);
      note(request, 'handler');
      return 'slow';
    });
    app.get('/pipelined', async (request) => (note(request, 'handler'), 'fast'));

    app.get(
      '/concurrent',
      { preHandler: async (request) => (await sleep(Math.random() * 5), note(request, 'preHandler')) },
      async (request) => {
        await new Promise((resolve) => setImmediate(resolve));
        await sleep(Math.random() * 5);
        note(request, 'handler');
        return 'ok';
      },
    );

    base = await app.listen({ port: 0, host: '127.0.0.1' });
    port = Number(new URL(base).port);
  });
  afterAll(() => app.close());

  const REQUESTS = [
    {
      name: 'JSON body, default parser',
      path: '/hooks',
      contentType: 'application/json',
      hooks: HOOKS.filter((h) => h !== 'onError'),
      also: ['handler', 'handler, after await'],
      status: 200,
    },
    {
      name: 'JSON body, custom parser',
      path: '/hooks',
      contentType: 'application/vnd.meshtrace+json',
      hooks: HOOKS.filter((h) => h !== 'onError'),
      also: ['body parser', 'handler', 'handler, after await'],
      status: 200,
    },
    {
      name: 'handler throws',
      path: '/hooks/error',
      contentType: 'application/json',
      // Fastify serializes an error without preSerialization.
      hooks: HOOKS.filter((h) => h !== 'preSerialization'),
      also: ['handler'],
      status: 500,
    },
  ];
  test.each(REQUESTS.map((r) => [r.name, r] as const))(
    'the request context is active in every hook and the handler: %s',
    async (_name, r) => {
      const traceId = randomTraceId();
      const res = await postInChunks(base + r.path, traceId, r.contentType, '{"user":"ada","tags":["a","b"]}');
      expect(res.status).toBe(r.status);
      if (r.status === 200) expect(JSON.parse(res.body)).toEqual({ body: { user: 'ada', tags: ['a', 'b'] } });
      await until(() => seen.get(traceId)?.['onResponse callback, after setImmediate'] !== undefined);
      const spanId = await serverSpanId(traceId);
      const expected: Record<string, string> = {};
      for (const hook of r.hooks) for (const style of STYLES) expected[`${hook} ${style}`] = spanId;
      for (const where of r.also) expected[where] = spanId;
      expected.onResponse = spanId;
      expect(seen.get(traceId)).toEqual(expected);
    },
  );

  test('the context survives await, timers, promise chains, EventEmitters and streams in a handler', async () => {
    const traceId = randomTraceId();
    const res = await fetch(`${base}/work`, { headers: { traceparent: traceparent(traceId) } });
    expect(await res.text()).toBe('done');
    const spanId = await serverSpanId(traceId);
    await until(() => seen.get(traceId)?.onResponse !== undefined);
    const places = [
      'handler',
      'after await',
      'in setTimeout',
      'in setImmediate',
      'in process.nextTick',
      'in a promise chain',
      'in an EventEmitter listener',
    ];
    places.push('reading a stream (a)', 'reading a stream (b)', 'onResponse');
    expect(seen.get(traceId)).toEqual(Object.fromEntries(places.map((p) => [p, spanId])));
  });

  test('the next stage gets the context back after a hook resumed from outside it', async () => {
    const traceId = randomTraceId();
    const res = await fetch(`${base}/lost-in-a-hook`, { headers: { traceparent: traceparent(traceId) } });
    expect(await res.text()).toBe('ok');
    const spanId = await serverSpanId(traceId);
    await until(() => seen.get(traceId)?.onResponse !== undefined);
    expect(seen.get(traceId)).toEqual({
      'preHandler after a hook lost the context': spanId,
      'handler after a hook lost the context': spanId,
      onResponse: spanId,
    });
  });

  const LOST = [
    {
      path: '/lost-in-every-stage',
      status: 200,
      stages: [
        'onRequest',
        'preParsing',
        'preValidation',
        'preHandler',
        'handler',
        'preSerialization',
        'onSend',
        'onResponse',
      ],
    },
    { path: '/lost-before-an-error', status: 500, stages: ['onError', 'onResponse'] },
    { path: '/lost-before-the-error-handler', status: 503, stages: ['onError', 'error handler', 'onResponse'] },
    { path: '/no/such/route', status: 404, stages: ['not-found preHandler', 'not-found handler', 'onResponse'] },
  ];
  test.each(LOST.map((l) => [l.path, l] as const))(
    'each stage starts in the request context when the last one went on from outside it: %s',
    async (_path, l) => {
      const traceId = randomTraceId();
      const res = await postInChunks(base + l.path, traceId, 'application/json', '{"user":"ada"}');
      expect(res.status).toBe(l.status);
      // The body and the reply come through the hooks that re-enter the context.
      if (l.status === 200) expect(JSON.parse(res.body)).toEqual({ body: { user: 'ada' } });
      const spanId = await serverSpanId(traceId);
      await until(() => seen.get(traceId)?.onResponse !== undefined);
      expect(seen.get(traceId)).toEqual(Object.fromEntries(l.stages.map((s) => [s, spanId])));
    },
  );

  test('an async hook that also takes done is still refused by Fastify', async () => {
    const other = Fastify();
    await other.register(meshTrace);
    expect(() =>
      other.addHook('preHandler', (async (_request: unknown, _reply: unknown, _done: unknown) => undefined) as never),
    ).toThrow(expect.objectContaining({ code: 'FST_ERR_HOOK_INVALID_ASYNC_HANDLER' }));
    await other.close();
  });

  test('pipelined requests on one connection each see their own context, onResponse included', async () => {
    const ids = [randomTraceId(), randomTraceId(), randomTraceId()];
    const head = (method: string, traceId: string, last: boolean) =>
      `${method} /pipelined HTTP/1.1\r\nHost: 127.0.0.1\r\ntraceparent: ${traceparent(traceId)}\r\n${last ? 'Connection: close\r\n' : ''}`;
    const socket = connect(port, '127.0.0.1');
    socket.resume();
    // The slow first response holds the next two back, so their 'finish' fires from the first one's write.
    socket.write(
      `${head('POST', ids[0], false)}Content-Length: 0\r\n\r\n${head('GET', ids[1], false)}\r\n${head('GET', ids[2], true)}\r\n`,
    );
    await new Promise((resolve) => socket.on('close', resolve));
    for (const traceId of ids) {
      const spanId = await serverSpanId(traceId);
      await until(() => seen.get(traceId)?.onResponse !== undefined);
      expect({ traceId, seen: seen.get(traceId) }).toEqual({ traceId, seen: { handler: spanId, onResponse: spanId } });
    }
  });

  test('500 concurrent requests with distinct trace ids each see only their own', async () => {
    const ids = Array.from({ length: 500 }, randomTraceId);
    const statuses = await Promise.all(
      ids.map(
        async (traceId) =>
          (await fetch(`${base}/concurrent`, { headers: { traceparent: traceparent(traceId) } })).status,
      ),
    );
    expect(statuses.every((s) => s === 200)).toBe(true);
    await until(() => ids.every((id) => seen.get(id)?.onResponse !== undefined));
    const byTrace = new Map(
      tracing
        .spans()
        .filter((s) => s.kind === SpanKind.SERVER)
        .map((s) => [s.spanContext().traceId, s]),
    );
    const wrong = ids.flatMap((traceId) => {
      const span = byTrace.get(traceId);
      const spanId = span?.spanContext().spanId;
      const want = { preHandler: spanId, handler: spanId, onResponse: spanId };
      const problems: string[] = [];
      if (span === undefined || span.parentSpanContext?.spanId !== PARENT_ID)
        problems.push(`${traceId}: no server span continuing the caller`);
      if (JSON.stringify(seen.get(traceId)) !== JSON.stringify(want))
        problems.push(`${traceId}: saw ${JSON.stringify(seen.get(traceId))}, want ${JSON.stringify(want)}`);
      return problems;
    });
    expect(wrong).toEqual([]);
  });
});
