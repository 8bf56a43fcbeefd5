import { ROOT_CONTEXT, SpanKind, SpanStatusCode, context, propagation, trace } from '@opentelemetry/api';
import type { Span } from '@opentelemetry/api';
import { Kafka, Partitioners, logLevel } from 'kafkajs';
import type { Admin, Consumer, ConsumerConfig, IHeaders, KafkaMessage, Message, Producer } from 'kafkajs';
import {
  HEADER_CASES,
  PARENT_ID,
  SPELLINGS,
  TRACE_ID,
  callerHeaders,
  checkCase,
  delta,
  observe,
  setupTestTracing,
  startKafka,
} from '@meshtrace/testkit';
import type { KafkaBroker, Observed } from '@meshtrace/testkit';
import { warner } from '@meshtrace/core/adapter';
import { meshConsumer, meshProducer } from '@meshtrace/kafka';
import type { MeshConsumerOptions, MeshConsumerRunConfig, MeshProducerOptions } from '@meshtrace/kafka';

// One real broker (Apache Kafka, KRaft) for the whole file; every test has topics and groups of its own.
const tracing = setupTestTracing();
type ReadableSpan = ReturnType<typeof tracing.spans>[number];
const tracer = trace.getTracer('test');
let broker: KafkaBroker;
let kafka: Kafka;
let admin: Admin;
let stops: Array<() => Promise<void>> = [];
let serial = 0;
const unique = (name: string) => `${name}-${++serial}`;

/** Consumer settings that keep a test's group quick to form and to rebalance. */
const FAST: Omit<ConsumerConfig, 'groupId'> = {
  maxWaitTimeInMs: 50,
  sessionTimeout: 6000,
  rebalanceTimeout: 10_000,
  heartbeatInterval: 300,
};

beforeAll(async () => {
  broker = await startKafka();
  kafka = new Kafka({
    clientId: 'meshtrace-test',
    brokers: [broker.address],
    logLevel: logLevel.NOTHING,
    retry: { initialRetryTime: 50, retries: 10 },
  });
  admin = kafka.admin();
  await admin.connect();
}, 90_000);
afterAll(async () => {
  await admin?.disconnect();
  await broker?.stop();
  await tracing.shutdown();
}, 30_000);

async function stopAll(): Promise<void> {
  const s = stops;
  stops = [];
  await Promise.all(s.map((stop) => stop()));
}

/** Creates `topics` with `partitions` each and waits for their leaders, so no test races topic creation. */
async function makeTopics(topics: string[], partitions = 1): Promise<void> {
  await admin.createTopics({
    topics: topics.map((topic) => ({ topic, numPartitions: partitions, replicationFactor: 1 })),
    waitForLeaders: true,
  });
}

async function connectProducer(): Promise<Producer> {
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  stops.push(() => producer.disconnect());
  return producer;
}

/** A traced consumer of `topics` (created here), running `config`; returns its group id. */
async function startConsumer(
  topics: string[],
  config: MeshConsumerRunConfig,
  options?: MeshConsumerOptions,
): Promise<string> {
  await makeTopics(topics);
  const groupId = unique('group');
  const consumer = meshConsumer(kafka.consumer({ groupId, ...FAST }), options);
  await consumer.connect();
  stops.push(() => consumer.disconnect());
  await consumer.subscribe({ topics, fromBeginning: true });
  await consumer.run(config);
  return groupId;
}

