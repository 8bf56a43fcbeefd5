import { SpanKind, context, propagation, trace } from '@opentelemetry/api';
import type { Attributes, Context, Link, Span, TextMapGetter, Tracer, TracerProvider } from '@opentelemetry/api';
import { headerGetter } from '@meshtrace/core';
import { callHook, checkOptions, outboundTrace } from '@meshtrace/core/adapter';
import type { OutboundTrace } from '@meshtrace/core/adapter';
import type {
  IHeaders,
  Message,
  Producer,
  ProducerBatch,
  ProducerRecord,
  RecordMetadata,
  TopicMessages,
} from 'kafkajs';
import { PACKAGE, SYSTEM, keyAttribute, recordError, tracerOf, typeName } from './message-span';

/** Options of {@link meshProducer}; all optional. */
export interface MeshProducerOptions {
  /** Where spans come from. Default: the global tracer provider at send time. */
  tracerProvider?: TracerProvider;
  /**
   * Give each message of a multi-message send its own `create` span, whose context the message
   * carries (semconv messaging "Producer spans"); `false` makes every message carry the send span's
   * context. Default `true`.
   */
  createSpans?: boolean;
  /** Called for each message with the span whose context it carries; a throw is reported, never breaks the send. */
  producerHook?: (span: Span, record: { topic: string; message: Message }) => void;
}

const WRAPPED = Symbol.for('meshtrace.kafka.producer');

type Send = (groups: TopicMessages[]) => Promise<RecordMetadata[]>;

function isMessage(m: unknown): m is Message {
  return m !== null && typeof m === 'object';
}

/** Single-message attributes, on a `create` span or on the send span of a one-message send. */
function messageAttributes(attributes: Attributes, message: Message): Attributes {
  const key = keyAttribute(message.key);
  if (key !== undefined) attributes['messaging.kafka.message.key'] = key;
  if (typeof message.partition === 'number')
    attributes['messaging.destination.partition.id'] = String(message.partition);
  if (message.value === null) attributes['messaging.kafka.message.tombstone'] = true;
  return attributes;
}

/**
 * A copy of `message` whose headers carry `from`'s trace in place of any the caller wrote (in any letter
 * case), and the merged baggage, as Buffers; the caller's other headers are kept as they are.
 */
function carrying(message: Message, ot: OutboundTrace, from: Context): Message {
  const { drop, set } = ot.traceHeaders(from);
  const buffers: Record<string, Buffer> = {};
  for (const key of Object.keys(set)) buffers[key] = Buffer.from(set[key], 'utf8');
  return { ...message, headers: ot.rewrite({ drop, set: buffers }, message.headers) as IHeaders };
}

/**
 * How a message's trace headers are decided, from the send's context and the headers the caller gave it.
 * With no active trace, a message that carries a `traceparent` keeps it untouched: semconv says a custom
 * creation context SHOULD NOT be modified, and the send span links to it. Inside a trace it is replaced.
 */
function outbound(parent: Context, message: Message): OutboundTrace {
  return outboundTrace(parent, message.headers ?? {}, headerGetter as TextMapGetter<unknown>);
}

class ProducerTracing {
  constructor(
    private readonly tracer: Tracer | undefined,
    private readonly createSpans: boolean,
    private readonly hook: MeshProducerOptions['producerHook'],
  ) {}

