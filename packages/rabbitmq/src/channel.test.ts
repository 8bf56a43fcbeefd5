import { SpanKind, SpanStatusCode, context, propagation, trace } from '@opentelemetry/api';
import type { Span } from '@opentelemetry/api';
import * as amqp from 'amqplib';
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib';
import * as callbackApi from 'amqplib/callback_api';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import {
  HEADER_CASES,
  SPELLINGS,
  callerHeaders,
  checkCase,
  delta,
  observe,
  setupTestTracing,
  startRabbitMq,
} from '@meshtrace/testkit';
import type { Observed, RabbitMqBroker } from '@meshtrace/testkit';
import { instrumentChannel } from '@meshtrace/rabbitmq';
import type { RabbitMqTraceOptions } from '@meshtrace/rabbitmq';

type FinishedSpan = ReturnType<ReturnType<typeof setupTestTracing>['spans']>[number];

const tracing = setupTestTracing();
const tracer = trace.getTracer('test');
let broker: RabbitMqBroker;
let connection: ChannelModel;
/** Plays the upstream service that writes headers itself. */
let raw: Channel;
let seq = 0;

beforeAll(async () => {
  broker = await startRabbitMq();
  connection = await amqp.connect(broker.url);
  raw = await connection.createChannel();
}, 120_000);
afterAll(async () => {
  await connection?.close();
  await broker?.stop();
  await tracing.shutdown();
}, 60_000);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const tick = () => new Promise((resolve) => setImmediate(resolve));
const unique = (prefix: string) => `${prefix}-${process.pid}-${++seq}`;