/** How many records the broker holds for `topic`, over all its partitions. */
async function stored(topic: string): Promise<number> {
  const offsets = await admin.fetchTopicOffsets(topic);
  return offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `done()` holds; fails naming `what` after `ms`. */
async function until(what: string, done: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Values pushed by handlers, awaited by the test in order. */
function inbox<T>(): { push(value: T): void; next(): Promise<T> } {
  const values: T[] = [];
  const waiters: Array<(value: T) => void> = [];
  return {
    push: (value) => (waiters.length > 0 ? waiters.shift()!(value) : values.push(value)),
    next: () =>
      values.length > 0 ? Promise.resolve(values.shift()!) : new Promise((resolve) => waiters.push(resolve)),
  };
}

/** Lets the span of a handler that just returned end. */
const settled = () => new Promise((resolve) => setImmediate(resolve));

function spansNamed(name: string): ReadableSpan[] {
  return tracing.spans().filter((s) => s.name === name);
}

/** Runs `fn` inside a fresh `request` span, the way a service sends from inside its own work. */
async function inRequest(fn: () => Promise<unknown>, baggage?: Record<string, string>): Promise<Span> {
  const request = tracer.startSpan('request', {}, ROOT_CONTEXT);
  let ctx = trace.setSpan(ROOT_CONTEXT, request);
  if (baggage)
    ctx = propagation.setBaggage(
      ctx,
      propagation.createBaggage(Object.fromEntries(Object.entries(baggage).map(([k, v]) => [k, { value: v }]))),
    );
  await context.with(ctx, fn);
  request.end();
  return request;
}

/** kafkajs retries a failed handler unless the error is a TypeError, RangeError, ReferenceError or SyntaxError. */
class PaymentError extends Error {
  override name = 'PaymentError';
}

const text = (v: IHeaders[string]) => (Array.isArray(v) ? v.map(String) : v === undefined ? undefined : String(v));

describe('header cases through a real produce and consume', () => {
  const topic = unique('cases');
  const seen = inbox<{ key: string; seen: Observed }>();
  // Uninstrumented: the headers on the wire are exactly the case's, as Buffers.
  let producer: Producer;

  beforeAll(async () => {
    producer = await connectProducer();
    await startConsumer([topic], {
      eachMessage: async ({ message }) => seen.push({ key: String(message.key), seen: observe() }),
    });
  });
  afterAll(stopAll);

  test.each(HEADER_CASES.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    tracing.reset();
    const before = await tracing.outcomeCounts();
    const droppedBefore = await tracing.droppedCounts();
    const headers: IHeaders = {};
    for (const [k, v] of Object.entries(c.headers))
      headers[k] = Array.isArray(v) ? v.map((one) => Buffer.from(one)) : Buffer.from(v);
    await producer.send({ topic, messages: [{ key: c.name, value: 'case', headers }] });
    const got = await seen.next();
    await settled();
    expect(got.key).toBe(c.name);
    const problems = checkCase(
      c,
      got.seen,
      tracing.spans(),
      delta(before, await tracing.outcomeCounts()),
      delta(droppedBefore, await tracing.droppedCounts()),
      SpanKind.CONSUMER,
    );
    expect(problems).toEqual([]);
  });
});

describe('producer and consumer', () => {
  afterEach(stopAll);
  beforeEach(() => tracing.reset());

  test('a send span per send, and the process span is its child', async () => {
    const topic = unique('orders');
    const got = inbox<{ seen: Observed; message: KafkaMessage }>();
    const group = await startConsumer([topic], {
      eachMessage: async ({ message }) => got.push({ seen: observe(), message }),
    });
    const producer = meshProducer(await connectProducer());
    const request = await inRequest(() => producer.send({ topic, messages: [{ key: 'order-1', value: 'one' }] }));
    const { seen, message } = await got.next();
    await settled();

    const [send] = spansNamed(`send ${topic}`);
    const [process] = spansNamed(`process ${topic}`);
    expect(send.kind).toBe(SpanKind.PRODUCER);
    expect(send.parentSpanContext?.spanId).toBe(request.spanContext().spanId);
    expect(send.attributes).toEqual({
      'messaging.system': 'kafka',
      'messaging.operation.name': 'send',
      'messaging.operation.type': 'send',
      'messaging.destination.name': topic,
      'messaging.destination.partition.id': '0',
      'messaging.kafka.message.key': 'order-1',
      'messaging.kafka.offset': 0,
    });
    expect(process.kind).toBe(SpanKind.CONSUMER);
    expect(process.spanContext().traceId).toBe(send.spanContext().traceId);
    expect(process.parentSpanContext?.spanId).toBe(send.spanContext().spanId);
    expect(process.attributes).toEqual({
      'messaging.system': 'kafka',
      'messaging.operation.name': 'process',
      'messaging.operation.type': 'process',
      'messaging.destination.name': topic,
      'messaging.destination.partition.id': '0',
      'messaging.kafka.offset': 0,
      'messaging.kafka.message.key': 'order-1',
      'messaging.consumer.group.name': group,
      'meshtrace.propagation.outcome': 'continued',
      'meshtrace.propagation.format': 'w3c',
    });
    expect(seen.spanId).toBe(process.spanContext().spanId);
    expect(Buffer.isBuffer(message.headers?.traceparent)).toBe(true);
    expect(String(message.headers?.traceparent)).toBe(
      `00-${send.spanContext().traceId}-${send.spanContext().spanId}-01`,
    );
  });

  test('sendBatch to two topics: one create span per message, a CLIENT send span linking them, caller objects untouched', async () => {
    const orders = unique('orders');
    const invoices = unique('invoices');
    const got = inbox<KafkaMessage>();
    await startConsumer([orders, invoices], { eachMessage: async ({ message }) => got.push(message) });
    const producer = meshProducer(await connectProducer());
    const callerHeaders = { 'x-caller': 'kept' };
    const ordersMessages: Message[] = [
      { key: 'a1', value: '1', headers: callerHeaders },
      { key: 'a2', value: '2' },
    ];
    const invoicesMessages: Message[] = [{ key: 'b1', value: '3', partition: 0 }];
    const batch = {
      topicMessages: [
        { topic: orders, messages: ordersMessages },
        { topic: invoices, messages: invoicesMessages },
      ],
    };
    const before = JSON.stringify(batch);
    const request = await inRequest(() => producer.sendBatch(batch));
    const received = [await got.next(), await got.next(), await got.next()];
    await settled();

    expect([await stored(orders), await stored(invoices)]).toEqual([2, 1]);
    expect(JSON.stringify(batch)).toBe(before);
    expect(ordersMessages[0].headers).toBe(callerHeaders);
    expect(Object.keys(callerHeaders)).toEqual(['x-caller']);
    expect(ordersMessages[1].headers).toBeUndefined();

    const creates = tracing.spans().filter((s) => s.attributes['messaging.operation.type'] === 'create');
    expect(creates.map((s) => s.name).sort()).toEqual([`create ${invoices}`, `create ${orders}`, `create ${orders}`]);
    for (const c of creates) {
      expect(c.kind).toBe(SpanKind.PRODUCER);
      expect(c.parentSpanContext?.spanId).toBe(request.spanContext().spanId);
    }
    expect(new Set(creates.map((s) => s.spanContext().spanId)).size).toBe(3);
    const [send] = spansNamed('send');
    expect(send.kind).toBe(SpanKind.CLIENT);
    expect(send.parentSpanContext?.spanId).toBe(request.spanContext().spanId);
    expect(send.attributes['messaging.batch.message_count']).toBe(3);
    expect(send.attributes['messaging.destination.name']).toBeUndefined();
    expect(send.links.map((l) => l.context.spanId).sort()).toEqual(creates.map((s) => s.spanContext().spanId).sort());

    for (const message of received) {
      const key = String(message.key);
      const create = creates.find((s) => s.attributes['messaging.kafka.message.key'] === key)!;
      const process = tracing
        .spans()
        .find((s) => s.kind === SpanKind.CONSUMER && s.attributes['messaging.kafka.message.key'] === key)!;
      expect([key, process.parentSpanContext?.spanId]).toEqual([key, create.spanContext().spanId]);
      expect([key, String(message.headers?.traceparent)]).toEqual([
        key,
        `00-${create.spanContext().traceId}-${create.spanContext().spanId}-01`,
      ]);
    }
    expect(String(received.find((m) => String(m.key) === 'a1')!.headers?.['x-caller'])).toBe('kept');
    expect(
      creates.find((s) => s.attributes['messaging.kafka.message.key'] === 'b1')!.attributes[
        'messaging.destination.partition.id'
      ],
    ).toBe('0');
  });

  test('createSpans: false makes every message carry the send span context', async () => {
    const topic = unique('orders');
    const got = inbox<KafkaMessage>();
    await startConsumer([topic], { eachMessage: async ({ message }) => got.push(message) });
    const producer = meshProducer(await connectProducer(), { createSpans: false });
    await inRequest(() => producer.send({ topic, messages: [{ value: '1' }, { value: '2' }] }));
    await got.next();
    await got.next();
    await settled();

    const [send] = spansNamed(`send ${topic}`);
    expect(send.kind).toBe(SpanKind.PRODUCER);
    expect(send.attributes['messaging.batch.message_count']).toBe(2);
    expect(spansNamed(`create ${topic}`)).toEqual([]);
    const parents = spansNamed(`process ${topic}`).map((s) => s.parentSpanContext?.spanId);
    expect(parents).toEqual([send.spanContext().spanId, send.spanContext().spanId]);
  });

  test('eachBatch: one span per message, each handled in its own context through withMessage', async () => {
    const topic = unique('orders');
    const seen = inbox<{ key: string; seen: Observed }>();
    const batches = inbox<number>();
    await startConsumer([topic], {
      eachBatch: async ({ batch, withMessage, resolveOffset }) => {
        for (const message of batch.messages) {
          // m3 is handled with the batch as a whole, not through withMessage.
          if (String(message.key) !== 'm3')
            await withMessage(message, async (m) => seen.push({ key: String(m.key), seen: observe() }));
          resolveOffset(message.offset);
        }
        batches.push(batch.messages.length);
      },
    });
    const producer = meshProducer(await connectProducer());
    await inRequest(() => producer.send({ topic, messages: ['m1', 'm2', 'm3'].map((key) => ({ key, value: key })) }));
    let total = 0;
    while (total < 3) total += await batches.next();
    await settled();

    const [send] = spansNamed(`send ${topic}`);
    expect(send.kind).toBe(SpanKind.CLIENT);
    expect(send.attributes['messaging.batch.message_count']).toBe(3);
    const creates = spansNamed(`create ${topic}`);
    const processes = spansNamed(`process ${topic}`);
    expect(processes).toHaveLength(3);
    for (const key of ['m1', 'm2', 'm3']) {
      const create = creates.find((s) => s.attributes['messaging.kafka.message.key'] === key)!;
      const process = processes.find((s) => s.attributes['messaging.kafka.message.key'] === key)!;
      expect([key, process.kind, process.parentSpanContext?.spanId]).toEqual([
        key,
        SpanKind.CONSUMER,
        create.spanContext().spanId,
      ]);
      expect([key, process.attributes['messaging.batch.message_count']]).toEqual([key, undefined]);
    }
    for (const key of ['m1', 'm2']) {
      const got = await seen.next();
      const process = processes.find((s) => s.attributes['messaging.kafka.message.key'] === got.key)!;
      expect([key, got.key, got.seen.spanId]).toEqual([key, key, process.spanContext().spanId]);
    }
  });

  test('link mode: the process span starts a new trace linked to the producer, keeping baggage', async () => {
    const topic = unique('orders');
    const got = inbox<Observed>();
    await startConsumer([topic], { eachMessage: async () => got.push(observe()) }, { mode: 'link' });
    const producer = meshProducer(await connectProducer());
    await inRequest(() => producer.send({ topic, messages: [{ value: 'fan-in' }] }), { tenant: 'acme' });
    const seen = await got.next();
    await settled();

    const [send] = spansNamed(`send ${topic}`);
    const [process] = spansNamed(`process ${topic}`);
    expect(process.parentSpanContext).toBeUndefined();
    expect(process.spanContext().traceId).not.toBe(send.spanContext().traceId);
    expect(process.links.map((l) => l.context.spanId)).toEqual([send.spanContext().spanId]);
    expect(process.links[0].context.traceId).toBe(send.spanContext().traceId);
    expect(process.attributes['meshtrace.propagation.outcome']).toBe('continued');
    expect(seen.spanId).toBe(process.spanContext().spanId);
    expect(seen.baggage).toEqual({ tenant: 'acme' });
    // A fresh root's trace id is random, so downstream gets the Level 2 random flag.
    expect(seen.outbound.traceparent).toBe(`00-${seen.traceId}-${seen.spanId}-03`);
  });

  test('a handler that throws ends its span with ERROR and kafkajs delivers the message again', async () => {
    const topic = unique('orders');
    const got = inbox<string>();
    let attempts = 0;
    await startConsumer([topic], {
      eachMessage: async ({ message }) => {
        if (++attempts === 1) throw new PaymentError('payment service down');
        got.push(message.offset);
      },
    });
    const producer = meshProducer(await connectProducer());
    await inRequest(() => producer.send({ topic, messages: [{ value: 'retry me' }] }));
    expect(await got.next()).toBe('0');
    await settled();

    const [send] = spansNamed(`send ${topic}`);
    const [failed, retried] = spansNamed(`process ${topic}`);
    expect(failed.status).toEqual({ code: SpanStatusCode.ERROR, message: 'payment service down' });
    expect(failed.attributes['error.type']).toBe('PaymentError');
    expect(failed.events.map((e) => e.name)).toEqual(['exception']);
    expect(retried.status.code).toBe(SpanStatusCode.UNSET);
    for (const s of [failed, retried]) {
      expect(s.attributes['messaging.kafka.offset']).toBe(0);
      expect(s.parentSpanContext?.spanId).toBe(send.spanContext().spanId);
    }
  });

  test('a throw inside withMessage ends that message span with ERROR and reaches kafkajs', async () => {
    const topic = unique('orders');
    const done = inbox<string>();
    let attempts = 0;
    await startConsumer([topic], {
      eachBatch: async ({ batch, withMessage, resolveOffset }) => {
        for (const message of batch.messages) {
          await withMessage(message, async () => {
            if (++attempts === 1) throw new PaymentError('card declined');
          });
          resolveOffset(message.offset);
          done.push(message.offset);
        }
      },
    });
    const producer = meshProducer(await connectProducer());
    await producer.send({ topic, messages: [{ value: 'x' }] });
    expect(await done.next()).toBe('0');
    await settled();

    const [failed, retried] = spansNamed(`process ${topic}`);
    expect([failed.status.code, failed.attributes['error.type']]).toEqual([SpanStatusCode.ERROR, 'PaymentError']);
    expect(retried.status.code).toBe(SpanStatusCode.UNSET);
  });

  test.each([
    ['string', `00-${TRACE_ID}-${PARENT_ID}-01`],
    ['Buffer', Buffer.from(`00-${TRACE_ID}-${PARENT_ID}-01`)],
  ])('a traceparent header written as a %s is continued', async (kind, value) => {
    const topic = unique('orders');
    const got = inbox<Observed>();
    await startConsumer([topic], { eachMessage: async () => got.push(observe()) });
    const producer = await connectProducer();
    await producer.send({ topic, messages: [{ value: 'x', headers: { traceparent: value } }] });
    const seen = await got.next();
    await settled();
    const [process] = spansNamed(`process ${topic}`);
    expect([kind, seen.traceId, process.parentSpanContext?.spanId]).toEqual([kind, TRACE_ID, PARENT_ID]);
  });

  test('caller headers of every type reach the consumer as bytes beside the injected context', async () => {
    const topic = unique('orders');
    const got = inbox<KafkaMessage>();
    await startConsumer([topic], { eachMessage: async ({ message }) => got.push(message) });
    const producer = meshProducer(await connectProducer());
    const headers = {
      'x-text': 'héllo',
      'x-bytes': Buffer.from([0xde, 0xad, 0x00]),
      'x-list': ['a', Buffer.from('b')],
    };
    await producer.send({ topic, messages: [{ value: 'x', headers }] });
    const message = await got.next();

    expect(Object.keys(headers)).toEqual(['x-text', 'x-bytes', 'x-list']);
    const h = message.headers!;
    expect(Buffer.isBuffer(h['x-text'])).toBe(true);
    expect(String(h['x-text'])).toBe('héllo');
    expect(h['x-bytes']).toEqual(Buffer.from([0xde, 0xad, 0x00]));
    expect(text(h['x-list'])).toEqual(['a', 'b']);
    expect(Buffer.isBuffer(h.traceparent)).toBe(true);
    expect(String(h.traceparent)).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  });

  test("with no active trace, a message's own traceparent is kept as its creation context, and the send span links to it", async () => {
    const topic = unique('orders');
    const got = inbox<KafkaMessage>();
    await startConsumer([topic], { eachMessage: async ({ message }) => got.push(message) });
    const producer = meshProducer(await connectProducer());
    const own = `00-${TRACE_ID}-${PARENT_ID}-01`;
    await context.with(ROOT_CONTEXT, () =>
      producer.send({ topic, messages: [{ value: 'relayed', headers: { TraceParent: own } }] }),
    );
    const message = await got.next();
    await settled();

    expect(Object.keys(message.headers!)).toEqual(['TraceParent']);
    expect(String(message.headers!.TraceParent)).toBe(own);
    const [send] = spansNamed(`send ${topic}`);
    expect(send.kind).toBe(SpanKind.CLIENT);
    expect(send.links.map((l) => [l.context.traceId, l.context.spanId])).toEqual([[TRACE_ID, PARENT_ID]]);
    const [process] = spansNamed(`process ${topic}`);
    expect([process.spanContext().traceId, process.parentSpanContext?.spanId]).toEqual([TRACE_ID, PARENT_ID]);
  });

  // The caller's trace headers, in any letter case, give way to the send's: one of each on the wire.
  test.each(SPELLINGS.flatMap(([spelling, spell]) => [1, 2].map((count) => [spelling, count, spell] as const)))(
    "inside a trace, the caller's %s trace headers are replaced, in a send of %i message(s)",
    async (spelling, count, spell) => {
      const topic = unique('relay');
      const got = inbox<KafkaMessage>();
      await startConsumer([topic], { eachMessage: async ({ message }) => got.push(message) });
      const producer = meshProducer(await connectProducer());
      // Kafka keeps header names as written: each spelling is a header of its own on the wire.
      const stale: IHeaders = Object.fromEntries(callerHeaders(spell));
      const messages = Array.from({ length: count }, (_, i) => ({ key: String(i), value: 'relayed', headers: stale }));
      const request = await inRequest(() => producer.send({ topic, messages }), { tenant: 'acme', region: 'eu' });
      const received = [];
      for (let i = 0; i < count; i++) received.push(await got.next());
      await settled();
      for (const message of received) {
        const h = message.headers!;
        const names = Object.keys(h)
          .map((k) => k.toLowerCase())
          .sort();
        const tp = String(h.traceparent);
        // One send: the send span's context; several: each message its own create span's.
        const carrier =
          count === 1
            ? spansNamed(`send ${topic}`)[0]
            : spansNamed(`create ${topic}`).find((s) => tp.includes(s.spanContext().spanId));
        expect({
          spelling,
          count,
          names,
          traceparent: tp,
          baggage: String(h.baggage),
          custom: String(h['x-custom']),
        }).toEqual({
          spelling,
          count,
          names: ['baggage', 'traceparent', 'x-custom'],
          traceparent: `00-${request.spanContext().traceId}-${carrier?.spanContext().spanId}-01`,
          baggage: 'tenant=override,region=eu,caller=1',
          custom: 'kept',
        });
      }
      // The caller's objects are left as they were.
      expect(stale[spell('tracestate')]).toBe('stale=1');
    },
  );

  test('hooks see each span; a throwing hook is reported and never breaks a send or a message', async () => {
    const topic = unique('orders');
    const got = inbox<string>();
    const warn = jest.spyOn(warner, 'warn');
    await startConsumer(
      [topic],
      { eachMessage: async ({ message }) => got.push(String(message.value)) },
      {
        consumerHook: () => {
          throw new Error('hook bug');
        },
      },
    );
    const producer = meshProducer(await connectProducer(), {
      producerHook: (span, { message }) => span.setAttribute('app.order', String(message.key)),
    });
    await producer.send({ topic, messages: [{ key: 'o-7', value: 'v' }] });
    expect(await got.next()).toBe('v');
    await settled();
    expect(spansNamed(`send ${topic}`)[0].attributes['app.order']).toBe('o-7');
    expect(spansNamed(`process ${topic}`)).toHaveLength(1);
    expect(warn.mock.calls.map(([key]) => key)).toContain('hook:@meshtrace/kafka:consumerHook');
    warn.mockRestore();
  });

  test('a tombstone with a binary key: tombstone attribute, and no key attribute since the key is not text', async () => {
    const topic = unique('orders');
    const got = inbox<KafkaMessage>();
    await startConsumer([topic], { eachMessage: async ({ message }) => got.push(message) });
    const producer = meshProducer(await connectProducer());
    await producer.send({ topic, messages: [{ key: Buffer.from([0xff, 0xfe]), value: null }] });
    expect((await got.next()).value).toBeNull();
    await settled();
    for (const span of [...spansNamed(`send ${topic}`), ...spansNamed(`process ${topic}`)]) {
      expect([
        span.name,
        span.attributes['messaging.kafka.message.tombstone'],
        span.attributes['messaging.kafka.message.key'],
      ]).toEqual([span.name, true, undefined]);
    }
    expect(tracing.spans()).toHaveLength(2);
  });
});

describe('consumer groups and untraced messages', () => {
  afterEach(stopAll);
  beforeEach(() => tracing.reset());

  test('a second member joins mid-stream: across the rebalance every delivery gets its span, parented on its send', async () => {
    const topic = unique('rebalance');
    await makeTopics([topic], 2);
    const groupId = unique('group');
    const deliveries: Array<{ member: string; key: string; partition: number; seen: Observed }> = [];
    const joins: Array<{ member: string; partitions: number[] }> = [];
    const member = async (name: string) => {
      const consumer = meshConsumer(kafka.consumer({ groupId, ...FAST }));
      consumer.on(consumer.events.GROUP_JOIN, ({ payload }) =>
        joins.push({ member: name, partitions: [...(payload.memberAssignment[topic] ?? [])].sort() }),
      );
      await consumer.connect();
      stops.push(() => consumer.disconnect());
      await consumer.subscribe({ topics: [topic], fromBeginning: true });
      await consumer.run({
        eachMessage: async ({ partition, message }) => {
          deliveries.push({ member: name, key: String(message.key), partition, seen: observe() });
        },
      });
    };
    const lastJoin = (name: string) => joins.filter((j) => j.member === name).at(-1);
    const delivered = (keys: string[]) => keys.every((key) => deliveries.some((d) => d.key === key));
    const keys = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => `m${from + i}`);
    const producer = meshProducer(await connectProducer());
    // Each message its own send, inside its own request: its own trace, its own send span.
    const send = (i: number) =>
      inRequest(() => producer.send({ topic, messages: [{ key: `m${i}`, value: String(i), partition: i % 2 }] }));

    await member('a');
    await until('member a to own both partitions', () => lastJoin('a')?.partitions.length === 2);
    for (let i = 0; i < 6; i++) await send(i);
    await until('m0..m5 delivered to a', () => delivered(keys(0, 6)));
    // b joins while messages keep coming: one every 30 ms until the group has rebalanced.
    const rebalanced = () => lastJoin('a')?.partitions.length === 1 && lastJoin('b')?.partitions.length === 1;
    const joining = member('b');
    let sent = 6;
    const deadline = Date.now() + 20_000;
    while (!rebalanced()) {
      if (Date.now() > deadline) throw new Error('timed out waiting for the rebalance');
      await send(sent++);
      await sleep(30);
    }
    await joining;
    const during = sent - 6;
    for (let i = 0; i < 4; i++) await send(sent++);
    await until(`m0..m${sent - 1} delivered`, () => delivered(keys(0, sent)));
    await settled();

    const owner = new Map<number, string>();
    for (const name of ['a', 'b']) for (const partition of lastJoin(name)!.partitions) owner.set(partition, name);
    expect([...owner.keys()].sort()).toEqual([0, 1]);
    expect(joins.filter((j) => j.member === 'a').length).toBeGreaterThanOrEqual(2);
    // After the rebalance each member gets the messages of its own partition.
    expect(during).toBeGreaterThan(0);
    for (const key of keys(sent - 4, sent)) {
      const d = deliveries.filter((one) => one.key === key);
      expect([key, d.map((one) => one.member)]).toEqual([key, [owner.get(d[0].partition)]]);
    }
    expect(new Set(deliveries.map((d) => d.member))).toEqual(new Set(['a', 'b']));

    const sends = spansNamed(`send ${topic}`);
    const processes = spansNamed(`process ${topic}`);
    expect(sends).toHaveLength(sent);
    // A message handed to b after a's uncommitted read is delivered again: each delivery has a span of its own.
    expect(processes).toHaveLength(deliveries.length);
    for (const d of deliveries) {
      const send = sends.find((s) => s.attributes['messaging.kafka.message.key'] === d.key)!;
      const process = processes.find((s) => s.spanContext().spanId === d.seen.spanId);
      expect({
        key: d.key,
        trace: process?.spanContext().traceId,
        parent: process?.parentSpanContext?.spanId,
        group: process?.attributes['messaging.consumer.group.name'],
        partition: process?.attributes['messaging.destination.partition.id'],
      }).toEqual({
        key: d.key,
        trace: send.spanContext().traceId,
        parent: send.spanContext().spanId,
        group: groupId,
        partition: String(d.partition),
      });
    }
  }, 60_000);

  test.each([
    ['no trace headers', {} as IHeaders, 'missing', undefined],
    ['a malformed traceparent', { traceparent: `00-${TRACE_ID}-${PARENT_ID}-1` }, 'malformed', 'bad-format'],
    [
      'a malformed traceparent as bytes',
      { traceparent: Buffer.from(`ff-${TRACE_ID}-${PARENT_ID}-01`) },
      'malformed',
      'bad-version',
    ],
  ] as const)(
    'a message with %s is processed in a fresh root, and a relay from its handler forwards that trace only',
    async (_name, headers, outcome, reason) => {
      const inbound = unique('inbound');
      const outbound = unique('outbound');
      const relay = meshProducer(await connectProducer());
      const seen = inbox<Observed>();
      await startConsumer([inbound], {
        // Relays the message with the headers it came with, as a forwarding service does.
        eachMessage: async ({ message }) => {
          seen.push(observe());
          await relay.send({ topic: outbound, messages: [{ value: message.value, headers: message.headers }] });
        },
      });
      const relayed = inbox<KafkaMessage>();
      await makeTopics([outbound]);
      const reader = kafka.consumer({ groupId: unique('reader'), ...FAST });
      await reader.connect();
      stops.push(() => reader.disconnect());
      await reader.subscribe({ topics: [outbound], fromBeginning: true });
      await reader.run({ eachMessage: async ({ message }) => relayed.push(message) });

      const before = await tracing.outcomeCounts();
      // Uninstrumented: the headers on the wire are exactly these.
      const plain = await connectProducer();
      await plain.send({ topic: inbound, messages: [{ key: 'k', value: 'untraced', headers }] });
      const handler = await seen.next();
      const message = await relayed.next();
      await settled();

      const [process] = spansNamed(`process ${inbound}`);
      expect(process.parentSpanContext).toBeUndefined();
      expect(process.spanContext().traceId).not.toBe(TRACE_ID);
      expect(process.attributes['meshtrace.propagation.outcome']).toBe(outcome);
      expect(process.attributes['meshtrace.propagation.reason']).toBe(reason);
      expect(delta(before, await tracing.outcomeCounts())).toEqual({ [reason ? `${outcome}:${reason}` : outcome]: 1 });
      expect(handler.spanId).toBe(process.spanContext().spanId);

      const [relaySend] = spansNamed(`send ${outbound}`);
      expect(relaySend.parentSpanContext?.spanId).toBe(process.spanContext().spanId);
      const names = Object.keys(message.headers!);
      expect(names).toEqual(['traceparent']);
      // A fresh root draws its trace id at random, so the relay carries the Level 2 random flag.
      expect(String(message.headers!.traceparent)).toBe(
        `00-${process.spanContext().traceId}-${relaySend.spanContext().spanId}-03`,
      );
      if ('traceparent' in headers) expect(String(message.headers!.traceparent)).not.toBe(String(headers.traceparent));
    },
  );
});

