import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DiagLogLevel, ROOT_CONTEXT, SpanKind, context, diag, propagation, trace } from '@opentelemetry/api';
import type { TextMapPropagator } from '@opentelemetry/api';
import { RPCType, setRPCMetadata } from '@opentelemetry/core';
import { MeshPropagator } from '@meshtrace/core';
import { createServerTracing, warner } from '@meshtrace/core/adapter';
import { usePublicApiOnly } from '../internal/otel-internals';
import type { MeshTraceOptions } from '@meshtrace/core';
import { observe, setupTestTracing } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';

const T = '0af7651916cd43dd8448eb211c80319c';
const P = 'b7ad6b7169203331';
const VALID = `00-${T}-${P}-01`;
const tracing = setupTestTracing();
const servers: Server[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  await tracing.shutdown();
});

/** A node:http server traced with `options`, answering with what its handler observed. */
async function serve(options: MeshTraceOptions): Promise<string> {
  const tracing = createServerTracing<IncomingMessage, ServerResponse>(options, { name: '@meshtrace/core-test' });
  const server = createServer((req, res) => {
    const t = tracing.start(req, res);
    context.with(t.context, () => {
      const bag = propagation.getBaggage(context.active());
      // A handler that changes baggage makes a new context; it must not touch anyone else's.
      const changed = propagation.setBaggage(
        context.active(),
        (bag ?? propagation.createBaggage()).setEntry('changed', { value: 'yes' }),
      );
      context.with(changed, () => undefined);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(observe()));
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function call(base: string, headers: Record<string, string>) {
  tracing.reset();
  const before = await tracing.outcomeCounts();
  const res = await fetch(base, { headers });
  const seen = (await res.json()) as Observed;
  await new Promise((r) => setImmediate(r));
  const span = tracing.spans().find((s) => s.spanContext().spanId === seen.spanId);
  const after = await tracing.outcomeCounts();
  const counted = Object.keys(after).filter((k) => after[k] !== (before[k] ?? 0));
  return { res, seen, span, counted };
}

describe('inbound trust', () => {
  test("'restart' starts a new trace linked to the caller's, keeping only allowed baggage", async () => {
    const base = await serve({ inbound: 'restart', baggageAllowList: ['tenant'] });
    const { seen, span, counted } = await call(base, { traceparent: VALID, baggage: 'tenant=acme,session=secret' });
    expect(seen.traceId).not.toBe(T);
    expect(span?.parentSpanContext).toBeUndefined();
    expect(span?.links.map((l) => [l.context.traceId, l.context.spanId])).toEqual([[T, P]]);
    expect(seen.baggage).toEqual({ tenant: 'acme' });
    expect(span?.attributes['meshtrace.propagation.outcome']).toBe('restarted');
    expect(counted).toEqual(['restarted']);
    // Nobody outside decides sampling: a caller's "not sampled" does not stop this trace.
    const unsampled = await call(base, { traceparent: `00-${T}-${P}-00` });
    expect(unsampled.span).toBeDefined();
  });

  test("'restart' with nothing inbound makes no link", async () => {
    const base = await serve({ inbound: 'restart' });
    const { span, seen } = await call(base, { baggage: 'tenant=acme' });
    expect(span?.links).toEqual([]);
    expect(seen.baggage).toEqual({});
  });

  test("'ignore' reads no inbound trace context at all", async () => {
    const base = await serve({ inbound: 'ignore' });
    const { seen, span, counted } = await call(base, { traceparent: VALID, baggage: 'a=1' });
    expect(seen.traceId).not.toBe(T);
    expect(span?.links).toEqual([]);
    expect(seen.baggage).toEqual({});
    expect(counted).toEqual(['ignored']);
  });
});

describe('B3 beside W3C', () => {
  test('a disagreeing B3 context becomes a link on the server span; W3C wins', async () => {
    const base = await serve({});
    const b3Trace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const { seen, span } = await call(base, {
      traceparent: VALID,
      'x-b3-traceid': b3Trace,
      'x-b3-spanid': '00f067aa0ba902b7',
      'x-b3-sampled': '1',
    });
    expect(seen.traceId).toBe(T);
    expect(span?.links.map((l) => [l.context.traceId, l.attributes?.['meshtrace.link.format']])).toEqual([
      [b3Trace, 'b3'],
    ]);
    expect(span?.attributes['meshtrace.propagation.format']).toBe('w3c');
  });

  test('B3 alone is continued, and the outcome says so', async () => {
    const base = await serve({});
    const { seen, span } = await call(base, { b3: `${T}-${P}-1` });
    expect(seen.traceId).toBe(T);
    expect(span?.parentSpanContext?.spanId).toBe(P);
    expect(span?.attributes['meshtrace.propagation.format']).toBe('b3');
  });
});

test('allow-listed baggage keys are copied onto the span, and only those', async () => {
  const base = await serve({ baggageAttributes: ['tenant', 'tier'] });
  const { span } = await call(base, { traceparent: VALID, baggage: 'tenant=acme,user=alice' });
  expect(span?.attributes['baggage.tenant']).toBe('acme');
  expect(Object.keys(span?.attributes ?? {}).filter((k) => k.startsWith('baggage.'))).toEqual(['baggage.tenant']);
});

test('a handler changing baggage never changes what another request sees', async () => {
  const base = await serve({});
  const calls = await Promise.all(
    Array.from({ length: 20 }, (_, i) => call(base, { traceparent: VALID, baggage: `n=${i}` })),
  );
  for (const [i, c] of calls.entries()) expect(c.seen.baggage).toEqual({ n: String(i) });
});

test('traceresponse names the server span (W3C Level 2)', async () => {
  const base = await serve({ traceResponse: true });
  const { res, seen } = await call(base, { traceparent: `00-${T}-${P}-03` });
  expect(res.headers.get('traceresponse')).toBe(`00-${T}-${seen.spanId}-03`);
  const off = await call(await serve({}), { traceparent: VALID });
  expect(off.res.headers.get('traceresponse')).toBeNull();
});

describe('server-timing trace metric', () => {
  /** A server whose handler sets `server-timing` the way `how` says, traced with `options`. */
  async function timed(options: MeshTraceOptions, how: (res: ServerResponse) => void): Promise<string> {
    const t = createServerTracing<IncomingMessage, ServerResponse>(options, { name: '@meshtrace/x' });
    const server = createServer((req, res) => {
      const rt = t.start(req, res);
      context.with(rt.context, () => {
        res.setHeader('x-span', rt.span.spanContext().spanId);
        how(res);
      });
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  const cases: Array<[string, (res: ServerResponse) => void, string[]]> = [
    ['alone', (res) => res.end('ok'), []],
    ['after setHeader', (res) => (res.setHeader('Server-Timing', 'db;dur=53'), res.end('ok')), ['db;dur=53']],
    [
      'after setHeader with a list',
      (res) => (res.setHeader('server-timing', ['db;dur=53', 'cache;desc="hit"']), res.end('ok')),
      ['db;dur=53', 'cache;desc="hit"'],
    ],
    [
      'after setHeader, then writeHead without headers',
      (res) => (res.setHeader('server-timing', 'db;dur=53'), res.writeHead(200), res.end('ok')),
      ['db;dur=53'],
    ],
    [
      'after writeHead headers (as Fastify sends them)',
      (res) => (res.writeHead(200, { 'Server-Timing': 'app;dur=47.2', 'content-type': 'text/plain' }), res.end('ok')),
      ['app;dur=47.2'],
    ],
    [
      'after writeHead headers replacing a setHeader value',
      (res) => (
        res.setHeader('server-timing', 'old;dur=1'),
        res.writeHead(200, 'OK', { 'server-timing': 'app;dur=2' }),
        res.end('ok')
      ),
      ['app;dur=2'],
    ],
    [
      'after writeHead raw headers',
      (res) => (res.writeHead(200, ['server-timing', 'db;dur=5', 'content-type', 'text/plain']), res.end('ok')),
      ['db;dur=5'],
    ],
    [
      'after flushHeaders',
      (res) => (res.setHeader('server-timing', 'db;dur=53'), res.flushHeaders(), res.end('ok')),
      ['db;dur=53'],
    ],
  ];
  test.each(cases)('appended %s, never replacing it; the random flag kept', async (name, how, own) => {
    const base = await timed({ serverTiming: true }, how);
    const res = await fetch(base, { headers: { traceparent: `00-${T}-${P}-03` } });
    await res.text();
    const metric = `trace;desc=00-${T}-${res.headers.get('x-span')}-03`;
    // fetch folds several field lines into one, comma-separated, as the browser's parser reads them.
    expect({ name, timing: res.headers.get('server-timing')?.split(/,\s*/) }).toEqual({
      name,
      timing: [...own, metric],
    });
  });

  test('a fresh root says its trace id is random (Level 2 flag 0x02); traceresponse says the same', async () => {
    const base = await timed({ serverTiming: true, traceResponse: true }, (res) => res.end('ok'));
    const res = await fetch(base);
    const [, traceId, spanId, flags] = (res.headers.get('server-timing') ?? '').replace('trace;desc=', '').split('-');
    expect([traceId.length, spanId, flags]).toEqual([32, res.headers.get('x-span'), '03']);
    expect(res.headers.get('traceresponse')).toBe(`00-${traceId}-${spanId}-03`);
  });

  test('off by default', async () => {
    const res = await fetch(await timed({}, (res) => (res.setHeader('server-timing', 'db;dur=1'), res.end('ok'))), {
      headers: { traceparent: VALID },
    });
    expect(res.headers.get('server-timing')).toBe('db;dur=1');
  });
});

describe('proxy awareness', () => {
  const cases: Array<[string, Record<string, string>, string | undefined]> = [
    ['envoy', { 'x-envoy-expected-rq-timeout-ms': '15000', 'x-request-id': 'r-1' }, 'envoy'],
    ['istio', { 'x-envoy-peer-metadata-id': 'sidecar~10.0.0.1', 'x-forwarded-client-cert': 'By=spiffe://x' }, 'istio'],
    ['envoy with mTLS only', { 'x-forwarded-client-cert': 'By=spiffe://x' }, 'envoy'],
    ['linkerd', { 'l5d-dst-canonical': 'svc.ns.svc.cluster.local:80' }, 'linkerd'],
    ['none', {}, undefined],
  ];
  test.each(cases)('%s', async (_name, headers, proxy) => {
    const base = await serve({});
    const { span } = await call(base, { traceparent: VALID, ...headers });
    expect(span?.attributes['meshtrace.proxy']).toBe(proxy);
    expect(span?.attributes['http.request.header.x-request-id']).toEqual(
      headers['x-request-id'] ? [headers['x-request-id']] : undefined,
    );
  });

  test('proxyAttributes: false records neither', async () => {
    const { span } = await call(await serve({ proxyAttributes: false }), {
      'x-envoy-attempt-count': '1',
      'x-request-id': 'r',
    });
    expect(span?.attributes['meshtrace.proxy']).toBeUndefined();
    expect(span?.attributes['http.request.header.x-request-id']).toBeUndefined();
  });
});

test('the first request warns when propagation is broken', async () => {
  const warnings: string[] = [];
  diag.setLogger(
    { warn: (m: string) => warnings.push(m), error: () => {}, info: () => {}, debug: () => {}, verbose: () => {} },
    DiagLogLevel.WARN,
  );
  const base = await serve({});
  propagation.disable();
  try {
    await call(base, {});
    await call(base, {});
    expect(warnings.filter((w) => w.includes('does not read traceparent'))).toHaveLength(1);
  } finally {
    setupTestTracing();
    diag.disable();
  }
});

test('ignore: exact paths and patterns get no span; a predicate that throws is warned about and the request traced', async () => {
  const warnings: string[] = [];
  diag.setLogger(
    { warn: (m: string) => warnings.push(m), error: () => {}, info: () => {}, debug: () => {}, verbose: () => {} },
    DiagLogLevel.WARN,
  );
  try {
    const listed = await serve({ ignore: ['/healthz', /^\/internal\//] });
    for (const [path, traced] of [
      ['/healthz', false],
      ['/healthz?probe=1', false],
      ['/internal/stats', false],
      ['/users', true],
    ] as const) {
      const { seen, span } = await call(listed + path, { traceparent: VALID });
      // Ignored or not, the handler runs in the caller's trace.
      expect({ path, traceId: seen.traceId, traced: span !== undefined }).toEqual({ path, traceId: T, traced });
    }
    const throwing = await serve({
      ignore: () => {
        throw new Error('predicate broke');
      },
    });
    const first = await call(`${throwing}/a`, { traceparent: VALID });
    const second = await call(`${throwing}/b`, { traceparent: VALID });
    expect([first.span !== undefined, second.span !== undefined]).toEqual([true, true]);
    expect(warnings.filter((w) => w.includes('ignore predicate threw'))).toEqual([
      '@meshtrace/core-test: the ignore predicate threw, so the request is traced: predicate broke',
    ]);
  } finally {
    diag.disable();
  }
});

const bad: Array<[string, unknown]> = [
  ['inbound', { inbound: 'trust' }],
  ['baggageAllowList', { baggageAllowList: 'tenant' }],
  ['baggageAttributes', { baggageAttributes: [''] }],
  ['traceResponse', { traceResponse: 'yes' }],
  ['serverTiming', { serverTiming: 1 }],
  ['proxyAttributes', { proxyAttributes: 1 }],
  ['ignore', { ignore: [42] }],
  ['requestHook', { requestHook: 'x' }],
  ['tracerProvider', { tracerProvider: {} }],
];
test.each(bad)('bad option %s fails at setup', (option, options) => {
  expect(() => createServerTracing(options as never, { name: '@meshtrace/x' })).toThrow(
    new RegExp(`^@meshtrace/x: option "${option}"`),
  );
  expect(() => createServerTracing(options as never, { name: '@meshtrace/x' })).toThrow(TypeError);
});

test('a span already active is enriched, not duplicated', async () => {
  const tracer = trace.getTracer('other-instrumentation');
  const t = createServerTracing<IncomingMessage, ServerResponse>({}, { name: '@meshtrace/x' });
  const server = createServer((req, res) => {
    const outer = tracer.startSpan('GET outer', { kind: 1 });
    context.with(trace.setSpan(context.active(), outer), () => {
      const rt = t.start(req, res);
      context.with(rt.context, () => res.end(JSON.stringify(observe())));
      res.on('finish', () => outer.end());
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { seen } = await call(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, { traceparent: 'garbage' });
  const serverSpans = tracing.spans().filter((s) => s.kind === 1 && s.spanContext().traceId === seen.traceId);
  expect(serverSpans).toHaveLength(1);
  expect(serverSpans[0].name).toBe('GET outer');
  expect(serverSpans[0].attributes['meshtrace.propagation.outcome']).toBe('malformed');
});

test("responseHook runs in the request's context even when the response ends from outside it", async () => {
  const hooked: string[] = [];
  const t = createServerTracing<IncomingMessage, ServerResponse>(
    { responseHook: () => void hooked.push(trace.getActiveSpan()?.spanContext().spanId ?? 'none') },
    { name: '@meshtrace/x' },
  );
  const server = createServer((req, res) => {
    const rt = t.start(req, res);
    const spanId = rt.span.spanContext().spanId;
    // A pooled client's callback, say: the response is written from the root context.
    context.with(ROOT_CONTEXT, () => setImmediate(() => res.end(JSON.stringify({ spanId }))));
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, {
    headers: { traceparent: VALID },
  });
  const { spanId } = (await res.json()) as { spanId: string };
  await new Promise((r) => setImmediate(r));
  expect(hooked).toEqual([spanId]);
});

test("the server span's instrumentation scope names the adapter that made it", async () => {
  const { span } = await call(await serve({}), { traceparent: VALID });
  expect(span?.instrumentationScope.name).toBe('@meshtrace/core-test');
});

describe('beside an HTTP instrumentation that made the SERVER span', () => {
  /**
   * What @opentelemetry/instrumentation-http does per request: extract with the global propagator,
   * start the SERVER span, record it in the RPC metadata; then an Express/Koa/Fastify
   * instrumentation's INTERNAL middleware span is active when meshtrace's middleware runs.
   */
  async function instrumented(
    options: MeshTraceOptions = {},
  ): Promise<{ base: string; rpc: Array<{ route?: string }> }> {
    const tracer = trace.getTracer('@opentelemetry/instrumentation-http');
    const t = createServerTracing<IncomingMessage, ServerResponse>(options, {
      name: '@meshtrace/x',
      route: () => '/orders/:id',
    });
    const rpc: Array<{ route?: string }> = [];
    const server = createServer((req, res) => {
      const extracted = propagation.extract(ROOT_CONTEXT, req.headers);
      const span = tracer.startSpan('GET', { kind: SpanKind.SERVER }, extracted);
      const meta: { type: RPCType.HTTP; span: typeof span; route?: string } = { type: RPCType.HTTP, span };
      rpc.push(meta);
      const requestContext = setRPCMetadata(trace.setSpan(extracted, span), meta);
      res.on('finish', () => span.end());
      const middleware = tracer.startSpan('middleware - query', { kind: SpanKind.INTERNAL }, requestContext);
      context.with(trace.setSpan(requestContext, middleware), () => {
        const rt = t.start(req, res);
        middleware.end();
        context.with(rt.context, () => res.end(JSON.stringify(observe())));
      });
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, rpc };
  }

  test('its span is found through the RPC metadata while an INTERNAL span is active: enriched and named, not duplicated, counted once', async () => {
    const { base, rpc } = await instrumented();
    const { seen, counted } = await call(base, { traceparent: VALID });
    const serverSpans = tracing.spans().filter((s) => s.kind === SpanKind.SERVER);
    expect(serverSpans).toHaveLength(1);
    expect(serverSpans[0].instrumentationScope.name).toBe('@opentelemetry/instrumentation-http');
    expect(serverSpans[0].spanContext().traceId).toBe(T);
    expect(serverSpans[0].attributes['meshtrace.propagation.outcome']).toBe('continued');
    expect(serverSpans[0].attributes['http.route']).toBe('/orders/:id');
    expect(rpc.at(-1)?.route).toBe('/orders/:id');
    expect(seen.traceId).toBe(T);
    // The MeshPropagator counted the extraction; meshtrace's middleware does not count it again.
    expect(counted).toEqual(['continued']);
  });

  test('an inbound policy that distrusts the caller: the span is theirs and stays, the baggage is cut to the allow-list, a warning says how to apply it', async () => {
    warner.reset();
    const warnings: string[] = [];
    diag.setLogger(
      { warn: (m: string) => warnings.push(m), error: () => {}, info: () => {}, debug: () => {}, verbose: () => {} },
      DiagLogLevel.WARN,
    );
    try {
      const { base } = await instrumented({
        inbound: { trustedPeers: ['10.0.0.0/8'] },
        baggageAllowList: ['tenant'],
        serverTiming: true,
      });
      const { seen, counted, res } = await call(base, { traceparent: VALID, baggage: 'tenant=acme,session=secret' });
      const serverSpans = tracing.spans().filter((s) => s.kind === SpanKind.SERVER);
      expect(
        serverSpans.map((s) => [
          s.instrumentationScope.name,
          s.spanContext().traceId,
          s.attributes['meshtrace.propagation.outcome'],
        ]),
      ).toEqual([['@opentelemetry/instrumentation-http', T, 'continued']]);
      expect([seen.baggage, counted]).toEqual([{ tenant: 'acme' }, ['continued']]);
      expect(res.headers.get('server-timing')).toBe(`trace;desc=00-${T}-${serverSpans[0].spanContext().spanId}-01`);
      expect(warnings.filter((w) => w.includes('disableIncomingRequestInstrumentation'))).toHaveLength(1);

      // Trusted: nothing is cut, nothing is said.
      const trusted = await instrumented({ inbound: { trustedPeers: ['127.0.0.1'] }, baggageAllowList: ['tenant'] });
      expect(
        (await call(trusted.base, { traceparent: VALID, baggage: 'tenant=acme,session=secret' })).seen.baggage,
      ).toEqual({ tenant: 'acme', session: 'secret' });
      expect(warnings.filter((w) => w.includes('disableIncomingRequestInstrumentation'))).toHaveLength(1);
    } finally {
      diag.disable();
    }
  });

  test('a malformed traceparent that another propagator continued: the request gets a fresh root of its own, and a warning', async () => {
    // Some propagators accept upper-case hex, which W3C trace-context §3.2.2.3 forbids.
    const lenient: TextMapPropagator = {
      inject: () => undefined,
      fields: () => ['traceparent'],
      extract: (ctx, carrier, getter) => {
        const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/i.exec(String(getter.get(carrier, 'traceparent')));
        return m
          ? trace.setSpanContext(ctx, {
              traceId: m[1].toLowerCase(),
              spanId: m[2].toLowerCase(),
              traceFlags: 1,
              isRemote: true,
            })
          : ctx;
      },
    };
    const warnings: string[] = [];
    diag.setLogger(
      { warn: (m: string) => warnings.push(m), error: () => {}, info: () => {}, debug: () => {}, verbose: () => {} },
      DiagLogLevel.WARN,
    );
    propagation.disable();
    propagation.setGlobalPropagator(lenient);
    try {
      const { base } = await instrumented();
      const { seen, counted } = await call(base, { traceparent: VALID.toUpperCase() });
      const serverSpans = tracing.spans().filter((s) => s.kind === SpanKind.SERVER);
      const theirs = serverSpans.find((s) => s.instrumentationScope.name === '@opentelemetry/instrumentation-http');
      const ours = serverSpans.find((s) => s.instrumentationScope.name === '@meshtrace/x');
      // Theirs cannot be re-parented: it stays in the garbage trace, marked; the request runs in ours.
      expect(theirs?.spanContext().traceId).toBe(T);
      expect(theirs?.attributes['meshtrace.propagation.outcome']).toBe('malformed');
      expect(ours?.parentSpanContext).toBeUndefined();
      expect(ours?.spanContext().traceId).not.toBe(T);
      expect(ours?.attributes['meshtrace.propagation.reason']).toBe('bad-trace-id');
      expect(seen.traceId).toBe(ours?.spanContext().traceId);
      expect(seen.spanId).toBe(ours?.spanContext().spanId);
      expect(counted).toEqual(['malformed:bad-trace-id']);
      expect(
        warnings.filter((w) => w.includes('the global propagator continued a malformed traceparent')),
      ).toHaveLength(1);
    } finally {
      propagation.disable();
      propagation.setGlobalPropagator(new MeshPropagator());
      diag.disable();
    }
  });
});

describe('the probe id of meshtrace probe', () => {
  test.each([
    ['a continued trace', { traceparent: VALID, baggage: 'tenant=acme,meshtrace.probe=p-42' }],
    ['a lost trace: the id still ties the hop to its probe', { baggage: 'meshtrace.probe=p-42' }],
    [
      'a distrusted trace: baggage is cut, the id is still recorded',
      { traceparent: VALID, baggage: 'meshtrace.probe=p-42', restart: '1' },
    ],
  ])('is copied from baggage onto the server span: %s', async (_name, headers) => {
    const { restart, ...sent } = headers as Record<string, string>;
    const base = await serve(restart ? { inbound: 'restart' } : {});
    const { span } = await call(base, sent);
    expect(span?.attributes['meshtrace.probe']).toBe('p-42');
  });

  test('is absent without the baggage entry', async () => {
    const { span } = await call(await serve({}), { traceparent: VALID, baggage: 'tenant=acme' });
    expect(span?.attributes).not.toHaveProperty('meshtrace.probe');
  });
});

describe('with only the public API, as if the OpenTelemetry internals core reads had another shape', () => {
  beforeAll(() => usePublicApiOnly(true));
  afterAll(() => usePublicApiOnly(false));

  test.each([
    ['valid', { traceparent: VALID }, 'continued', T],
    ['upper-case', { traceparent: VALID.toUpperCase().replace(/^00/, '00') }, 'malformed', undefined],
    ['missing', {}, 'missing', undefined],
  ])(
    '%s traceparent: one SERVER span from the global provider, the outcome on it and counted',
    async (_name, headers, outcome, traceId) => {
      const { seen, span, counted } = await call(await serve({}), headers as Record<string, string>);
      expect(span?.kind).toBe(SpanKind.SERVER);
      expect(span?.attributes['meshtrace.propagation.outcome']).toBe(outcome);
      expect(counted.some((k) => k.includes(outcome))).toBe(true);
      if (traceId !== undefined) expect(seen.traceId).toBe(traceId);
      else expect(seen.traceId).not.toBe(T);
    },
  );
});
