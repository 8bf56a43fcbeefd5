import { DiagLogLevel, ROOT_CONTEXT, SpanKind, SpanStatusCode, context, diag, trace } from '@opentelemetry/api';
import type { DiagLogger, TracerProvider } from '@opentelemetry/api';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { warner } from '@meshtrace/core/adapter';
import { HEADER_CASES, PARENT_ID, TRACE_ID, checkCase, delta, observe, setupTestTracing } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';
import { MAX_FRAME_HEADER_BYTES, encodeFrame, meshFrameHandler } from '@meshtrace/frames';
import type { FrameHandlerOptions } from '@meshtrace/frames';

const tracing = setupTestTracing();
const VALID = `00-${TRACE_ID}-${PARENT_ID}-01`;

interface Reply {
  readonly seen?: Observed;
  readonly payload?: string;
  readonly rejected?: string;
}

let wss: WebSocketServer;
let url: string;
let client: WebSocket;
let handled = 0;

async function connect(): Promise<WebSocket> {
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  return ws;
}

/** Sends one message and waits for the server's answer to it. */
function exchange(data: Uint8Array, ws: WebSocket = client): Promise<Reply> {
  return new Promise((resolve, reject) => {
    ws.once('message', (reply) => resolve(JSON.parse(String(reply)) as Reply));
    ws.send(data, (err) => err && reject(err));
  });
}

beforeAll(async () => {
  wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => wss.once('listening', resolve));
  url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
  wss.on('connection', (ws, req) => {
    // A connection bound to a span, as an instrumented upgrade request would leave it.
    if (req.url === '/bound') {
      const upgrade = trace.getTracer('test').startSpan('upgrade');
      upgrade.end();
      context.bind(trace.setSpan(ROOT_CONTEXT, upgrade), ws);
    }
    ws.on(
      'message',
      meshFrameHandler(
        function (frame) {
          handled++;
          this.send(JSON.stringify({ seen: observe(), payload: frame.payload.toString() }));
        },
        { onInvalidFrame: (reason) => ws.send(JSON.stringify({ rejected: reason })) },
      ),
    );
  });
  client = await connect();
});
afterAll(async () => {
  client.close();
  for (const ws of wss.clients) ws.terminate();
  await new Promise((resolve) => wss.close(resolve));
  await tracing.shutdown();
});

describe('header cases over a WebSocket', () => {
  test.each(HEADER_CASES.map((c) => [c.name, c] as const))('%s', async (name, c) => {
    tracing.reset();
    const before = await tracing.outcomeCounts();
    const droppedBefore = await tracing.droppedCounts();
    // ROOT_CONTEXT: the case's headers go out raw, nothing injected over them.
    const reply = await exchange(encodeFrame(name, c.headers, ROOT_CONTEXT));
    expect({ name, payload: reply.payload }).toEqual({ name, payload: name });
    const problems = checkCase(
      c,
      reply.seen!,
      tracing.spans(),
      delta(before, await tracing.outcomeCounts()),
      delta(droppedBefore, await tracing.droppedCounts()),
      SpanKind.CONSUMER,
    );
    expect(problems).toEqual([]);
  });
});

describe('end to end', () => {
  test("the handler's CONSUMER span is a child of the sender's span", async () => {
    tracing.reset();
    const tracer = trace.getTracer('test');
    const reply = await tracer.startActiveSpan('send chat', { kind: SpanKind.PRODUCER }, (span) => {
      const sent = exchange(encodeFrame('hi'));
      span.end();
      return sent;
    });
    const producer = tracing.spans().find((s) => s.name === 'send chat')!;
    const consumer = tracing.spans().find((s) => s.kind === SpanKind.CONSUMER)!;
    expect(consumer.spanContext().traceId).toBe(producer.spanContext().traceId);
    expect(consumer.parentSpanContext?.spanId).toBe(producer.spanContext().spanId);
    expect(reply.seen!.spanId).toBe(consumer.spanContext().spanId);
    expect(consumer.name).toBe('process frame');
    expect(consumer.attributes).toEqual({
      'messaging.operation.type': 'process',
      'messaging.message.body.size': 2,
      'meshtrace.propagation.outcome': 'continued',
      'meshtrace.propagation.format': 'w3c',
    });
  });

  test('a frame without context on a connection bound to a span starts a fresh root, not a child of that span', async () => {
    tracing.reset();
    const bound = await new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(`${url}/bound`);
      ws.once('open', () => resolve(ws)).once('error', reject);
    });
    const reply = await exchange(encodeFrame('x', {}, ROOT_CONTEXT), bound);
    bound.close();
    const consumer = tracing.spans().find((s) => s.kind === SpanKind.CONSUMER)!;
    expect(consumer.parentSpanContext).toBeUndefined();
    expect(reply.seen!.spanId).toBe(consumer.spanContext().spanId);
    expect(consumer.attributes['meshtrace.propagation.outcome']).toBe('missing');
  });
});

