import { ROOT_CONTEXT, SpanKind, context, trace } from '@opentelemetry/api';
import type { Attributes, Span, TextMapGetter, Tracer, TracerProvider } from '@opentelemetry/api';
import { extractContext, headerGetter } from '@meshtrace/core';
import {
  callHook,
  checkOptions,
  outboundTrace,
  outcomeAttributes,
  recordSpanError,
  runInSpan,
} from '@meshtrace/core/adapter';
import type { HeaderCarrier } from '@meshtrace/core';
import type { ConsumeMessage, Message, Options } from 'amqplib';

const PACKAGE = '@meshtrace/rabbitmq';

/** What a publish sent, as the {@link RabbitMqTraceOptions.publishHook} sees it. */
export interface PublishInfo {
  readonly exchange: string;
  readonly routingKey: string;
  readonly content: Buffer;
  /** The options as sent: a copy of the caller's, with the trace headers written in. */
  readonly options: Options.Publish;
}

/** Options of {@link instrumentChannel}; all optional. */
export interface RabbitMqTraceOptions {
  /** Where spans come from. Default: the global tracer provider at publish / delivery time. */
  tracerProvider?: TracerProvider;
  /**
   * Called once a PRODUCER span has started, before the message is written; a throw is reported, never breaks the
   * publish.
   */
  publishHook?: (span: Span, publish: PublishInfo) => void;
  /**
   * Called once a CONSUMER span has started, before the handler runs; a throw is reported, never breaks the delivery.
   */
  consumeHook?: (span: Span, message: ConsumeMessage) => void;
}

/**
 * The channel methods this package wraps; amqplib's `Channel` and `ConfirmChannel` (promise or callback API) have them.
 */
export interface AmqpChannel {
  publish(
    exchange: string,
    routingKey: string,
    content: Buffer,
    options?: Options.Publish,
    ...rest: unknown[]
  ): boolean;
  consume(
    queue: string,
    onMessage: (message: Message | null) => void,
    options?: Options.Consume,
    ...rest: unknown[]
  ): unknown;
  ack(message: Message, allUpTo?: boolean): void;
  ackAll(): void;
  nack(message: Message, allUpTo?: boolean, requeue?: boolean): void;
  nackAll(requeue?: boolean): void;
  reject(message: Message, requeue?: boolean): void;
  on(event: 'close', listener: () => void): unknown;
}

/** How a delivery was settled, as `meshtrace.rabbitmq.settlement` records it. */
type Settlement = 'ack' | 'nack' | 'reject' | 'auto-ack' | 'channel-closed';

/** One delivery's CONSUMER span, which ends once the handler has finished and the message is settled. */
interface Delivery {
  readonly span: Span;
  running: boolean;
  settled: boolean;
}

type Publish = (
  this: unknown,
  exchange: string,
  routingKey: string,
  content: Buffer,
  options?: Options.Publish,
  ...rest: unknown[]
) => boolean;
type Consume = (
  this: unknown,
  queue: string,
  onMessage: unknown,
  options?: Options.Consume,
  ...rest: unknown[]
) => unknown;
type Handler = (this: unknown, message: ConsumeMessage | null) => unknown;

const instrumented = new WeakSet<object>();
const NO_HEADERS: HeaderCarrier = Object.freeze({});

function isFunction(value: unknown): value is (...args: never[]) => unknown {
  return typeof value === 'function';
}

/** Queue names starting `amq.` are the server's own (generated or reply-to): no good in a span name. */
function nameable(name: string): boolean {
  return name.length > 0 && !name.startsWith('amq.');
}

/**
 * Semantic conventions for RabbitMQ (since v1.30): `{exchange}:{routing key}` when publishing, with
 * `:{queue}` when consuming; empty parts left out; `amq.default` when nothing is left.
 */
function destination(exchange: string, routingKey: string, queue?: string): string {
  let out = exchange;
  if (routingKey) out = out ? `${out}:${routingKey}` : routingKey;
  if (queue) out = out ? `${out}:${queue}` : queue;
  return out || 'amq.default';
}

function messageAttributes(
  attributes: Attributes,
  routingKey: string,
  messageId: unknown,
  correlationId: unknown,
): Attributes {
  if (routingKey) attributes['messaging.rabbitmq.destination.routing_key'] = routingKey;
  if (typeof messageId === 'string' && messageId) attributes['messaging.message.id'] = messageId;
  if (typeof correlationId === 'string' && correlationId)
    attributes['messaging.message.conversation_id'] = correlationId;
  return attributes;
}