  /** Traces one send of `groups`; `send` gets copies whose messages carry their creation contexts. */
  async send(groups: readonly TopicMessages[], send: Send): Promise<RecordMetadata[]> {
    const tracer = tracerOf(this.tracer);
    const parent = context.active();
    let count = 0;
    let topic: string | undefined = groups[0]?.topic;
    for (const g of groups) {
      count += g.messages.length;
      if (g.topic !== topic) topic = undefined;
    }
    const single = count === 1;
    const perMessage = this.createSpans && !single;
    const out = groups.map((g) => ({ ...g, messages: g.messages.slice() }));
    const links: Link[] = [];
    // Messages that will carry the send span's context: their group, index and outbound decision.
    const pending: Array<[TopicMessages, number, OutboundTrace]> = [];

    for (let i = 0; i < out.length; i++) {
      const messages = out[i].messages;
      for (let j = 0; j < messages.length; j++) {
        const m = messages[j];
        // kafkajs rejects it with its own error.
        if (!isMessage(m)) continue;
        const ot = outbound(parent, m);
        if (ot.keepCaller) {
          if (ot.caller !== undefined) links.push({ context: ot.caller });
          messages[j] = carrying(m, ot, ot.context);
          continue;
        }
        if (!perMessage) {
          pending.push([out[i], j, ot]);
          continue;
        }
        const t = out[i].topic;
        const attributes = messageAttributes(
          {
            ...SYSTEM,
            'messaging.operation.name': 'create',
            'messaging.operation.type': 'create',
            'messaging.destination.name': t,
          },
          m,
        );
        const span = tracer.startSpan(`create ${t}`, { kind: SpanKind.PRODUCER, attributes }, ot.context);
        callHook('producerHook', this.hook, span, { topic: t, message: m }, '@meshtrace/kafka');
        messages[j] = carrying(m, ot, trace.setSpan(ot.context, span));
        links.push({ context: span.spanContext() });
        span.end();
      }
    }

    const attributes: Attributes = {
      ...SYSTEM,
      'messaging.operation.name': 'send',
      'messaging.operation.type': 'send',
    };
    // semconv: the destination goes on the span only when every message shares it.
    if (topic !== undefined) attributes['messaging.destination.name'] = topic;
    const lone = single ? out.find((g) => g.messages.length > 0)!.messages[0] : undefined;
    // semconv: message_count belongs to batches, per-message attributes to single messages.
    if (!single) attributes['messaging.batch.message_count'] = count;
    else if (isMessage(lone)) messageAttributes(attributes, lone);
    // semconv span kind: PRODUCER only when the send span's context is a message's creation context.
    const kind = pending.length > 0 ? SpanKind.PRODUCER : SpanKind.CLIENT;
    const span = tracer.startSpan(topic === undefined ? 'send' : `send ${topic}`, { kind, attributes, links }, parent);
    const ctx = trace.setSpan(parent, span);
    for (const [g, j, ot] of pending) {
      callHook('producerHook', this.hook, span, { topic: g.topic, message: g.messages[j] }, '@meshtrace/kafka');
      // The send span's context, with this message's own baggage merged in.
      g.messages[j] = carrying(
        g.messages[j],
        ot,
        propagation.setBaggage(ctx, propagation.getBaggage(ot.context) ?? propagation.createBaggage()),
      );
    }

    try {
      const result = await context.with(ctx, send, undefined, out);
      if (single && Array.isArray(result) && result.length === 1) {
        span.setAttribute('messaging.destination.partition.id', String(result[0].partition));
        const offset = Number(result[0].baseOffset);
        if (Number.isSafeInteger(offset)) span.setAttribute('messaging.kafka.offset', offset);
      }
      return result;
    } catch (err) {
      recordError(span, err);
      throw err;
    } finally {
      span.end();
    }
  }
}

/**
 * Traces a kafkajs producer in place and returns it: each `send` / `sendBatch` gets a send span,
 * child of the active context, and each message carries its own creation context in Buffer headers
 * (a multi-message send adds one `create` span per message). Message objects passed in are not changed.
 * @example
 * const producer = meshProducer(kafka.producer());
 * await producer.send({ topic: 'orders', messages: [{ value: 'hello' }] });
 */
export function meshProducer<P extends Producer>(producer: P, options: MeshProducerOptions = {}): P {
  if (
    producer === null ||
    typeof producer !== 'object' ||
    typeof producer.send !== 'function' ||
    typeof producer.sendBatch !== 'function'
  ) {
    throw new TypeError(`${PACKAGE}: producer must be a kafkajs Producer, got ${typeName(producer)}`);
  }
  const target = producer as Producer & { [WRAPPED]?: true };
  if (target[WRAPPED]) throw new TypeError(`${PACKAGE}: producer is already traced by meshProducer`);
  const o = checkOptions(PACKAGE, options, {
    tracerProvider: 'tracerProvider',
    producerHook: 'function',
    createSpans: 'boolean',
  });
  const tracing = new ProducerTracing(o.tracerProvider?.getTracer(PACKAGE), o.createSpans ?? true, o.producerHook);
  const send = target.send;
  const sendBatch = target.sendBatch;

  target.send = function meshSend(this: unknown, record: ProducerRecord): Promise<RecordMetadata[]> {
    // Malformed calls go to kafkajs untouched, to fail the way they always do.
    if (record === null || typeof record !== 'object' || !Array.isArray(record.messages))
      return send.call(this, record);
    return tracing.send([{ topic: record.topic, messages: record.messages }], (out) =>
      send.call(this, { ...record, messages: out[0].messages }),
    );
  };
  target.sendBatch = function meshSendBatch(this: unknown, batch: ProducerBatch): Promise<RecordMetadata[]> {
    const groups = batch?.topicMessages ?? [];
    if (
      !Array.isArray(groups) ||
      !groups.every((g) => g !== null && typeof g === 'object' && Array.isArray(g.messages))
    )
      return sendBatch.call(this, batch);
    return tracing.send(groups, (out) => sendBatch.call(this, { ...batch, topicMessages: out }));
  };
  target[WRAPPED] = true;
  return producer;
}
