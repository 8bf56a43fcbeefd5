import { context, trace } from '@opentelemetry/api';
import type { Span } from '@opentelemetry/api';
import { EventEmitter, once } from 'node:events';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { setupTestTracing } from '@meshtrace/testkit';
import { bindEmitterToActive, bindToActive } from '@meshtrace/handoff';

const tracing = setupTestTracing();

/** Runs `fn` in a new span's context, as a request handler runs. */
function inRequest<T>(name: string, fn: (span: Span) => T): T {
  const span = trace.getTracer('test').startSpan(name);
  try {
    return context.with(trace.setSpan(context.active(), span), fn, undefined, span);
  } finally {
    span.end();
  }
}

const activeSpanId = () => trace.getActiveSpan()?.spanContext().spanId ?? 'none';

// Made at startup, shared by every request: an in-process job bus and a pooled connection.
const jobs = new EventEmitter();
let echo: Server;
let pooled: Socket;
let warmUp: Span;

beforeAll(async () => {
  echo = createServer((socket) => socket.pipe(socket));
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve));
  // The pool opens its connection lazily, during the first request: its callbacks keep that request's context.
  pooled = inRequest('first request', (span) => {
    warmUp = span;
    return connect((echo.address() as AddressInfo).port, '127.0.0.1');
  });
  await once(pooled, 'connect');
});
afterAll(async () => {
  pooled.destroy();
  await new Promise((resolve) => echo.close(resolve));
  await tracing.shutdown();
});

/** Writes to the pooled connection and resolves with the span active in `listen`'s listener. */
function roundTrip(listen: (listener: () => void) => void): Promise<string> {
  return new Promise((resolve) => {
    listen(() => resolve(activeSpanId()));
    pooled.write('ping');
  });
}

describe('bindToActive', () => {
  test('the function runs in the context of the bind, whoever calls it, with its this, arguments and result', () => {
    let aId = '';
    const fn = inRequest('a', (span) => {
      aId = span.spanContext().spanId;
      return bindToActive(function (this: { k: number }, x: number) {
        return [activeSpanId(), this.k + x] as const;
      });
    });
    const result = inRequest('b', () => fn.call({ k: 1 }, 2));
    expect(result).toEqual([aId, 3]);
    expect(fn.length).toBe(1);
  });

  test("a listener on a startup emitter runs in the emitting request's context without it, in its own with it", () => {
    const seen: Record<string, string> = {};
    const a = inRequest('request a', (span) => {
      jobs.once('done', () => (seen.plain = activeSpanId()));
      jobs.once(
        'done',
        bindToActive(() => (seen.bound = activeSpanId())),
      );
      return span.spanContext().spanId;
    });
    const b = inRequest('request b', (span) => {
      jobs.emit('done');
      return span.spanContext().spanId;
    });
    expect(seen).toEqual({ plain: b, bound: a });
  });

  test("a listener on a pooled connection runs in the context that opened it without it, in the request's with it", async () => {
    const warmUpId = warmUp.spanContext().spanId;
    const [requestId, plain] = await inRequest(
      'request c',
      async (span) => [span.spanContext().spanId, await roundTrip((l) => pooled.once('data', l))] as const,
    );
    const [otherId, bound] = await inRequest(
      'request d',
      async (span) =>
        [span.spanContext().spanId, await roundTrip((l) => pooled.once('data', bindToActive(l)))] as const,
    );
    expect({ plain, bound }).toEqual({ plain: warmUpId, bound: otherId });
    expect(plain).not.toBe(requestId);
  });

  test('refuses what is not a function', () => {
    expect(() => bindToActive('x' as unknown as () => void)).toThrow(
      new TypeError('@meshtrace/handoff: bindToActive expects a function, got string'),
    );
  });
});

describe('bindEmitterToActive', () => {
  /** A per-query emitter, as a driver makes one, fed by the pooled connection. */
  function query(bind: boolean): Promise<string> {
    const q = new EventEmitter();
    if (bind) bindEmitterToActive(q);
    return roundTrip((listener) => {
      q.once('row', listener);
      pooled.once('data', () => q.emit('row'));
    });
  }

  test("listeners added after binding run in the request's context, not the connection's", async () => {
    const warmUpId = warmUp.spanContext().spanId;
    const [plainRequest, plain] = await inRequest(
      'request e',
      async (span) => [span.spanContext().spanId, await query(false)] as const,
    );
    const [boundRequest, bound] = await inRequest(
      'request f',
      async (span) => [span.spanContext().spanId, await query(true)] as const,
    );
    expect({ plain, bound }).toEqual({ plain: warmUpId, bound: boundRequest });
    expect(plain).not.toBe(plainRequest);
  });

  test('the binding is permanent: binding again from another request does not move it', () => {
    const shared = new EventEmitter();
    const seen: string[] = [];
    const first = inRequest('request g', (span) => (bindEmitterToActive(shared), span.spanContext().spanId));
    inRequest('request h', () => {
      bindEmitterToActive(shared);
      shared.on('x', () => seen.push(activeSpanId()));
    });
    shared.emit('x');
    expect(seen).toEqual([first]);
  });

  test('refuses what is not an EventEmitter', () => {
    expect(() => bindEmitterToActive({ on() {} } as unknown as EventEmitter)).toThrow(
      new TypeError('@meshtrace/handoff: bindEmitterToActive expects an EventEmitter, got object'),
    );
  });
});