describe('bad input over the socket', () => {
  const good = encodeFrame('payload', { traceparent: VALID }, ROOT_CONTEXT);
  const tooLarge = Buffer.from(good);
  tooLarge.writeUInt16BE(MAX_FRAME_HEADER_BYTES + 1, 3);
  const rejected: ReadonlyArray<[string, Uint8Array, string]> = [
    ['truncated frame', good.subarray(0, good.length - 3), 'truncated'],
    ['truncated prefix', good.subarray(0, 4), 'truncated'],
    ['oversized header block', Buffer.concat([tooLarge, Buffer.alloc(MAX_FRAME_HEADER_BYTES)]), 'header-too-large'],
    ['garbage bytes', Buffer.from('\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03'), 'not-a-frame'],
    ['text', Buffer.from('{"hello":"world"}'), 'not-a-frame'],
    // Magic, version 1, a 4-byte header block, no payload: one entry whose 1-byte key is 0xe9.
    ['non-UTF-8 key', Buffer.from([0x4d, 0x54, 1, 0, 4, 0, 0, 0, 0, 1, 0xe9, 0, 0]), 'bad-header'],
  ];
  const lines: string[] = [];
  const logger: DiagLogger = {
    error: () => undefined,
    warn: (m) => void lines.push(m),
    info: () => undefined,
    debug: () => undefined,
    verbose: () => undefined,
  };
  beforeAll(() => diag.setLogger(logger, DiagLogLevel.WARN));
  afterAll(() => diag.disable());

  test.each(rejected)('%s is rejected, counted and reported; the handler does not run', async (name, data, reason) => {
    warner.reset();
    lines.length = 0;
    const calls = handled;
    const before = await tracing.outcomeCounts();
    const reply = await exchange(data);
    expect({ name, reply, handlerRan: handled !== calls }).toEqual({
      name,
      reply: { rejected: reason },
      handlerRan: false,
    });
    expect({ name, counted: delta(before, await tracing.outcomeCounts()) }).toEqual({
      name,
      counted: { 'malformed:bad-format': 1 },
    });
    expect({ name, lines }).toEqual({
      name,
      lines: [expect.stringContaining(`could not read the trace context carrier (undecodable frame: ${reason})`)],
    });
  });

  test('the connection still works after every bad frame', async () => {
    expect((await exchange(good)).seen!.traceId).toBe(TRACE_ID);
  });

  const latin = (s: string) => Buffer.from(s, 'latin1');
  const nonUtf8: ReadonlyArray<[string, Record<string, Buffer>, string, Record<string, number>]> = [
    [
      'traceparent with a 0xff byte',
      { traceparent: latin(`00-\xff${TRACE_ID.slice(1)}-${PARENT_ID}-01`) },
      'malformed:bad-trace-id',
      {},
    ],
    [
      'traceparent in Latin-1 with an accent',
      { traceparent: latin(`00-${TRACE_ID}-${PARENT_ID}-0\xe9`) },
      'malformed:bad-flags',
      {},
    ],
    [
      'baggage member with invalid UTF-8',
      { traceparent: latin(VALID), baggage: latin('a=\xc3(,b=2') },
      'continued',
      { 'baggage:bad-member': 1 },
    ],
    [
      'tracestate with a 0xff byte',
      { traceparent: latin(VALID), tracestate: latin('congo=\xff') },
      'continued',
      { 'tracestate:bad-member': 1 },
    ],
  ];
  test.each(nonUtf8)('%s: the handler runs with the right outcome', async (name, headers, outcome, dropped) => {
    tracing.reset();
    const before = await tracing.outcomeCounts();
    const droppedBefore = await tracing.droppedCounts();
    const reply = await exchange(encodeFrame('x', headers, ROOT_CONTEXT));
    const continued = outcome === 'continued';
    expect({ name, continued: reply.seen!.traceId === TRACE_ID }).toEqual({ name, continued });
    expect({ name, counted: delta(before, await tracing.outcomeCounts()) }).toEqual({
      name,
      counted: { [outcome]: 1 },
    });
    expect({ name, dropped: delta(droppedBefore, await tracing.droppedCounts()) }).toEqual({ name, dropped });
  });
});

