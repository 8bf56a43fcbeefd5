import { connect } from 'node:http2';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { DiagLogLevel, SpanKind, SpanStatusCode, context, diag, propagation } from '@opentelemetry/api';
import type { DiagLogger } from '@opentelemetry/api';
import {
  Metadata,
  Server,
  ServerCredentials,
  credentials,
  loadPackageDefinition,
  setLogger,
  status,
} from '@grpc/grpc-js';
import type {
  CallOptions,
  Client,
  ClientDuplexStream,
  ClientReadableStream,
  ClientUnaryCall,
  ClientWritableStream,
  ServerDuplexStream,
  ServerReadableStream,
  ServerUnaryCall,
  ServerWritableStream,
  ServiceClientConstructor,
  ServiceError,
  requestCallback,
  sendUnaryData,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { MethodDefinition } from '@grpc/proto-loader';
import { HEADER_CASES, checkCase, delta, observe, setupTestTracing } from '@meshtrace/testkit';
import type { HeaderCase, Observed } from '@meshtrace/testkit';
import { meshClientInterceptor, meshServerInterceptor, meshService } from '@meshtrace/grpc';
import type { GrpcCall, GrpcStatus } from '@meshtrace/grpc';

interface Say {
  text?: string;
  fail?: number;
  count?: number;
}
interface Said {
  text?: string;
  seen: string;
}
type EchoClient = Client & {
  unary(request: Say, metadata: Metadata, options: CallOptions, callback: requestCallback<Said>): ClientUnaryCall;
  missing(request: Say, metadata: Metadata, options: CallOptions, callback: requestCallback<Said>): ClientUnaryCall;
  serverStream(request: Say, metadata: Metadata): ClientReadableStream<Said>;
  clientStream(metadata: Metadata, callback: requestCallback<Said>): ClientWritableStream<Say>;
  bidi(metadata: Metadata): ClientDuplexStream<Say, Said>;
};

const definition = loadSync(join(__dirname, '..', 'test', 'echo.proto'), { defaults: true });
const Echo = (
  loadPackageDefinition(definition) as unknown as { meshtrace: { test: { Echo: ServiceClientConstructor } } }
).meshtrace.test.Echo;
const UNARY = definition['meshtrace.test.Echo'] as unknown as { Unary: MethodDefinition<Say, Said> };

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
const grpcErrors: string[] = [];
setLogger({ error: (...args: unknown[]) => void grpcErrors.push(args.join(' ')) });

/** Runs `fn` with a baggage entry naming the message being handled: what must never reach the next one. */
function underMessage(text: string | undefined, fn: () => void): void {
  const ctx = context.active();
  const bag = (propagation.getBaggage(ctx) ?? propagation.createBaggage()).setEntry('handled', { value: String(text) });
  context.with(propagation.setBaggage(ctx, bag), fn);
}

const seen = () => JSON.stringify(observe());

/** Answers one bidirectional message with what its handler saw, or fails the stream when asked to. */
function answer(call: ServerDuplexStream<Say, Said>, m: Say): void {
  call.write({ text: m.text, seen: seen() });
  if (m.fail) call.emit('error', { code: m.fail, details: 'the stream failed' });
}

/** Every kind of handler, each reporting what it saw from inside the call. */
const echo = {
  unary(call: ServerUnaryCall<Say, Said>, callback: sendUnaryData<Said>) {
    const { text, fail } = call.request;
    if (text === 'throw') throw new Error('handler broke');
    if (text === 'hang') return;
    if (text === 'error') return callback(new Error('an error without a code'));
    if (fail) return callback({ code: fail, details: `failed with ${fail}` });
    callback(null, { text, seen: seen() });
  },
  serverStream(call: ServerWritableStream<Say, Said>) {
    for (let i = 0; i < (call.request.count ?? 0); i++) call.write({ text: String(i), seen: seen() });
    if (call.request.text === 'hang') return;
    if (call.request.fail) call.emit('error', { code: call.request.fail, details: 'the stream failed' });
    else call.end();
  },
  clientStream(call: ServerReadableStream<Say, Said>, callback: sendUnaryData<Said>) {
    const all: Observed[] = [];
    call.on('data', (m: Say) => {
      all.push(observe());
      underMessage(m.text, () => undefined);
    });
    call.on('end', () => callback(null, { text: '', seen: JSON.stringify(all) }));
  },
  bidi(call: ServerDuplexStream<Say, Said>) {
    call.on('data', (m: Say) => answer(call, m));
    call.on('end', () => call.end());
  },
};

/** The same handlers, but applying backpressure from inside each message's own context. */
const pausing = {
  ...echo,
  clientStream(call: ServerReadableStream<Say, Said>, callback: sendUnaryData<Said>) {
    const all: Observed[] = [];
    call.on('data', (m: Say) => {
      all.push(observe());
      underMessage(m.text, () => {
        call.pause();
        setTimeout(() => call.resume(), 5);
      });
    });
    call.on('end', () => callback(null, { text: '', seen: JSON.stringify(all) }));
  },
  bidi(call: ServerDuplexStream<Say, Said>) {
    call.on('data', (m: Say) => {
      answer(call, m);
      underMessage(m.text, () => {
        call.pause();
        setTimeout(() => call.resume(), 5);
      });
    });
    call.on('end', () => call.end());
  },
};

interface Running {
  server: Server;
  client: EchoClient;
  port: number;
}

async function start(implementation: object, options?: Parameters<typeof meshServerInterceptor>[0]): Promise<Running> {
  const server = new Server({ interceptors: [meshServerInterceptor(options)] });
  server.addService(Echo.service, implementation as never);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  // A plain client: no interceptor, so the server sees exactly the metadata each test sends.
  const client = new Echo(`127.0.0.1:${port}`, credentials.createInsecure()) as unknown as EchoClient;
  return { server, client, port };
}

function stop(r: Running): void {
  r.client.close();
  r.server.forceShutdown();
}

function unary(
  client: EchoClient,
  request: Say,
  metadata = new Metadata(),
  options: CallOptions = {},
): Promise<{ err: ServiceError | null; res?: Said }> {
  return new Promise((resolve) => client.unary(request, metadata, options, (err, res) => resolve({ err, res })));
}

function collect<T>(
  stream: ClientReadableStream<T> | ClientDuplexStream<Say, T>,
): Promise<{ messages: T[]; code: number }> {
  const messages: T[] = [];
  stream.on('data', (m: T) => messages.push(m));
  stream.on('error', () => undefined);
  return new Promise((resolve) => stream.on('status', (s: { code: number }) => resolve({ messages, code: s.code })));
}

/** Sends a unary call over bare HTTP/2, for header values grpc-js refuses to put into Metadata. */
async function rawUnary(port: number, headers: Record<string, string | string[]>): Promise<Said> {
  const session = connect(`http://127.0.0.1:${port}`);
  try {
    const stream = session.request({
      ':method': 'POST',
      ':path': '/meshtrace.test.Echo/Unary',
      'content-type': 'application/grpc',
      te: 'trailers',
      ...headers,
    });
    // One uncompressed message frame holding an empty Say.
    stream.end(Buffer.alloc(5));
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return UNARY.Unary.responseDeserialize(Buffer.concat(chunks).subarray(5));
  } finally {
    session.close();
  }
}

/** Whether grpc-js Metadata accepts every value of a header. */
function carriable(key: string, value: string | readonly string[]): boolean {
  try {
    for (const one of Array.isArray(value) ? value : [value]) new Metadata().add(key, one);
    return true;
  } catch {
    return false;
  }
}

/** A header case as it looks once `header` is dropped on the way in. */
function withoutHeader(c: HeaderCase, header: string): HeaderCase {
  if (header !== 'tracestate' && header !== 'baggage')
    throw new Error(`[${c.name}] no gRPC expectation for a refused ${header}`);
  return { ...c, [header]: undefined, dropped: c.dropped?.startsWith(`${header}:`) ? undefined : c.dropped };
}

/** A metadata with a traceparent of a trace of its own, and that trace's id. */
function traced(): [Metadata, string] {
  const traceId = randomBytes(16).toString('hex');
  const metadata = new Metadata();
  metadata.set('traceparent', `00-${traceId}-b7ad6b7169203331-01`);
  return [metadata, traceId];
}

/** The SERVER spans of a trace, once one has ended (a cancelled call's ends a tick after the client hears). */
async function serverSpans(traceId: string): Promise<ReadableSpan[]> {
  const find = () => tracing.spans().filter((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.SERVER);
  for (let i = 0; i < 200 && find().length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  return find();
}

let plain: Running;
let wrapped: Running;

beforeAll(async () => {
  plain = await start(echo);
  wrapped = await start(meshService(pausing));
});
afterAll(async () => {
  stop(plain);
  stop(wrapped);
  await tracing.shutdown();
});
beforeEach(() => {
  warnings.length = 0;
});
afterEach(() => {
  expect(warnings.filter((w) => w.includes('ended Span'))).toEqual([]);
});

describe('header cases sent as metadata by a plain client', () => {
  const cases = [
    ...HEADER_CASES,
    // A binary key is bytes, not W3C text: it never carries the trace.
    { name: 'only a -bin trace header', headers: {}, bin: true, outcome: 'missing' as const },
  ];
  test.each(cases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    tracing.reset();
    const before = await tracing.outcomeCounts();
    const droppedBefore = await tracing.droppedCounts();
    // grpc-js carries printable ASCII only (gRPC over HTTP/2, ASCII-Value): it refuses other values on the
    // way out and drops them on the way in, before any interceptor. A sidecar may still forward one, so such
    // a row goes over bare HTTP/2 and expects that header gone, while the trace itself still continues.
    const refused = Object.entries(c.headers).filter(([k, v]) => !carriable(k, v));
    let expected: HeaderCase = c;
    let said: Said;
    if (refused.length > 0) {
      for (const [k] of refused) expected = withoutHeader(expected, k);
      grpcErrors.length = 0;
      said = await rawUnary(plain.port, c.headers as Record<string, string | string[]>);
      expect(refused.map(([k]) => grpcErrors.some((e) => e.includes(`Failed to add metadata entry ${k}`)))).toEqual(
        refused.map(() => true),
      );
    } else {
      const metadata = new Metadata();
      // Several values of one key travel as several HTTP/2 header fields, as in HTTP.
      for (const [k, v] of Object.entries(c.headers))
        for (const one of Array.isArray(v) ? v : [v]) metadata.add(k, one);
      if ('bin' in c) metadata.set('traceparent-bin', Buffer.from(`00-${'1'.repeat(32)}-${'2'.repeat(16)}-01`));
      const { err, res } = await unary(plain.client, {}, metadata);
      expect([c.name, err]).toEqual([c.name, null]);
      said = res!;
    }
    const seenByHandler = JSON.parse(said.seen) as Observed;
    const problems = checkCase(
      expected,
      seenByHandler,
      tracing.spans(),
      delta(before, await tracing.outcomeCounts()),
      delta(droppedBefore, await tracing.droppedCounts()),
      SpanKind.SERVER,
    );
    expect(problems).toEqual([]);
  });
});

describe('unary calls', () => {
  // OpenTelemetry semconv for gRPC: on the server only these codes are errors; the rest are the caller's.
  const errors: number[] = [
    status.UNKNOWN,
    status.DEADLINE_EXCEEDED,
    status.UNIMPLEMENTED,
    status.INTERNAL,
    status.UNAVAILABLE,
    status.DATA_LOSS,
  ];
  const server = (code: number) => ({ code, error: errors.includes(code) });
  const cases: ReadonlyArray<{
    name: string;
    request: Say;
    method?: 'missing';
    deadlineMs?: number;
    cancel?: boolean;
    code: number;
    error: boolean;
  }> = [
    { name: 'OK', request: {}, ...server(status.OK) },
    { name: 'NOT_FOUND is the caller’s problem', request: { fail: status.NOT_FOUND }, ...server(status.NOT_FOUND) },
    {
      name: 'INVALID_ARGUMENT is the caller’s problem',
      request: { fail: status.INVALID_ARGUMENT },
      ...server(status.INVALID_ARGUMENT),
    },
    {
      name: 'PERMISSION_DENIED is the caller’s problem',
      request: { fail: status.PERMISSION_DENIED },
      ...server(status.PERMISSION_DENIED),
    },
    { name: 'INTERNAL', request: { fail: status.INTERNAL }, ...server(status.INTERNAL) },
    { name: 'UNAVAILABLE', request: { fail: status.UNAVAILABLE }, ...server(status.UNAVAILABLE) },
    { name: 'DATA_LOSS', request: { fail: status.DATA_LOSS }, ...server(status.DATA_LOSS) },
    { name: 'an error without a code is UNKNOWN', request: { text: 'error' }, ...server(status.UNKNOWN) },
    { name: 'a handler that throws is UNKNOWN', request: { text: 'throw' }, ...server(status.UNKNOWN) },
    {
      name: 'a method without a handler is UNIMPLEMENTED',
      request: {},
      method: 'missing',
      ...server(status.UNIMPLEMENTED),
    },
    {
      name: 'a deadline that passes is DEADLINE_EXCEEDED',
      request: { text: 'hang' },
      deadlineMs: 300,
      ...server(status.DEADLINE_EXCEEDED),
    },
    {
      name: 'a call the client cancels is CANCELLED',
      request: { text: 'hang' },
      cancel: true,
      ...server(status.CANCELLED),
    },
  ];
  test.each(cases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const [metadata, traceId] = traced();
    const options: CallOptions = c.deadlineMs ? { deadline: Date.now() + c.deadlineMs } : {};
    await new Promise<void>((resolve) => {
      const call = plain.client[c.method ?? 'unary'](c.request, metadata, options, () => resolve());
      if (c.cancel) setTimeout(() => call.cancel(), 50);
    });
    const spans = await serverSpans(traceId);
    expect([c.name, spans.length]).toEqual([c.name, 1]);
    const span = spans[0];
    const method = c.method === 'missing' ? 'Missing' : 'Unary';
    expect([c.name, span.name, span.attributes]).toEqual([
      c.name,
      `meshtrace.test.Echo/${method}`,
      {
        'rpc.system': 'grpc',
        'rpc.service': 'meshtrace.test.Echo',
        'rpc.method': method,
        'rpc.grpc.status_code': c.code,
        'server.address': '127.0.0.1',
        'server.port': plain.port,
        'network.peer.address': '127.0.0.1',
        'network.peer.port': expect.any(Number),
        'meshtrace.propagation.outcome': 'continued',
        'meshtrace.propagation.format': 'w3c',
      },
    ]);
    expect([c.name, span.status.code]).toEqual([c.name, c.error ? SpanStatusCode.ERROR : SpanStatusCode.UNSET]);
  });

  test('meshService records what a handler threw on the call’s span', async () => {
    const [metadata, traceId] = traced();
    const { err } = await unary(wrapped.client, { text: 'throw' }, metadata);
    expect(err?.code).toBe(status.UNKNOWN);
    const [span] = await serverSpans(traceId);
    expect(span.events.map((e) => [e.name, e.attributes?.['exception.message']])).toEqual([
      ['exception', 'handler broke'],
    ]);
    expect(span.status.code).toBe(SpanStatusCode.ERROR);
  });
});

describe.each([
  ['the interceptor alone', () => plain],
  ['the interceptor and meshService, with backpressure inside each message', () => wrapped],
])('streams through %s', (_label, running) => {
  test('server streaming: every message written in the call’s context, one span ended with the status', async () => {
    const [metadata, traceId] = traced();
    const { messages, code } = await collect(running().client.serverStream({ count: 3 }, metadata));
    const [span, ...more] = await serverSpans(traceId);
    expect(more).toEqual([]);
    expect(code).toBe(status.OK);
    expect(messages.map((m) => (JSON.parse(m.seen) as Observed).spanId)).toEqual(
      Array(3).fill(span.spanContext().spanId),
    );
    expect([span.name, span.attributes['rpc.grpc.status_code'], span.status.code]).toEqual([
      'meshtrace.test.Echo/ServerStream',
      0,
      SpanStatusCode.UNSET,
    ]);
  });

  test('server streaming that fails: INTERNAL is an error', async () => {
    const [metadata, traceId] = traced();
    const { messages, code } = await collect(
      running().client.serverStream({ count: 1, fail: status.INTERNAL }, metadata),
    );
    const [span, ...more] = await serverSpans(traceId);
    expect([messages.length, code, more.length]).toEqual([1, status.INTERNAL, 0]);
    expect([span.attributes['rpc.grpc.status_code'], span.status.code]).toEqual([
      status.INTERNAL,
      SpanStatusCode.ERROR,
    ]);
  });

  test('client streaming: each message handled in the call’s context, none sees what the previous one set', async () => {
    const [metadata, traceId] = traced();
    metadata.set('baggage', 'tenant=acme');
    const res = await new Promise<Said>((resolve, reject) => {
      const call = running().client.clientStream(metadata, (err, r) => (err ? reject(err) : resolve(r!)));
      for (const text of ['m1', 'm2', 'm3', 'm4']) call.write({ text });
      call.end();
    });
    const [span, ...more] = await serverSpans(traceId);
    expect(more).toEqual([]);
    const perMessage = (JSON.parse(res.seen) as Observed[]).map((o) => [o.traceId, o.spanId, o.baggage]);
    expect(perMessage).toEqual(Array(4).fill([traceId, span.spanContext().spanId, { tenant: 'acme' }]));
    expect([span.name, span.attributes['rpc.grpc.status_code']]).toEqual(['meshtrace.test.Echo/ClientStream', 0]);
  });

  test('bidirectional: each message handled in the call’s context, none sees what the previous one set', async () => {
    const [metadata, traceId] = traced();
    metadata.set('baggage', 'tenant=acme');
    const call = running().client.bidi(metadata);
    const done = collect(call);
    for (const text of ['m1', 'm2', 'm3', 'm4']) call.write({ text });
    call.end();
    const { messages, code } = await done;
    const [span, ...more] = await serverSpans(traceId);
    expect([code, more.length]).toEqual([status.OK, 0]);
    const perMessage = messages.map((m) => [m.text, ...Object.values(JSON.parse(m.seen) as Observed)]);
    const outbound = { traceparent: `00-${traceId}-${span.spanContext().spanId}-01`, baggage: 'tenant=acme' };
    expect(perMessage).toEqual(
      ['m1', 'm2', 'm3', 'm4'].map((t) => [t, traceId, span.spanContext().spanId, outbound, { tenant: 'acme' }]),
    );
    expect([span.name, span.attributes['rpc.grpc.status_code'], span.status.code]).toEqual([
      'meshtrace.test.Echo/Bidi',
      0,
      SpanStatusCode.UNSET,
    ]);
  });

  test('bidirectional failing mid-stream: one span, ended once with DATA_LOSS as an error', async () => {
    const [metadata, traceId] = traced();
    const call = running().client.bidi(metadata);
    const done = collect(call);
    call.write({ text: 'm1' });
    call.write({ text: 'm2', fail: status.DATA_LOSS });
    const { code } = await done;
    call.end();
    const [span, ...more] = await serverSpans(traceId);
    expect([code, more.length]).toEqual([status.DATA_LOSS, 0]);
    expect([span.attributes['rpc.grpc.status_code'], span.status.code]).toEqual([
      status.DATA_LOSS,
      SpanStatusCode.ERROR,
    ]);
  });

  test('server streaming cancelled by the client: CANCELLED, not an error on the server', async () => {
    const [metadata, traceId] = traced();
    const call = running().client.serverStream({ count: 1, text: 'hang' }, metadata);
    const done = collect(call);
    await new Promise((r) => call.once('data', r));
    call.cancel();
    expect((await done).code).toBe(status.CANCELLED);
    const [span, ...more] = await serverSpans(traceId);
    expect([span.attributes['rpc.grpc.status_code'], span.status.code, more.length]).toEqual([
      status.CANCELLED,
      SpanStatusCode.UNSET,
      0,
    ]);
  });
});

describe('options', () => {
  test('an ignored method gets no span, yet its handler runs in the caller’s trace', async () => {
    const running = await start(echo, { ignore: ['/meshtrace.test.Echo/Unary'] });
    try {
      const before = await tracing.outcomeCounts();
      const [metadata, traceId] = traced();
      const { res } = await unary(running.client, {}, metadata);
      const stream = await collect(running.client.serverStream({ count: 1 }, metadata));
      expect((JSON.parse(res!.seen) as Observed).traceId).toBe(traceId);
      expect((await serverSpans(traceId)).map((s) => s.name)).toEqual(['meshtrace.test.Echo/ServerStream']);
      expect(stream.code).toBe(status.OK);
      expect(delta(before, await tracing.outcomeCounts())).toEqual({ continued: 2 });
    } finally {
      stop(running);
    }
  });

  test('hooks see the call and its status; a hook that throws breaks nothing', async () => {
    const calls: Array<[string, string]> = [];
    const statuses: number[] = [];
    const running = await start(echo, {
      ignore: (path) => path.endsWith('/ServerStream'),
      requestHook: (_span, call: GrpcCall) => {
        calls.push([call.path, String(call.metadata.get('x-tenant')[0])]);
        throw new Error('request hook broke');
      },
      responseHook: (span, s: GrpcStatus) => {
        statuses.push(s.code);
        span.setAttribute('app.status', s.code);
        throw new Error('response hook broke');
      },
    });
    try {
      const [metadata, traceId] = traced();
      metadata.set('x-tenant', 'acme');
      const { err } = await unary(running.client, { fail: status.NOT_FOUND }, metadata);
      await collect(running.client.serverStream({ count: 1 }, metadata));
      expect(err?.code).toBe(status.NOT_FOUND);
      expect(calls).toEqual([['/meshtrace.test.Echo/Unary', 'acme']]);
      expect(statuses).toEqual([status.NOT_FOUND]);
      expect((await serverSpans(traceId)).map((s) => s.attributes['app.status'])).toEqual([status.NOT_FOUND]);
      expect(warnings.filter((w) => /Hook threw/.test(w))).toHaveLength(2);
    } finally {
      stop(running);
    }
  });

  test.each([
    ['ignore', { ignore: 'Unary' }],
    ['ignore', { ignore: [42] }],
    ['tracerProvider', { tracerProvider: {} }],
    ['requestHook', { requestHook: 'yes' }],
    ['responseHook', { responseHook: 1 }],
    ['options', 'all'],
  ])('a bad %s throws a TypeError at setup', (option, options) => {
    const message = new RegExp(`^@meshtrace/grpc: option "${option}" must be`);
    expect(() => meshServerInterceptor(options as never)).toThrow(TypeError);
    expect(() => meshServerInterceptor(options as never)).toThrow(message);
    expect(() => meshClientInterceptor(options as never)).toThrow(message);
  });

  test('meshService wants an implementation object', () => {
    expect(() => meshService(null as never)).toThrow(/^@meshtrace\/grpc: option "implementation" must be an object/);
  });

  test('meshService keeps handlers that live on a class prototype, bound to their instance', async () => {
    class Impl {
      private readonly greeting = 'hello';
      unary(_call: ServerUnaryCall<Say, Said>, callback: sendUnaryData<Said>) {
        callback(null, { text: this.greeting, seen: seen() });
      }
    }
    const running = await start(meshService(new Impl()));
    try {
      const [metadata, traceId] = traced();
      const { res } = await unary(running.client, {}, metadata);
      expect([res?.text, (JSON.parse(res!.seen) as Observed).traceId]).toEqual(['hello', traceId]);
    } finally {
      stop(running);
    }
  });
});