/**
 * Traces an amqplib channel in place and returns it: every `publish` / `sendToQueue` gets a PRODUCER
 * span (child of the active context) whose context goes out in the message headers; every message a
 * `consume` handler receives runs in a CONSUMER span, child of the producer's context (a missing or
 * malformed `traceparent` gives a fresh root, counted and warned). The CONSUMER span ends once the
 * handler has returned (its promise settled, if it returns one) and the message is settled: ack, nack,
 * reject, `noAck` delivery, or the channel closing. A handler that throws or rejects ends it with
 * ERROR at once. On a confirm channel the PRODUCER span ends when the broker confirms (ERROR on nack).
 * Instrumenting a channel again changes nothing.
 * @example
 * const channel = instrumentChannel(await connection.createConfirmChannel());
 * channel.sendToQueue('orders', Buffer.from(body));
 */
export function instrumentChannel<C extends AmqpChannel>(channel: C, options?: RabbitMqTraceOptions): C {
  if (
    channel === null ||
    typeof channel !== 'object' ||
    !isFunction(channel.publish) ||
    !isFunction(channel.consume) ||
    !isFunction(channel.on)
  ) {
    throw new TypeError(
      `${PACKAGE}: channel must be an amqplib Channel or ConfirmChannel, got ` +
        `${channel === null ? 'null' : typeof channel}`,
    );
  }
  const { tracerProvider, publishHook, consumeHook } = checkOptions(PACKAGE, options ?? undefined, {
    tracerProvider: 'tracerProvider',
    publishHook: 'function',
    consumeHook: 'function',
  });
  if (instrumented.has(channel)) return channel;
  instrumented.add(channel);

  const ownTracer = tracerProvider?.getTracer(PACKAGE);
  const tracer = (): Tracer => ownTracer ?? trace.getTracer(PACKAGE);
  const confirms = isFunction((channel as { waitForConfirms?: unknown }).waitForConfirms);
  // Delivery tags are per channel and grow monotonically (RabbitMQ, Consumer Acknowledgements), so insertion order is
  // tag order.
  const pending = new Map<number, Delivery>();

  function settleOne(delivery: Delivery, how: Settlement, requeue: boolean | undefined): void {
    delivery.settled = true;
    const span = delivery.span;
    span.setAttribute('meshtrace.rabbitmq.settlement', how);
    if (requeue !== undefined) span.setAttribute('meshtrace.rabbitmq.requeue', requeue);
    span.addEvent(how);
    if (!delivery.running) span.end();
  }

  function settleTag(tag: number, how: Settlement, requeue?: boolean): void {
    const delivery = pending.get(tag);
    if (delivery === undefined) return;
    pending.delete(tag);
    settleOne(delivery, how, requeue);
  }

  /** Settles every delivery up to `tag` (AMQP `multiple`), or all of them when `tag` is undefined. */
  function settleUpTo(tag: number | undefined, how: Settlement, requeue?: boolean): void {
    for (const [t, delivery] of pending) {
      if (tag !== undefined && t > tag) break;
      pending.delete(t);
      settleOne(delivery, how, requeue);
    }
  }

  function finish(delivery: Delivery): void {
    delivery.running = false;
    if (delivery.settled) delivery.span.end();
  }

  /** The handler threw or rejected (runInSpan recorded it): the span ends now, settled or not. */
  function fail(delivery: Delivery, tag: number): void {
    delivery.running = false;
    if (pending.get(tag) === delivery) pending.delete(tag);
    delivery.span.end();
  }

  function traced(queue: string, noAck: boolean, onMessage: Handler): Handler {
    const name = nameable(queue) ? `process ${queue}` : 'process';
    return function tracedHandler(this: unknown, message: ConsumeMessage | null): unknown {
      // null is the broker cancelling the consumer: no message, no span.
      if (message === null || typeof message !== 'object') return onMessage.call(this, message);
      const { fields, properties } = message;
      // Deliveries come from the connection's socket, whose async context is wherever the
      // connection was opened; the message's own headers are the only parent it has.
      const extracted = extractContext(properties.headers ?? NO_HEADERS, headerGetter, ROOT_CONTEXT);
      const attributes = messageAttributes(
        {
          'messaging.system': 'rabbitmq',
          'messaging.operation.type': 'process',
          'messaging.operation.name': 'process',
          'messaging.destination.name': destination(fields.exchange, fields.routingKey, queue),
          'messaging.rabbitmq.message.delivery_tag': fields.deliveryTag,
        },
        fields.routingKey,
        properties.messageId,
        properties.correlationId,
      );
      outcomeAttributes(extracted.outcome, attributes);
      const span = tracer().startSpan(name, { kind: SpanKind.CONSUMER, attributes }, extracted.context);
      callHook('consumeHook', consumeHook, span, message, '@meshtrace/rabbitmq');
      const delivery: Delivery = { span, running: true, settled: noAck };
      if (noAck) settleOne(delivery, 'auto-ack', undefined);
      else pending.set(fields.deliveryTag, delivery);

      // A throw reaches amqplib, which closes the channel with it, as it would without us; a rejection
      // stays as unhandled as amqplib (which ignores the promise) leaves it.
      return runInSpan(span, trace.setSpan(extracted.context, span), onMessage, this, message, {
        settled: (_span, failed) => (failed ? fail(delivery, fields.deliveryTag) : finish(delivery)),
      });
    };
  }

  const publish = channel.publish as Publish;
  const consume = channel.consume as Consume;
  const { ack, ackAll, nack, nackAll, reject } = channel;

  // sendToQueue calls this.publish in both amqplib APIs, so it is traced here too.
  channel.publish = function tracedPublish(
    this: unknown,
    exchange: string,
    routingKey: string,
    content: Buffer,
    publishOptions?: Options.Publish,
    ...rest: unknown[]
  ): boolean {
    const parent = context.active();
    const attributes = messageAttributes(
      {
        'messaging.system': 'rabbitmq',
        'messaging.operation.type': 'send',
        'messaging.operation.name': 'publish',
        'messaging.destination.name': destination(exchange, routingKey),
      },
      routingKey,
      publishOptions?.messageId,
      publishOptions?.correlationId,
    );
    // The default exchange routes by queue name, so there the routing key names the destination.
    const name = exchange ? `publish ${exchange}` : nameable(routingKey) ? `publish ${routingKey}` : 'publish';
    const given = publishOptions?.headers as HeaderCarrier | null | undefined;
    const ot = outboundTrace(
      parent,
      given !== null && typeof given === 'object' ? given : NO_HEADERS,
      headerGetter as TextMapGetter<unknown>,
    );
    const span = tracer().startSpan(name, { kind: SpanKind.PRODUCER, attributes }, ot.context);

    // A copy, so the caller's options and headers are never written to. Trace headers the caller
    // passed (in any letter case) give way to this publish's context, unless there is none to give.
    const headers = ot.rewrite(
      ot.traceHeaders(trace.setSpan(ot.context, span)),
      given !== null && typeof given === 'object' ? { ...given } : {},
    ) as HeaderCarrier;
    const sent: Options.Publish = { ...publishOptions, headers };
    if (publishHook !== undefined)
      callHook(
        'publishHook',
        publishHook,
        span,
        { exchange, routingKey, content, options: sent },
        '@meshtrace/rabbitmq',
      );

    let ended = false;
    const end = (error?: unknown) => {
      if (ended) return;
      ended = true;
      if (error) recordSpanError(span, error);
      span.end();
    };
    if (confirms) {
      const callback = rest[0];
      rest[0] = function onConfirm(this: unknown, err: unknown, ok: unknown): void {
        end(err);
        // The caller's callback runs in the caller's context, not in the socket's.
        if (isFunction(callback)) context.with(parent, callback as (...args: unknown[]) => void, this, err, ok);
      };
    }
    try {
      return publish.call(this, exchange, routingKey, content, sent, ...rest);
    } catch (err) {
      end(err);
      throw err;
    } finally {
      if (!confirms) end();
    }
  };

  channel.consume = function tracedConsume(
    this: unknown,
    queue: string,
    onMessage: unknown,
    consumeOptions?: Options.Consume,
    ...rest: unknown[]
  ): unknown {
    const handler = isFunction(onMessage)
      ? traced(queue, consumeOptions?.noAck === true, onMessage as Handler)
      : onMessage;
    return consume.call(this, queue, handler, consumeOptions, ...rest);
  } as C['consume'];

  // Settle after the call: a call that throws (channel closed) settled nothing.
  channel.ack = function tracedAck(this: unknown, message: Message, allUpTo?: boolean): void {
    ack.call(this, message, allUpTo);
    if (allUpTo === true) settleUpTo(message.fields.deliveryTag, 'ack');
    else settleTag(message.fields.deliveryTag, 'ack');
  };
  channel.ackAll = function tracedAckAll(this: unknown): void {
    ackAll.call(this);
    settleUpTo(undefined, 'ack');
  };
  channel.nack = function tracedNack(this: unknown, message: Message, allUpTo?: boolean, requeue?: boolean): void {
    nack.call(this, message, allUpTo, requeue);
    if (allUpTo === true) settleUpTo(message.fields.deliveryTag, 'nack', requeue !== false);
    else settleTag(message.fields.deliveryTag, 'nack', requeue !== false);
  };
  channel.nackAll = function tracedNackAll(this: unknown, requeue?: boolean): void {
    nackAll.call(this, requeue);
    settleUpTo(undefined, 'nack', requeue !== false);
  };
  channel.reject = function tracedReject(this: unknown, message: Message, requeue?: boolean): void {
    reject.call(this, message, requeue);
    settleTag(message.fields.deliveryTag, 'reject', requeue !== false);
  };
  // Whatever was not settled goes back to the queue with the channel.
  channel.on('close', () => settleUpTo(undefined, 'channel-closed'));
  return channel;
}