async function waitFor<T>(what: string, get: () => T | undefined | false): Promise<T> {
  for (let i = 0; i < 200; i++) {
    const value = get();
    if (value) return value;
    await sleep(25);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function spanOf(messageId: string, kind: SpanKind): FinishedSpan | undefined {
  return tracing.spans().find((s) => s.kind === kind && s.attributes['messaging.message.id'] === messageId);
}

async function exclusiveQueue(channel: Channel, args?: Record<string, unknown>): Promise<string> {
  return (await channel.assertQueue('', { exclusive: true, arguments: args })).queue;
}

function inSpan<T>(name: string, fn: (span: Span) => T): T {
  return tracer.startActiveSpan(name, (span) => {
    try {
      return fn(span);
    } finally {
      span.end();
    }
  });
}

describe('header cases through a real publish and consume', () => {
  let consumer: Channel;
  let queue: string;
  const waiting = new Map<string, (seen: Observed) => void>();

  beforeAll(async () => {
    consumer = instrumentChannel(await connection.createChannel());
    queue = await exclusiveQueue(consumer);
    await consumer.consume(queue, (msg) => {
      const seen = observe();
      consumer.ack(msg!);
      waiting.get(msg!.properties.messageId)?.(seen);
    });
  });

  test.each(HEADER_CASES.map((c) => [c.name, c] as const))('header case: %s', async (_name, c) => {
    tracing.reset();
    const before = await tracing.outcomeCounts();
    const droppedBefore = await tracing.droppedCounts();
    const received = new Promise<Observed>((resolve) => waiting.set(c.name, resolve));
    raw.sendToQueue(queue, Buffer.from(c.name), { messageId: c.name, headers: { ...c.headers } });
    const seen = await received;
    await tick();
    const problems = checkCase(
      c,
      seen,
      tracing.spans(),
      delta(before, await tracing.outcomeCounts()),
      delta(droppedBefore, await tracing.droppedCounts()),
      SpanKind.CONSUMER,
    );
    expect(problems).toEqual([]);
  });
});

describe('producer to consumer', () => {
  const routes = [
    { name: 'sendToQueue (default exchange)', exchange: '', routingKey: undefined },
    { name: 'publish to a named exchange', exchange: 'mt-orders', routingKey: 'order.created' },
  ];

  test.each(routes.map((r) => [r.name, r] as const))(
    '%s: one trace, PRODUCER under the caller, CONSUMER under the PRODUCER',
    async (name, route) => {
      const producer = instrumentChannel(await connection.createChannel());
      const consumer = instrumentChannel(await connection.createChannel());
      const queue = unique('mt-orders');
      await consumer.assertQueue(queue, { exclusive: true });
      if (route.exchange) {
        await consumer.assertExchange(route.exchange, 'direct', { autoDelete: true });
        await consumer.bindQueue(queue, route.exchange, route.routingKey!);
      }
      const routingKey = route.routingKey ?? queue;
      const messageId = unique('id');
      const received = new Promise<{ seen: Observed; message: ConsumeMessage }>((resolve) =>
        consumer.consume(queue, (message) => {
          resolve({ seen: observe(), message: message! });
          consumer.ack(message!);
        }),
      );
      const bag = propagation.createBaggage({ tenant: { value: 'acme' } });
      const caller = inSpan('request', (span) =>
        context.with(propagation.setBaggage(context.active(), bag), () => {
          const options = { messageId, correlationId: 'conv-1' };
          if (route.exchange) producer.publish(route.exchange, routingKey, Buffer.from('x'), options);
          else producer.sendToQueue(queue, Buffer.from('x'), options);
          return span.spanContext();
        }),
      );
      const { seen, message } = await received;
      const send = await waitFor(`${name}: producer span`, () => spanOf(messageId, SpanKind.PRODUCER));
      const processed = await waitFor(`${name}: consumer span`, () => spanOf(messageId, SpanKind.CONSUMER));

      expect([name, send.name, send.parentSpanContext?.spanId, send.spanContext().traceId]).toEqual([
        name,
        `publish ${route.exchange || queue}`,
        caller.spanId,
        caller.traceId,
      ]);
      expect([name, send.attributes]).toEqual([
        name,
        {
          'messaging.system': 'rabbitmq',
          'messaging.operation.type': 'send',
          'messaging.operation.name': 'publish',
          'messaging.destination.name': route.exchange ? `${route.exchange}:${routingKey}` : queue,
          'messaging.rabbitmq.destination.routing_key': routingKey,
          'messaging.message.id': messageId,
          'messaging.message.conversation_id': 'conv-1',
        },
      ]);
      expect([name, message.properties.headers?.traceparent, message.properties.headers?.baggage]).toEqual([
        name,
        `00-${caller.traceId}-${send.spanContext().spanId}-01`,
        'tenant=acme',
      ]);
      expect([name, processed.name, processed.parentSpanContext?.spanId, processed.spanContext().traceId]).toEqual([
        name,
        `process ${queue}`,
        send.spanContext().spanId,
        caller.traceId,
      ]);
      expect([name, processed.attributes]).toEqual([
        name,
        {
          'messaging.system': 'rabbitmq',
          'messaging.operation.type': 'process',
          'messaging.operation.name': 'process',
          'messaging.destination.name': route.exchange
            ? `${route.exchange}:${routingKey}:${queue}`
            : `${queue}:${queue}`,
          'messaging.rabbitmq.destination.routing_key': routingKey,
          'messaging.rabbitmq.message.delivery_tag': message.fields.deliveryTag,
          'messaging.message.id': messageId,
          'messaging.message.conversation_id': 'conv-1',
          'meshtrace.propagation.outcome': 'continued',
          'meshtrace.propagation.format': 'w3c',
          'meshtrace.rabbitmq.settlement': 'ack',
        },
      ]);
      expect([name, seen.traceId, seen.spanId, seen.baggage]).toEqual([
        name,
        caller.traceId,
        processed.spanContext().spanId,
        { tenant: 'acme' },
      ]);
      await producer.close();
      await consumer.close();
    },
  );

  test('a publish outside any span starts a fresh trace at the PRODUCER span, which the consumer continues', async () => {
    const channel = instrumentChannel(await connection.createChannel());
    const queue = await exclusiveQueue(channel);
    const messageId = unique('id');
    await channel.consume(queue, (msg) => channel.ack(msg!));
    channel.sendToQueue(queue, Buffer.from('x'), { messageId });
    const send = await waitFor('producer span', () => spanOf(messageId, SpanKind.PRODUCER));
    const processed = await waitFor('consumer span', () => spanOf(messageId, SpanKind.CONSUMER));
    expect(send.parentSpanContext).toBeUndefined();
    expect(send.name).toBe('publish');
    expect([processed.spanContext().traceId, processed.parentSpanContext?.spanId]).toEqual([
      send.spanContext().traceId,
      send.spanContext().spanId,
    ]);
    expect(processed.name).toBe('process');
    await channel.close();
  });

  test('a delivery without trace headers is a fresh root even when the connection was opened inside a span', async () => {
    const own = await inSpan('startup', () => amqp.connect(broker.url));
    const channel = instrumentChannel(await own.createChannel());
    const queue = await exclusiveQueue(channel);
    const messageId = unique('id');
    const seen = new Promise<Observed>((resolve) => channel.consume(queue, () => resolve(observe()), { noAck: true }));
    raw.sendToQueue(queue, Buffer.from('x'), { messageId });
    const handler = await seen;
    const processed = await waitFor('consumer span', () => spanOf(messageId, SpanKind.CONSUMER));
    const startup = tracing.spans().find((s) => s.name === 'startup')!;
    expect(processed.parentSpanContext).toBeUndefined();
    expect(processed.spanContext().traceId).not.toBe(startup.spanContext().traceId);
    expect([handler.spanId, processed.attributes['meshtrace.propagation.outcome']]).toEqual([
      processed.spanContext().spanId,
      'missing',
    ]);
    await own.close();
  });

  test('headers given by the caller are kept, its options are not written to, stale trace headers are replaced, its baggage merged', async () => {
    const channel = instrumentChannel(await connection.createChannel());
    const queue = await exclusiveQueue(channel);
    const stale = `00-${'1'.repeat(32)}-${'2'.repeat(16)}-01`;
    const headers = Object.freeze({ 'x-tenant': 'acme', 'x-attempt': 3, Traceparent: stale, BAGGAGE: 'stale=1' });
    const options = Object.freeze({ messageId: unique('id'), headers });
    const snapshot = JSON.stringify(options);
    const received: ConsumeMessage[] = [];
    await channel.consume(queue, (msg) => received.push(msg!), { noAck: true });
    // The same options twice: each message must carry its own PRODUCER span.
    inSpan('request', () => {
      channel.sendToQueue(queue, Buffer.from('1'), options);
      channel.sendToQueue(queue, Buffer.from('2'), options);
    });
    await waitFor('two deliveries', () => received.length === 2);
    const sends = tracing
      .spans()
      .filter((s) => s.kind === SpanKind.PRODUCER && s.attributes['messaging.message.id'] === options.messageId);
    expect(JSON.stringify(options)).toBe(snapshot);
    expect(received.map((m) => m.properties.headers)).toEqual(
      sends.map((s) => ({
        'x-tenant': 'acme',
        'x-attempt': 3,
        traceparent: `00-${s.spanContext().traceId}-${s.spanContext().spanId}-01`,
        baggage: 'stale=1',
      })),
    );
    expect(new Set(sends.map((s) => s.spanContext().spanId)).size).toBe(2);
    await channel.close();
  });

  // The caller's trace headers, in any letter case, give way to the publish's: one of each in the message.
  test.each(SPELLINGS)("inside a trace, the caller's %s trace headers are replaced", async (spelling, spell) => {
    const channel = instrumentChannel(await connection.createChannel());
    const queue = await exclusiveQueue(channel);
    const messageId = unique('id');
    const received: ConsumeMessage[] = [];
    await channel.consume(queue, (msg) => received.push(msg!), { noAck: true });
    const headers = Object.fromEntries(callerHeaders(spell));
    const caller = tracer.startSpan('request');
    const ctx = propagation.setBaggage(
      trace.setSpan(context.active(), caller),
      propagation.createBaggage({ tenant: { value: 'acme' }, region: { value: 'eu' } }),
    );
    context.with(ctx, () => channel.sendToQueue(queue, Buffer.from('x'), { messageId, headers }));
    caller.end();
    await waitFor('delivery', () => received.length === 1);
    const send = await waitFor('producer span', () => spanOf(messageId, SpanKind.PRODUCER));
    expect({ spelling, headers: received[0].properties.headers }).toEqual({
      spelling,
      headers: {
        'x-custom': 'kept',
        traceparent: `00-${caller.spanContext().traceId}-${send.spanContext().spanId}-01`,
        // The caller's value wins for its key; the context's order is kept, the caller's new keys follow.
        baggage: 'tenant=override,region=eu,caller=1',
      },
    });
    await channel.close();
  });

  test('with no active trace, a traceparent the caller set on purpose is left as it is; the PRODUCER span joins that trace', async () => {
    const channel = instrumentChannel(await connection.createChannel());
    const queue = await exclusiveQueue(channel);
    const messageId = unique('id');
    const received: ConsumeMessage[] = [];
    await channel.consume(queue, (msg) => received.push(msg!), { noAck: true });
    const own = `00-${'7'.repeat(32)}-${'8'.repeat(16)}-01`;
    channel.sendToQueue(queue, Buffer.from('x'), { messageId, headers: { Traceparent: own, Tracestate: 'mine=1' } });
    await waitFor('delivery', () => received.length === 1);
    const send = await waitFor('producer span', () => spanOf(messageId, SpanKind.PRODUCER));
    expect(received[0].properties.headers).toEqual({ Traceparent: own, Tracestate: 'mine=1' });
    expect([send.spanContext().traceId, send.parentSpanContext?.spanId]).toEqual(['7'.repeat(32), '8'.repeat(16)]);
    await channel.close();
  });

  test('a publish that throws ends its span with ERROR and throws the same error', async () => {
    const channel = instrumentChannel(await connection.createChannel());
    await channel.close();
    const messageId = unique('id');
    let thrown: unknown;
    try {
      channel.sendToQueue('nowhere', Buffer.from('x'), { messageId });
    } catch (err) {
      thrown = err;
    }
    const send = spanOf(messageId, SpanKind.PRODUCER);
    expect(String(thrown)).toMatch(/Channel closed/);
    expect([send?.status, send?.attributes['error.type'], send?.events.map((e) => e.name)]).toEqual([
      { code: SpanStatusCode.ERROR, message: (thrown as Error).message },
      (thrown as Error).name,
      ['exception'],
    ]);
  });

  test('the callback API is traced the same way', async () => {
    const own = await new Promise<callbackApi.Connection>((resolve, reject) =>
      callbackApi.connect(broker.url, (err, c) => (err ? reject(err) : resolve(c))),
    );
    const channel = instrumentChannel(
      await new Promise<callbackApi.Channel>((resolve, reject) =>
        own.createChannel((err, ch) => (err ? reject(err) : resolve(ch))),
      ),
    );
    const queue = await new Promise<string>((resolve, reject) =>
      channel.assertQueue('', { exclusive: true }, (err, ok) => (err ? reject(err) : resolve(ok.queue))),
    );
    const messageId = unique('id');
    const seen = new Promise<Observed>((resolve) =>
      channel.consume(
        queue,
        (msg) => (resolve(observe()), channel.ack(msg!)),
        {},
        () => undefined,
      ),
    );
    const caller = inSpan(
      'request',
      (span) => (channel.sendToQueue(queue, Buffer.from('x'), { messageId }), span.spanContext()),
    );
    const handler = await seen;
    const send = await waitFor('producer span', () => spanOf(messageId, SpanKind.PRODUCER));
    const processed = await waitFor('consumer span', () => spanOf(messageId, SpanKind.CONSUMER));
    expect([
      send.parentSpanContext?.spanId,
      processed.parentSpanContext?.spanId,
      handler.spanId,
      handler.traceId,
    ]).toEqual([caller.spanId, send.spanContext().spanId, processed.spanContext().spanId, caller.traceId]);
    await new Promise((resolve) => own.close(resolve));
  });
});

describe('settlement on the CONSUMER span', () => {
  interface SettleCase {
    readonly name: string;
    /** Messages published; each delivery of them is one entry of `want`. */
    readonly messages: number;
    readonly noAck?: boolean;
    /** Called for each delivery, `n` counting from 1. */
    readonly handle: (channel: Channel, message: ConsumeMessage, n: number) => void;
    /** Runs once every delivery was handled. */
    readonly after?: (channel: Channel) => Promise<void>;
    /** Settlement (and requeue) of each delivery, in delivery order. */
    readonly want: ReadonlyArray<[string, boolean | undefined]>;
  }
  const cases: SettleCase[] = [
    { name: 'ack', messages: 1, handle: (ch, m) => ch.ack(m), want: [['ack', undefined]] },
    { name: 'nack without requeue', messages: 1, handle: (ch, m) => ch.nack(m, false, false), want: [['nack', false]] },
    { name: 'reject without requeue', messages: 1, handle: (ch, m) => ch.reject(m, false), want: [['reject', false]] },
    {
      name: 'reject with requeue, then ack of the redelivery',
      messages: 1,
      handle: (ch, m) => (m.fields.redelivered ? ch.ack(m) : ch.reject(m)),
      want: [
        ['reject', true],
        ['ack', undefined],
      ],
    },
    {
      name: 'ack of the last with allUpTo',
      messages: 3,
      handle: (ch, m, n) => n === 3 && ch.ack(m, true),
      want: [
        ['ack', undefined],
        ['ack', undefined],
        ['ack', undefined],
      ],
    },
    {
      name: 'nack of the last with allUpTo',
      messages: 2,
      handle: (ch, m, n) => n === 2 && ch.nack(m, true, false),
      want: [
        ['nack', false],
        ['nack', false],
      ],
    },
    {
      name: 'ackAll',
      messages: 2,
      handle: (ch, _m, n) => n === 2 && ch.ackAll(),
      want: [
        ['ack', undefined],
        ['ack', undefined],
      ],
    },
    {
      name: 'nackAll without requeue',
      messages: 2,
      handle: (ch, _m, n) => n === 2 && ch.nackAll(false),
      want: [
        ['nack', false],
        ['nack', false],
      ],
    },
    { name: 'noAck consumer', messages: 1, noAck: true, handle: () => undefined, want: [['auto-ack', undefined]] },
    {
      name: 'unsettled when the channel closes',
      messages: 2,
      handle: () => undefined,
      after: (ch) => ch.close(),
      want: [
        ['channel-closed', undefined],
        ['channel-closed', undefined],
      ],
    },
  ];

  test.each(cases.map((c) => [c.name, c] as const))('%s', async (name, c) => {
    const channel = instrumentChannel(await connection.createChannel());
    const queue = await exclusiveQueue(channel);
    const messageId = unique('id');
    let n = 0;
    await channel.consume(queue, (m) => c.handle(channel, m!, ++n), { noAck: c.noAck });
    for (let i = 0; i < c.messages; i++) raw.sendToQueue(queue, Buffer.from(String(i)), { messageId });
    await waitFor(`${name}: ${c.want.length} deliveries`, () => n === c.want.length);
    await c.after?.(channel);
    const spans = await waitFor(`${name}: ${c.want.length} ended spans`, () => {
      const found = tracing
        .spans()
        .filter((s) => s.kind === SpanKind.CONSUMER && s.attributes['messaging.message.id'] === messageId);
      return found.length === c.want.length && found;
    });
    const got = spans
      .sort(
        (a, b) =>
          Number(a.attributes['messaging.rabbitmq.message.delivery_tag']) -
          Number(b.attributes['messaging.rabbitmq.message.delivery_tag']),
      )
      .map((s) => [
        s.attributes['meshtrace.rabbitmq.settlement'],
        s.attributes['meshtrace.rabbitmq.requeue'],
        s.events.map((e) => e.name).join(),
        s.status.code,
      ]);
    expect([name, got]).toEqual([name, c.want.map(([how, requeue]) => [how, requeue, how, SpanStatusCode.UNSET])]);
    if (!c.after) await channel.close();
  });
});

describe('CONSUMER span lifetime', () => {
  test('a message acked after its handler returned: the span ends at the ack', async () => {
    const channel = instrumentChannel(await connection.createChannel());
    const queue = await exclusiveQueue(channel);
    const messageId = unique('id');
    const kept: ConsumeMessage[] = [];
    await channel.consume(queue, (m) => void kept.push(m!));
    raw.sendToQueue(queue, Buffer.from('x'), { messageId });
    await waitFor('delivery', () => kept.length === 1);
    await sleep(50);
    expect(spanOf(messageId, SpanKind.CONSUMER)).toBeUndefined();
    channel.ack(kept[0]);
    const processed = spanOf(messageId, SpanKind.CONSUMER);
    expect(processed?.attributes['meshtrace.rabbitmq.settlement']).toBe('ack');
    expect(processed!.duration[0] * 1000 + processed!.duration[1] / 1e6).toBeGreaterThanOrEqual(50);
    await channel.close();
  });

  test.each([
    ['acks first, then resolves', false],
    ['noAck, resolves later', true],
  ] as const)('an async handler that %s: the span ends when its promise settles', async (name, noAck) => {
    const channel = instrumentChannel(await connection.createChannel());
    const queue = await exclusiveQueue(channel);
    const messageId = unique('id');
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let handled = false;
    await channel.consume(
      queue,
      async (m) => {
        if (!noAck) channel.ack(m!);
        handled = true;
        await gate;
        // Still inside the delivery's context after the await.
        trace.getActiveSpan()?.setAttribute('test.after_await', true);
      },
      { noAck },
    );
    raw.sendToQueue(queue, Buffer.from('x'), { messageId });
    await waitFor(`${name}: delivery`, () => handled);
    await sleep(50);
    expect([name, spanOf(messageId, SpanKind.CONSUMER)]).toEqual([name, undefined]);
    release();
    const processed = await waitFor(`${name}: consumer span`, () => spanOf(messageId, SpanKind.CONSUMER));
    expect([
      name,
      processed.attributes['meshtrace.rabbitmq.settlement'],
      processed.attributes['test.after_await'],
      processed.status.code,
    ]).toEqual([name, noAck ? 'auto-ack' : 'ack', true, SpanStatusCode.UNSET]);
    await channel.close();
  });
});

/**
 * Jest reports every unhandled rejection as a failure of its own, so the async case runs in a child
 * Node process that loads the TypeScript sources the way jest does and reports what happened.
 */
const REJECTING_CONSUMER = `
const { readFileSync } = require('node:fs');
const Module = require('node:module');
const { join } = require('node:path');
const { transformSync } = require('@swc/core');
const [packages, url, instrument] = process.argv.slice(1);
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  const m = /^@meshtrace\\/([a-z0-9-]+)$/.exec(request);
  return resolve.call(this, m ? join(packages, m[1], 'src', 'index.ts') : request, ...rest);
};
require.extensions['.ts'] = (module, filename) => module._compile(transformSync(readFileSync(filename, 'utf8'), {
  filename, jsc: { target: 'es2022', parser: { syntax: 'typescript' } }, module: { type: 'commonjs' },
}).code, filename);
const { setupTestTracing } = require('@meshtrace/testkit');
const { instrumentChannel } = require('@meshtrace/rabbitmq');
const tracing = setupTestTracing();
const boom = new Error('async boom');
process.on('unhandledRejection', (reason) => {
  const span = tracing.spans().find((s) => s.kind === 4 /* CONSUMER */);
  const seen = span && { status: span.status, settlement: span.attributes['meshtrace.rabbitmq.settlement'], events: span.events.map((e) => e.name) };
  process.stdout.write(JSON.stringify({ sameReason: reason === boom, span: seen }));
  process.exit(0);
});
require('amqplib').connect(url).then(async (connection) => {
  const plain = await connection.createChannel();
  const channel = instrument === 'yes' ? instrumentChannel(plain) : plain;
  const { queue } = await channel.assertQueue('', { exclusive: true });
  await channel.consume(queue, async (message) => {
    channel.nack(message, false, false);
    await new Promise((resolve) => setImmediate(resolve));
    throw boom;
  });
  channel.sendToQueue(queue, Buffer.from('x'));
});
setTimeout(() => process.exit(3), 20000).unref();
`;

describe('a failing handler behaves as it would without meshtrace, and its span ends with ERROR', () => {
  test.each([
    ['without meshtrace', false],
    ['with meshtrace', true],
  ] as const)(
    'a throw closes the channel with that error and the message is requeued, %s',
    async (name, instrument) => {
      const own = await amqp.connect(broker.url);
      const plain = await own.createChannel();
      const channel = instrument ? instrumentChannel(plain) : plain;
      const queue = unique('mt-throw');
      await channel.assertQueue(queue, { autoDelete: false });
      const errors: unknown[] = [];
      channel.on('error', (err) => errors.push(err));
      const closed = new Promise((resolve) => channel.once('close', resolve));
      const boom = new Error('boom');
      const messageId = unique('id');
      await channel.consume(queue, () => {
        throw boom;
      });
      raw.sendToQueue(queue, Buffer.from('x'), { messageId });
      await closed;
      const check = await own.createChannel();
      const again = await check.get(queue, { noAck: true });
      await check.deleteQueue(queue);
      await own.close();
      expect([name, errors, again !== false && again.fields.redelivered]).toEqual([name, [boom], true]);
      const processed = spanOf(messageId, SpanKind.CONSUMER);
      if (instrument) {
        expect([
          name,
          processed?.status,
          processed?.attributes['error.type'],
          processed?.events.map((e) => e.name),
        ]).toEqual([name, { code: SpanStatusCode.ERROR, message: 'boom' }, 'Error', ['exception']]);
      } else {
        expect([name, processed]).toEqual([name, undefined]);
      }
    },
  );

  test.each([
    ['without meshtrace', 'no', undefined],
    [
      'with meshtrace',
      'yes',
      {
        status: { code: SpanStatusCode.ERROR, message: 'async boom' },
        settlement: 'nack',
        events: ['nack', 'exception'],
      },
    ],
  ] as const)(
    'a rejected promise stays an unhandled rejection with the same reason, %s',
    async (name, instrument, span) => {
      const packages = join(__dirname, '..', '..');
      const output = await new Promise<string>((resolve, reject) =>
        execFile(
          process.execPath,
          ['-e', REJECTING_CONSUMER, packages, broker.url, instrument],
          { cwd: join(__dirname, '..') },
          (err, stdout, stderr) => (err ? reject(new Error(`${name}: ${err.message}\n${stderr}`)) : resolve(stdout)),
        ),
      );
      expect([name, JSON.parse(output)]).toEqual([name, { sameReason: true, span }]);
    },
    30_000,
  );
});

describe('confirm channel', () => {
  const cases = [
    { name: 'publish, broker acks', full: false, via: 'publish' },
    { name: 'sendToQueue, broker acks', full: false, via: 'sendToQueue' },
    { name: 'publish, broker nacks (queue full)', full: true, via: 'publish' },
    { name: 'sendToQueue without a callback, then waitForConfirms', full: false, via: 'wait' },
  ] as const;

  test.each(cases.map((c) => [c.name, c] as const))('%s', async (name, c) => {
    const channel: ConfirmChannel = instrumentChannel(await connection.createConfirmChannel());
    const queue = await exclusiveQueue(
      channel,
      c.full ? { 'x-max-length': 0, 'x-overflow': 'reject-publish' } : undefined,
    );
    const messageId = unique('id');
    const confirmed = new Promise<{ err: unknown; activeSpanId: string | undefined; ended: boolean }>((resolve) => {
      const callback = (err: unknown) =>
        resolve({
          err,
          activeSpanId: trace.getActiveSpan()?.spanContext().spanId,
          ended: spanOf(messageId, SpanKind.PRODUCER) !== undefined,
        });
      inSpan('request', () => {
        if (c.via === 'publish') channel.publish('', queue, Buffer.from('x'), { messageId }, callback);
        else if (c.via === 'sendToQueue') channel.sendToQueue(queue, Buffer.from('x'), { messageId }, callback);
        else {
          channel.sendToQueue(queue, Buffer.from('x'), { messageId });
          channel.waitForConfirms().then(() => callback(null), callback);
        }
      });
    });
    const { err, activeSpanId, ended } = await confirmed;
    const request = tracing
      .spans()
      .filter((s) => s.name === 'request')
      .pop()!;
    const sends = tracing
      .spans()
      .filter((s) => s.kind === SpanKind.PRODUCER && s.attributes['messaging.message.id'] === messageId);
    expect([name, err instanceof Error, ended, sends.length, sends[0]?.status.code]).toEqual([
      name,
      c.full,
      true,
      1,
      c.full ? SpanStatusCode.ERROR : SpanStatusCode.UNSET,
    ]);
    if (c.via !== 'wait') expect([name, activeSpanId]).toEqual([name, request.spanContext().spanId]);
    await channel.close();
  });
});

describe('options and hooks', () => {
  test.each([
    ['options', 'nope'],
    ['tracerProvider', {}],
    ['publishHook', 1],
    ['consumeHook', 'hook'],
  ] as const)('a bad %s throws a TypeError naming the package and the option', async (option, value) => {
    const channel = await connection.createChannel();
    const options = (option === 'options' ? value : { [option]: value }) as RabbitMqTraceOptions;
    expect(() => instrumentChannel(channel, options)).toThrow(
      new RegExp(`^@meshtrace/rabbitmq: option "${option}" must be`),
    );
    expect(() => instrumentChannel(channel, options)).toThrow(TypeError);
    await channel.close();
  });

  test('something that is not a channel is refused', () => {
    expect(() => instrumentChannel({} as Channel)).toThrow(
      new TypeError('@meshtrace/rabbitmq: channel must be an amqplib Channel or ConfirmChannel, got object'),
    );
  });

  test('hooks see the spans; a hook that throws breaks neither the publish nor the delivery; instrumenting twice traces once', async () => {
    const seen: string[] = [];
    const options: RabbitMqTraceOptions = {
      publishHook: (span, publish) => {
        span.setAttribute('test.hook', 'publish');
        seen.push(`publish ${publish.routingKey} ${typeof publish.options.headers.traceparent}`);
        throw new Error('hook failure');
      },
      consumeHook: (span, message) => {
        span.setAttribute('test.hook', 'consume');
        seen.push(`consume ${message.content.toString()}`);
        throw new Error('hook failure');
      },
    };
    const channel = instrumentChannel(instrumentChannel(await connection.createChannel(), options), options);
    const queue = await exclusiveQueue(channel);
    const messageId = unique('id');
    await channel.consume(queue, (m) => channel.ack(m!));
    channel.sendToQueue(queue, Buffer.from('body'), { messageId });
    const processed = await waitFor('consumer span', () => spanOf(messageId, SpanKind.CONSUMER));
    const sends = tracing
      .spans()
      .filter((s) => s.kind === SpanKind.PRODUCER && s.attributes['messaging.message.id'] === messageId);
    expect(seen).toEqual([`publish ${queue} string`, 'consume body']);
    expect([
      sends.length,
      sends[0].attributes['test.hook'],
      processed.attributes['test.hook'],
      processed.parentSpanContext?.spanId,
    ]).toEqual([1, 'publish', 'consume', sends[0].spanContext().spanId]);
    await channel.close();
  });
});