describe('configuration errors', () => {
  const producer = () => kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  const consumer = () => kafka.consumer({ groupId: unique('group') });
  test.each<[string, () => unknown, RegExp]>([
    [
      'producer not a producer',
      () => meshProducer(null as unknown as Producer),
      /^@meshtrace\/kafka: producer must be a kafkajs Producer, got null$/,
    ],
    [
      'consumer not a consumer',
      () => meshConsumer({} as Consumer),
      /^@meshtrace\/kafka: consumer must be a kafkajs Consumer, got object$/,
    ],
    [
      'options not an object',
      () => meshProducer(producer(), 'fast' as MeshProducerOptions),
      /^@meshtrace\/kafka: option "options" must be an object/,
    ],
    [
      'tracerProvider',
      () => meshConsumer(consumer(), { tracerProvider: {} as never }),
      /^@meshtrace\/kafka: option "tracerProvider" must be a TracerProvider/,
    ],
    [
      'createSpans',
      () => meshProducer(producer(), { createSpans: 'no' as never }),
      /^@meshtrace\/kafka: option "createSpans" must be a boolean, got "no"$/,
    ],
    [
      'producerHook',
      () => meshProducer(producer(), { producerHook: 1 as never }),
      /^@meshtrace\/kafka: option "producerHook" must be a function, got 1$/,
    ],
    [
      'mode',
      () => meshConsumer(consumer(), { mode: 'fan-in' as never }),
      /^@meshtrace\/kafka: option "mode" must be one of parent, link, got "fan-in"$/,
    ],
    [
      'consumerHook',
      () => meshConsumer(consumer(), { consumerHook: 'x' as never }),
      /^@meshtrace\/kafka: option "consumerHook" must be a function/,
    ],
    [
      'producer traced twice',
      () => meshProducer(meshProducer(producer())),
      /^@meshtrace\/kafka: producer is already traced by meshProducer$/,
    ],
    [
      'consumer traced twice',
      () => meshConsumer(meshConsumer(consumer()) as unknown as Consumer),
      /^@meshtrace\/kafka: consumer is already traced by meshConsumer$/,
    ],
  ])('%s', (name, make, message) => {
    let error: unknown;
    try {
      make();
    } catch (e) {
      error = e;
    }
    expect([name, error instanceof TypeError, (error as Error | undefined)?.message]).toEqual([
      name,
      true,
      expect.stringMatching(message),
    ]);
  });
});
