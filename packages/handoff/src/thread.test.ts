import { context, propagation, trace } from '@opentelemetry/api';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { createServerTracing } from '@meshtrace/core/adapter';
import { HEADER_CASES, PARENT_ID, TRACE_ID, checkCase, delta, observe, setupTestTracing } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';
import { contextCarrier, runWithCarrier } from '@meshtrace/handoff';

const tracing = setupTestTracing();
const VALID = `00-${TRACE_ID}-${PARENT_ID}-01`;

interface WorkerSpan {
  readonly name: string;
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string | undefined;
}

let worker: Worker;
let server: Server;
let base: string;
const waiting = new Map<number, (result: unknown) => void>();
const workerSpans: WorkerSpan[] = [];
let nextId = 0;

/** Runs a task in the worker, with or without the active context, and resolves with its result. */
function dispatch(task: 'observe' | 'span', withCarrier: boolean): Promise<unknown> {
  const id = nextId++;
  return new Promise((resolve) => {
    waiting.set(id, resolve);
    worker.postMessage({ id, task, carrier: withCarrier ? contextCarrier() : undefined });
  });
}

beforeAll(async () => {
  worker = new Worker(join(__dirname, '..', 'test', 'thread.worker.js'));
  // A worker that fails to start would otherwise leave every dispatch waiting until the test times out.
  worker.on('error', (err) => {
    for (const settle of waiting.values()) settle({ workerError: String(err) });
    waiting.clear();
  });
  worker.on('message', (m: { id: number; result: unknown; span?: WorkerSpan }) => {
    if (m.span) workerSpans.push(m.span);
    else waiting.get(m.id)?.(m.result);
  });
  // A request handler that hands work to the worker, as a service moving CPU work off its event loop would.
  const serverTracing = createServerTracing(undefined, { name: 'thread.test' });
  server = createServer((req, res) => {
    const t = serverTracing.start(req, res);
    const url = new URL(req.url ?? '/', 'http://localhost');
    void context.with(t.context, async () => {
      const result = await dispatch(
        url.pathname === '/span' ? 'span' : 'observe',
        url.searchParams.get('carrier') !== 'no',
      );
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ result, serverSpanId: t.span.spanContext().spanId }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  await worker.terminate();
  await tracing.shutdown();
});

async function request(
  path: string,
  headers: Readonly<Record<string, string | readonly string[]>>,
): Promise<{ result: unknown; serverSpanId: string }> {
  const h = new Headers();
  for (const [k, v] of Object.entries(headers)) for (const one of Array.isArray(v) ? v : [v]) h.append(k, one);
  const res = await fetch(`${base}${path}`, { headers: h });
  const body = (await res.json()) as { result: unknown; serverSpanId: string };
  await new Promise((r) => setImmediate(r));
  return body;
}

describe('header cases through a worker thread', () => {
  // The worker sees exactly the request's context: same span, flags, tracestate and baggage.
  test.each(HEADER_CASES.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    tracing.reset();
    const before = await tracing.outcomeCounts();
    const droppedBefore = await tracing.droppedCounts();
    const { result } = await request('/observe', c.headers);
    const problems = checkCase(
      c,
      result as Observed,
      tracing.spans(),
      delta(before, await tracing.outcomeCounts()),
      delta(droppedBefore, await tracing.droppedCounts()),
    );
    expect(problems).toEqual([]);
  });
});

describe('spans made in the worker', () => {
  test('with the carrier they join the request: its trace id, the dispatching span as parent', async () => {
    workerSpans.length = 0;
    const { result, serverSpanId } = await request('/span', { traceparent: VALID });
    expect(workerSpans).toEqual([
      { name: 'resize image', traceId: TRACE_ID, spanId: result, parentSpanId: serverSpanId },
    ]);
  });

  test('without it they are roots of new traces', async () => {
    workerSpans.length = 0;
    const { result } = await request('/span?carrier=no', { traceparent: VALID });
    expect(workerSpans).toEqual([
      {
        name: 'resize image',
        traceId: expect.stringMatching(/^[0-9a-f]{32}$/),
        spanId: result,
        parentSpanId: undefined,
      },
    ]);
    expect(workerSpans[0].traceId).not.toBe(TRACE_ID);
  });
});

describe('carriers that are not one', () => {
  const throwing = new Proxy(
    {},
    {
      ownKeys: () => {
        throw new Error('unreadable');
      },
      getOwnPropertyDescriptor: () => {
        throw new Error('unreadable');
      },
    },
  );
  const cases: ReadonlyArray<[string, unknown, string]> = [
    ['undefined', undefined, 'missing'],
    ['null', null, 'missing'],
    ['a string', VALID, 'missing'],
    ['an empty object', {}, 'missing'],
    ['a number traceparent (read as absent)', { traceparent: 42 }, 'missing'],
    ['two traceparents', { traceparent: [VALID, VALID] }, 'malformed:multiple'],
    ['a carrier that throws when read', throwing, 'malformed:bad-format'],
  ];
  test.each(cases)('%s gives a fresh root, counted, and never throws', async (name, carrier, outcome) => {
    tracing.reset();
    const before = await tracing.outcomeCounts();
    runWithCarrier(carrier, () => trace.getTracer('test').startSpan('work').end());
    const [span] = tracing.spans();
    expect({ name, parent: span.parentSpanContext, other: span.spanContext().traceId !== TRACE_ID }).toEqual({
      name,
      parent: undefined,
      other: true,
    });
    expect({ name, counted: delta(before, await tracing.outcomeCounts()) }).toEqual({
      name,
      counted: { [outcome]: 1 },
    });
  });

  test('runWithCarrier passes arguments and returns the result, inside the captured context', () => {
    const span = trace.getTracer('test').startSpan('request');
    const bag = propagation.createBaggage({ tenant: { value: 'acme' } });
    const carrier = context.with(propagation.setBaggage(trace.setSpan(context.active(), span), bag), () =>
      contextCarrier(),
    );
    span.end();
    const [seen, sum] = runWithCarrier(carrier, (a: number, b: number) => [observe(), a + b] as const, 2, 3);
    expect(sum).toBe(5);
    expect(seen.spanId).toBe(span.spanContext().spanId);
    expect(seen.baggage).toEqual({ tenant: 'acme' });
  });
});
