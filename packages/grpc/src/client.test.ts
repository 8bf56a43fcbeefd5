import { join } from 'node:path';
import { DiagLogLevel, SpanKind, SpanStatusCode, diag, trace } from '@opentelemetry/api';
import type { DiagLogger, Span } from '@opentelemetry/api';
import { Metadata, Server, ServerCredentials, credentials, loadPackageDefinition, status } from '@grpc/grpc-js';
import type {
  CallOptions,
  Client,
  ClientOptions,
  ClientDuplexStream,
  ClientReadableStream,
  ClientUnaryCall,
  ClientWritableStream,
  ServerDuplexStream,
  ServerReadableStream,
  ServerUnaryCall,
  ServerWritableStream,
  ServiceClientConstructor,
  StatusObject,
  requestCallback,
  sendUnaryData,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { context, propagation } from '@opentelemetry/api';
import { extractRequestContext } from '@meshtrace/core';
import { warner } from '@meshtrace/core/adapter';
import { PARENT_ID, SPELLINGS, TRACE_ID, callerHeaders, delta, observe, setupTestTracing } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';
import { meshClientInterceptor, meshServerInterceptor, meshService } from '@meshtrace/grpc';
import { setAddress, targetEndpoint } from './rpc-span';
import type { GrpcCall } from '@meshtrace/grpc';

interface Say {
  text?: string;
  fail?: number;
  count?: number;
}
interface Said {
  text: string;
  seen: string;
  traceparent: string;
  tracestate: string;
}
type EchoClient = Client & {
  unary(request: Say, metadata: Metadata, options: CallOptions, callback: requestCallback<Said>): ClientUnaryCall;
  serverStream(request: Say, metadata?: Metadata): ClientReadableStream<Said>;
  clientStream(metadata: Metadata, callback: requestCallback<Said>): ClientWritableStream<Say>;
  bidi(metadata?: Metadata): ClientDuplexStream<Say, Said>;
};

const definition = loadSync(join(__dirname, '..', 'test', 'echo.proto'), { defaults: true });
const Echo = (
  loadPackageDefinition(definition) as unknown as { meshtrace: { test: { Echo: ServiceClientConstructor } } }
).meshtrace.test.Echo;

function echoClient(address: string, options?: ClientOptions): EchoClient {
  return new Echo(address, credentials.createInsecure(), options) as unknown as EchoClient;
}

const tracing = setupTestTracing();
type ReadableSpan = ReturnType<typeof tracing.spans>[number];
const warnings: string[] = [];
const logger: DiagLogger = {
  error: () => undefined,
  warn: (m) => void warnings.push(m),
  info: () => undefined,
  debug: () => undefined,
  verbose: () => undefined,
};
diag.setLogger(logger, DiagLogLevel.WARN);

let server: Server;
let port: number;
let target: string;
/** The client under test. */
let client: EchoClient;
/** A client without the interceptor, standing in for an uninstrumented caller. */
let plainClient: EchoClient;

/** What a handler reports: what it saw and the trace fields its metadata carried. */
function report(metadata: Metadata, text = ''): Said {
  return {
    text,
    seen: JSON.stringify(observe()),
    traceparent: metadata.get('traceparent').join('|'),
    tracestate: metadata.get('tracestate').join('|'),
  };
}

const echo = {
  unary(call: ServerUnaryCall<Say, Said>, callback: sendUnaryData<Said>) {
    const { text, fail } = call.request;
    if (text === 'hang') return;
    if (fail) return callback({ code: fail, details: `failed with ${fail}` });
    // A handler that calls on, forwarding the metadata it received as many services do.
    if (text === 'relay')
      return void client.unary({}, call.metadata, {}, (err, res) =>
        callback(err, res && { ...res, text: JSON.stringify(report(call.metadata)) }),
      );
    // Every metadata entry as it came off the wire.
    if (text === 'metadata')
      return callback(null, { ...report(call.metadata), text: JSON.stringify(call.metadata.toJSON()) });
    callback(null, report(call.metadata));
  },
  serverStream(call: ServerWritableStream<Say, Said>) {
    for (let i = 0; i < (call.request.count ?? 1); i++) call.write(report(call.metadata, String(i)));
    call.end();
  },
  clientStream(call: ServerReadableStream<Say, Said>, callback: sendUnaryData<Said>) {
    call.on('data', () => undefined);
    call.on('end', () => callback(null, report(call.metadata)));
  },
  bidi(call: ServerDuplexStream<Say, Said>) {
    call.on('data', (m: Say) => call.write(report(call.metadata, m.text)));
    call.on('end', () => call.end());
  },
};

beforeAll(async () => {
  server = new Server({ interceptors: [meshServerInterceptor()] });
  server.addService(Echo.service, meshService(echo));
  port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  target = `127.0.0.1:${port}`;
  client = echoClient(target, { interceptors: [meshClientInterceptor()] });
  plainClient = echoClient(target);
});
afterAll(async () => {
  client.close();
  plainClient.close();
  server.forceShutdown();
  await tracing.shutdown();
});
beforeEach(() => {
  warnings.length = 0;
});
afterEach(() => {
  expect(warnings.filter((w) => w.includes('ended Span'))).toEqual([]);
});

/** Runs `call` inside a span of its own, resolving once `call` says the RPC finished. */
function inCaller<T>(call: (done: (result: T) => void) => void): Promise<{ caller: Span; result: T }> {
  return new Promise((resolve) => {
    trace.getTracer('test').startActiveSpan('caller', (caller) => {
      call((result) => {
        caller.end();
        resolve({ caller, result });
      });
    });
  });
}

/** The spans of one trace by kind, waiting for `count` of them (spans end a tick after the status). */
async function spansOf(
  traceId: string,
  count: number,
): Promise<Record<'caller' | 'client' | 'server', ReadableSpan[]>> {
  const find = () => tracing.spans().filter((s) => s.spanContext().traceId === traceId);
  for (let i = 0; i < 200 && find().length < count; i++) await new Promise((r) => setTimeout(r, 10));
  const all = find();
  return {
    caller: all.filter((s) => s.kind === SpanKind.INTERNAL),
    client: all.filter((s) => s.kind === SpanKind.CLIENT),
    server: all.filter((s) => s.kind === SpanKind.SERVER),
  };
}

/** Which span was active in each callback the caller got: all must be the caller's own. */
type Result = { code: number; said: Said[]; activeInCallbacks: Array<string | undefined> };
const active = () => trace.getActiveSpan()?.spanContext().spanId;

const kinds: ReadonlyArray<[string, string, (done: (r: Result) => void) => void]> = [
  [
    'unary',
    'Unary',
    (done) =>
      client.unary({}, new Metadata(), {}, (err, res) =>
        done({ code: err?.code ?? status.OK, said: res ? [res] : [], activeInCallbacks: [active()] }),
      ),
  ],
  [
    'server streaming',
    'ServerStream',
    (done) => {
      const said: Said[] = [];
      const seenIn: Array<string | undefined> = [];
      const call = client.serverStream({ count: 2 });
      call.on('data', (m: Said) => (said.push(m), seenIn.push(active())));
      call.on('status', (s: StatusObject) => done({ code: s.code, said, activeInCallbacks: [...seenIn, active()] }));
    },
  ],
  [
    'client streaming',
    'ClientStream',
    (done) => {
      const call = client.clientStream(new Metadata(), (err, res) =>
        done({ code: err?.code ?? status.OK, said: res ? [res] : [], activeInCallbacks: [active()] }),
      );
      call.write({ text: 'a' });
      call.write({ text: 'b' });
      call.end();
    },
  ],
  [
    'bidirectional',
    'Bidi',
    (done) => {
      const said: Said[] = [];
      const seenIn: Array<string | undefined> = [];
      const call = client.bidi();
      call.on('data', (m: Said) => (said.push(m), seenIn.push(active())));
      call.on('status', (s: StatusObject) => done({ code: s.code, said, activeInCallbacks: [...seenIn, active()] }));
      call.write({ text: 'a' });
      call.write({ text: 'b' });
      call.end();
    },
  ],
];

test.each(kinds)(
  '%s: the server span is the client span’s child, in one trace; callbacks run in the caller’s context',
  async (kind, method, run) => {
    const { caller, result } = await inCaller(run);
    const traceId = caller.spanContext().traceId;
    const spans = await spansOf(traceId, 3);
    expect([kind, spans.client.length, spans.server.length]).toEqual([kind, 1, 1]);
    const [clientSpan] = spans.client;
    const [serverSpan] = spans.server;
    expect([kind, result.code]).toEqual([kind, status.OK]);
    expect([kind, clientSpan.parentSpanContext?.spanId, serverSpan.parentSpanContext?.spanId]).toEqual([
      kind,
      caller.spanContext().spanId,
      clientSpan.spanContext().spanId,
    ]);
    // What went over the wire: the client span as parent, exactly once.
    expect([kind, [...new Set(result.said.map((s) => s.traceparent))]]).toEqual([
      kind,
      [`00-${traceId}-${clientSpan.spanContext().spanId}-01`],
    ]);
    expect([kind, [...new Set(result.said.map((s) => (JSON.parse(s.seen) as Observed).spanId))]]).toEqual([
      kind,
      [serverSpan.spanContext().spanId],
    ]);
    expect([kind, result.activeInCallbacks]).toEqual([
      kind,
      result.activeInCallbacks.map(() => caller.spanContext().spanId),
    ]);
    expect([kind, clientSpan.name, clientSpan.status.code, clientSpan.attributes]).toEqual([
      kind,
      `meshtrace.test.Echo/${method}`,
      SpanStatusCode.UNSET,
      {
        'rpc.system': 'grpc',
        'rpc.service': 'meshtrace.test.Echo',
        'rpc.method': method,
        'rpc.grpc.status_code': status.OK,
        'server.address': '127.0.0.1',
        'server.port': port,
        'network.peer.address': '127.0.0.1',
        'network.peer.port': port,
      },
    ]);
  },
);

test('calls queued while the channel connects still call back in their own caller’s context', async () => {
  // A channel of its own, so both calls wait for a connection the first one starts.
  const fresh = echoClient(target, { interceptors: [meshClientInterceptor()], 'grpc.use_local_subchannel_pool': 1 });
  const streamIn = (done: (r: Array<string | undefined>) => void) => {
    const seenIn: Array<string | undefined> = [];
    const call = fresh.serverStream({ count: 2 });
    call.on('data', () => seenIn.push(active()));
    call.on('status', () => done([...seenIn, active()]));
  };
  try {
    const [a, b] = await Promise.all([inCaller(streamIn), inCaller(streamIn)]);
    for (const { caller, result } of [a, b]) expect(result).toEqual(Array(3).fill(caller.spanContext().spanId));
  } finally {
    fresh.close();
  }
});

describe('client span status: every non-OK status is an error for the caller', () => {
  const cases: ReadonlyArray<{
    name: string;
    request: Say;
    deadlineMs?: number;
    cancel?: boolean;
    code: number;
    serverError: boolean;
  }> = [
    { name: 'NOT_FOUND', request: { fail: status.NOT_FOUND }, code: status.NOT_FOUND, serverError: false },
    { name: 'INTERNAL', request: { fail: status.INTERNAL }, code: status.INTERNAL, serverError: true },
    {
      name: 'DEADLINE_EXCEEDED',
      request: { text: 'hang' },
      deadlineMs: 300,
      code: status.DEADLINE_EXCEEDED,
      serverError: true,
    },
    { name: 'CANCELLED', request: { text: 'hang' }, cancel: true, code: status.CANCELLED, serverError: false },
  ];
  test.each(cases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const { caller, result } = await inCaller<number | undefined>((done) => {
      const call = client.unary(
        c.request,
        new Metadata(),
        c.deadlineMs ? { deadline: Date.now() + c.deadlineMs } : {},
        (err) => done(err?.code),
      );
      if (c.cancel) setTimeout(() => call.cancel(), 50);
    });
    const spans = await spansOf(caller.spanContext().traceId, 3);
    const [clientSpan] = spans.client;
    const [serverSpan] = spans.server;
    expect([c.name, result, spans.client.length, spans.server.length]).toEqual([c.name, c.code, 1, 1]);
    expect([c.name, clientSpan.attributes['rpc.grpc.status_code'], clientSpan.status.code]).toEqual([
      c.name,
      c.code,
      SpanStatusCode.ERROR,
    ]);
    expect([c.name, serverSpan.attributes['rpc.grpc.status_code'], serverSpan.status.code]).toEqual([
      c.name,
      c.code,
      c.serverError ? SpanStatusCode.ERROR : SpanStatusCode.UNSET,
    ]);
  });

  test('UNAVAILABLE: nothing listens at the target', async () => {
    const closed = new Server();
    const deadPort = await new Promise<number>((resolve, reject) =>
      closed.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    closed.forceShutdown();
    const dead = echoClient(`127.0.0.1:${deadPort}`, { interceptors: [meshClientInterceptor()] });
    try {
      const { caller, result } = await inCaller<number | undefined>((done) =>
        dead.unary({}, new Metadata(), {}, (err) => done(err?.code)),
      );
      const { client: clientSpans } = await spansOf(caller.spanContext().traceId, 2);
      expect(result).toBe(status.UNAVAILABLE);
      expect(
        clientSpans.map((s) => [
          s.attributes['rpc.grpc.status_code'],
          s.attributes['server.address'],
          s.attributes['server.port'],
          s.status.code,
        ]),
      ).toEqual([[status.UNAVAILABLE, '127.0.0.1', deadPort, SpanStatusCode.ERROR]]);
    } finally {
      dead.close();
    }
  });
});

test('a malformed traceparent from an uninstrumented caller: fresh root end to end, never forwarded', async () => {
  warner.reset();
  const before = await tracing.outcomeCounts();
  const malformed = 'ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
  const metadata = new Metadata();
  metadata.set('traceparent', malformed);
  metadata.set('tracestate', 'congo=t61rcWkgMzE');
  const res = await new Promise<Said>((resolve, reject) =>
    plainClient.unary({ text: 'relay' }, metadata, {}, (err, r) => (err ? reject(err) : resolve(r!))),
  );
  const upstream = JSON.parse(res.text) as Said;
  const upstreamSeen = JSON.parse(upstream.seen) as Observed;
  const downstreamSeen = JSON.parse(res.seen) as Observed;
  const traceId = upstreamSeen.traceId;

  const spans = await spansOf(traceId, 3);
  expect([spans.server.length, spans.client.length]).toEqual([2, 1]);
  const [clientSpan] = spans.client;
  const first = spans.server.find((s) => s.spanContext().spanId === upstreamSeen.spanId)!;
  const second = spans.server.find((s) => s.spanContext().spanId === downstreamSeen.spanId)!;
  // The upstream server saw the malformed value; it started a fresh, random, sampled root.
  expect([upstream.traceparent, traceId]).toEqual([
    malformed,
    expect.not.stringMatching('0af7651916cd43dd8448eb211c80319c'),
  ]);
  expect([
    first.parentSpanContext,
    first.attributes['meshtrace.propagation.outcome'],
    first.attributes['meshtrace.propagation.reason'],
  ]).toEqual([undefined, 'malformed', 'bad-version']);
  // The relayed metadata carried the fresh trace, and neither the malformed value nor its tracestate.
  expect([res.traceparent, res.tracestate]).toEqual([`00-${traceId}-${clientSpan.spanContext().spanId}-03`, '']);
  expect([
    clientSpan.parentSpanContext?.spanId,
    second.parentSpanContext?.spanId,
    second.attributes['meshtrace.propagation.outcome'],
  ]).toEqual([first.spanContext().spanId, clientSpan.spanContext().spanId, 'continued']);
  expect(delta(before, await tracing.outcomeCounts())).toEqual({ 'malformed:bad-version': 1, continued: 1 });
  expect(warnings.filter((w) => w.includes('malformed traceparent (bad-version)'))).toHaveLength(1);
});

describe('options', () => {
  test('an ignored method gets no client span, yet the caller’s context still travels', async () => {
    const hooked: GrpcCall[] = [];
    const quiet = echoClient(target, {
      interceptors: [meshClientInterceptor({ ignore: [/\/Unary$/], requestHook: (_span, call) => hooked.push(call) })],
    });
    try {
      const { caller, result } = await inCaller<Said | undefined>((done) =>
        quiet.unary({}, new Metadata(), {}, (_err, res) => done(res)),
      );
      const spans = await spansOf(caller.spanContext().traceId, 2);
      expect([spans.client.length, hooked.length]).toEqual([0, 0]);
      expect(result?.traceparent).toBe(`00-${caller.spanContext().traceId}-${caller.spanContext().spanId}-01`);
      expect(spans.server.map((s) => s.parentSpanContext?.spanId)).toEqual([caller.spanContext().spanId]);
    } finally {
      quiet.close();
    }
  });

  test('requestHook sees the outgoing metadata with the trace context; responseHook the status', async () => {
    const seen: Array<[string, string]> = [];
    const codes: number[] = [];
    const hooked = echoClient(target, {
      interceptors: [
        meshClientInterceptor({
          requestHook: (_span, call) => seen.push([call.path, String(call.metadata.get('traceparent')[0])]),
          responseHook: (_span, s) => codes.push(s.code),
        }),
      ],
    });
    try {
      const { caller } = await inCaller<unknown>((done) =>
        hooked.unary({ fail: status.ALREADY_EXISTS }, new Metadata(), {}, done),
      );
      const { client: clientSpans } = await spansOf(caller.spanContext().traceId, 3);
      expect(seen).toEqual([
        ['/meshtrace.test.Echo/Unary', `00-${caller.spanContext().traceId}-${clientSpans[0].spanContext().spanId}-01`],
      ]);
      expect(codes).toEqual([status.ALREADY_EXISTS]);
    } finally {
      hooked.close();
    }
  });

  test('the caller’s metadata object is left as it was', async () => {
    const metadata = new Metadata();
    metadata.set('traceparent', 'ff-stale');
    metadata.set('x-tenant', 'acme');
    await inCaller<unknown>((done) => client.unary({}, metadata, {}, done));
    expect(metadata.toJSON()).toEqual({ traceparent: ['ff-stale'], 'x-tenant': ['acme'] });
  });
});

describe('addresses', () => {
  test.each([
    ['dns:127.0.0.1:50051', '127.0.0.1:50051'],
    ['dns:///checkout.shop.svc.cluster.local:8080', 'checkout.shop.svc.cluster.local:8080'],
    ['dns://8.8.8.8/checkout:8080', 'checkout:8080'],
    ['ipv4:10.0.0.1:80,10.0.0.2:80', '10.0.0.1:80'],
    ['ipv6:[::1]:50051', '[::1]:50051'],
    ['unix:run/app.sock', 'run/app.sock'],
    ['unix:///run/app.sock', '/run/app.sock'],
  ])('target %s has endpoint %s', (target, endpoint) => {
    expect(targetEndpoint(target)).toBe(endpoint);
  });

  test.each([
    ['127.0.0.1:50051', { 'server.address': '127.0.0.1', 'server.port': 50051 }],
    ['[::1]:50051', { 'server.address': '::1', 'server.port': 50051 }],
    ['[::1]', { 'server.address': '::1' }],
    ['fe80::1', { 'server.address': 'fe80::1' }],
    ['checkout', { 'server.address': 'checkout' }],
    ['checkout:http', { 'server.address': 'checkout' }],
    ['/run/app.sock', { 'server.address': '/run/app.sock' }],
    ['unknown', {}],
    ['', {}],
    [undefined, {}],
  ])('%s gives %j', (hostPort, expected) => {
    const attributes = {};
    setAddress(attributes, 'server', hostPort);
    expect(attributes).toEqual(expected);
  });
});

describe("the caller's trace metadata, in any letter case, is replaced by the call's: one of each on the wire", () => {
  const INBOUND = {
    traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`,
    tracestate: 'congo=t61rcWkgMzE',
    baggage: 'tenant=acme,region=eu',
  };

  /**
   * Sends one unary call with the caller's `entries` as metadata, inside `ctx`; resolves with the metadata the server
   * received.
   */
  function sendMetadata(
    ctx: ReturnType<typeof context.active>,
    entries: Array<[string, string]>,
  ): Promise<Record<string, string[]>> {
    const metadata = new Metadata();
    for (const [k, v] of entries) metadata.add(k, v);
    return context.with(
      ctx,
      () =>
        new Promise<Record<string, string[]>>((resolve, reject) =>
          client.unary({ text: 'metadata' }, metadata, {}, (err, res) =>
            err ? reject(err) : resolve(JSON.parse(res!.text) as Record<string, string[]>),
          ),
        ),
    );
  }

  const pick = (md: Record<string, string[]>) => ({
    traceparent: md.traceparent ?? [],
    tracestate: md.tracestate ?? [],
    baggage: md.baggage ?? [],
    b3: [...(md.b3 ?? []), ...(md['x-b3-traceid'] ?? []), ...(md['x-b3-spanid'] ?? [])],
    custom: md['x-custom'] ?? [],
  });

  test.each(SPELLINGS)('inside a trace, %s', async (spelling, spell) => {
    const { context: inbound } = extractRequestContext(INBOUND);
    const parentSpan = trace.getTracer('test').startSpan('GET /front', { kind: SpanKind.SERVER }, inbound);
    const md = await sendMetadata(trace.setSpan(inbound, parentSpan), callerHeaders(spell));
    parentSpan.end();
    const { client: clientSpans } = await spansOf(TRACE_ID, 3);
    const clientSpan = clientSpans.find((s) => s.parentSpanContext?.spanId === parentSpan.spanContext().spanId);
    expect({ spelling, ...pick(md) }).toEqual({
      spelling,
      traceparent: [`00-${TRACE_ID}-${clientSpan?.spanContext().spanId}-01`],
      tracestate: [INBOUND.tracestate],
      // The caller's value wins for its key; the context's order is kept, the caller's new keys follow.
      baggage: ['tenant=override,region=eu,caller=1'],
      b3: [],
      custom: ['kept'],
    });
  });

  test('with no active trace, a traceparent the caller set on purpose is left as it is; the CLIENT span joins that trace', async () => {
    const own = `00-${'7'.repeat(32)}-${'8'.repeat(16)}-01`;
    const md = await sendMetadata(propagation.deleteBaggage(trace.deleteSpan(context.active())), [
      ['Traceparent', own],
      ['Tracestate', 'mine=1'],
      ['x-custom', 'kept'],
    ]);
    expect(pick(md)).toEqual({ traceparent: [own], tracestate: ['mine=1'], baggage: [], b3: [], custom: ['kept'] });
    const { client: clientSpans } = await spansOf('7'.repeat(32), 2);
    expect(clientSpans.map((s) => s.parentSpanContext?.spanId)).toEqual(['8'.repeat(16)]);
  });
});