describe('the handler and its hooks', () => {
  const frame = encodeFrame('x', { traceparent: VALID }, ROOT_CONTEXT);
  const consumerSpans = () => tracing.spans().filter((s) => s.kind === SpanKind.CONSUMER);

  test('a throw is recorded on the span and reaches the caller', () => {
    tracing.reset();
    const listener = meshFrameHandler(() => {
      throw new RangeError('boom');
    });
    expect(() => listener(frame)).toThrow('boom');
    const [span] = consumerSpans();
    expect(span.status).toEqual({ code: SpanStatusCode.ERROR, message: 'boom' });
    expect(span.attributes['error.type']).toBe('RangeError');
    expect(span.events.map((e) => e.name)).toEqual(['exception']);
  });

  test('an async handler keeps the span open until it settles; a rejection reaches the caller', async () => {
    tracing.reset();
    let finish!: () => void;
    const listener = meshFrameHandler(() => new Promise<void>((resolve) => (finish = resolve)));
    const pending = listener(frame);
    await new Promise((r) => setImmediate(r));
    expect(consumerSpans()).toHaveLength(0);
    finish();
    await pending;
    expect(consumerSpans()).toHaveLength(1);

    const failing = meshFrameHandler(async () => {
      throw new Error('later');
    });
    await expect(failing(frame)).rejects.toThrow('later');
    expect(consumerSpans()[1].status).toEqual({ code: SpanStatusCode.ERROR, message: 'later' });
  });

  test('frameHook sees the span and the frame; a throwing hook breaks nothing', () => {
    tracing.reset();
    const seen: string[] = [];
    const listener = meshFrameHandler(() => 'done', {
      frameHook: (span, f) => {
        span.setAttribute('app.payload', f.payload.toString());
        throw new Error('hook failed');
      },
      onInvalidFrame: (reason) => {
        seen.push(reason);
        throw new Error('hook failed too');
      },
    });
    expect(listener(frame)).toBe('done');
    expect(listener(Buffer.from('junk'))).toBeUndefined();
    expect(consumerSpans().map((s) => s.attributes['app.payload'])).toEqual(['x']);
    expect(seen).toEqual(['not-a-frame']);
  });

  test('spans come from the tracerProvider option, named by spanName', () => {
    tracing.reset();
    const names: string[] = [];
    const provider: TracerProvider = {
      getTracer: (name, ...rest) => (names.push(name), tracing.provider.getTracer(name, ...rest)),
    };
    const listener = meshFrameHandler(() => undefined, { tracerProvider: provider, spanName: 'process chat' });
    listener(frame);
    listener(frame);
    expect(names).toEqual(['@meshtrace/frames']);
    expect(consumerSpans().map((s) => s.name)).toEqual(['process chat', 'process chat']);
  });

  const bad: ReadonlyArray<[string, unknown, unknown, string]> = [
    ['handler', 'nope', undefined, 'option "handler" must be a function, got "nope"'],
    ['options', () => undefined, 'x', 'option "options" must be an object, got "x"'],
    ['options null', () => undefined, null, 'option "options" must be an object, got null'],
    [
      'tracerProvider',
      () => undefined,
      { tracerProvider: {} },
      'option "tracerProvider" must be a TracerProvider, got {}',
    ],
    ['spanName', () => undefined, { spanName: '' }, 'option "spanName" must be a non-empty string, got ""'],
    ['frameHook', () => undefined, { frameHook: 1 }, 'option "frameHook" must be a function, got 1'],
    [
      'onInvalidFrame',
      () => undefined,
      { onInvalidFrame: true },
      'option "onInvalidFrame" must be a function, got true',
    ],
  ];
  test.each(bad)('bad %s throws a TypeError naming it', (name, handler, options, message) => {
    let error: unknown;
    try {
      meshFrameHandler(handler as () => void, options as FrameHandlerOptions);
    } catch (err) {
      error = err;
    }
    expect({ name, error: String(error), type: error instanceof TypeError }).toEqual({
      name,
      error: `TypeError: @meshtrace/frames: ${message}`,
      type: true,
    });
  });
});
