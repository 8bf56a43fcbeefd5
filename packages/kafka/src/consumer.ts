import { SpanKind, trace } from '@opentelemetry/api';
import type { Attributes, Context, Link, Span, TimeInput, Tracer, TracerProvider } from '@opentelemetry/api';
import { extractContext, headerGetter } from '@meshtrace/core';
import { RANDOM_TRACE_ID_KEY, callHook, checkOptions, outcomeAttributes, runInSpan } from '@meshtrace/core/adapter';
import type {
  Consumer,
  ConsumerRunConfig,
  EachBatchHandler,
  EachBatchPayload,
  EachMessageHandler,
  EachMessagePayload,
  KafkaMessage,
} from 'kafkajs';
import { KAFKA_ERRORS, PACKAGE, SYSTEM, keyAttribute, recordError, tracerOf, typeName } from './message-span';

/** Options of {@link meshConsumer}; all optional. */
export interface MeshConsumerOptions {
  /** Where spans come from. Default: the global tracer provider at processing time. */
  tracerProvider?: TracerProvider;
  /**
   * How a process span relates to the message's creation context. `'parent'`: it continues the
   * producer's trace as a child. `'link'`: it starts a new trace with a link to the producer's span,
   * for fan-in consumers whose work should not grow the producers' traces. Default `'parent'`.
   */
  mode?: 'parent' | 'link';
  /** Called once a message's process span has started; a throw is reported, never breaks processing. */
  consumerHook?: (span: Span, record: { topic: string; partition: number; message: KafkaMessage }) => void;
}

/** The `eachBatch` payload of a traced consumer: kafkajs's, plus {@link MeshEachBatchPayload.withMessage}. */
export interface MeshEachBatchPayload extends EachBatchPayload {
  /**
   * Runs `fn(message)` as the processing of `message`: in the message's context, under its own
   * CONSUMER span, which ends when `fn` settles (ERROR if it throws; the error propagates).
   * Messages the handler never passes here get their span, covering the whole handler, when it
   * returns (ERROR if it threw): one span per delivered message either way.
   */
  withMessage<T>(message: KafkaMessage, fn: (message: KafkaMessage) => T | Promise<T>): Promise<T>;
}

/** An `eachBatch` handler of a traced consumer. */
export type MeshEachBatchHandler = (payload: MeshEachBatchPayload) => Promise<void>;

/** `consumer.run` options of a traced consumer. */
export type MeshConsumerRunConfig = Omit<ConsumerRunConfig, 'eachBatch'> & { eachBatch?: MeshEachBatchHandler };

/** A kafkajs consumer traced by {@link meshConsumer}. */
export type MeshConsumer<C extends Consumer = Consumer> = Omit<C, 'run'> & {
  run(config?: MeshConsumerRunConfig): Promise<void>;
};

const WRAPPED = Symbol.for('meshtrace.kafka.consumer');

class ConsumerTracing {
  /** `messaging.consumer.group.name`, learned when the consumer joins its group. */
  group: string | undefined;

  constructor(
    private readonly tracer: Tracer | undefined,
    private readonly link: boolean,
    private readonly hook: MeshConsumerOptions['consumerHook'],
  ) {}

  /** Extracts (counted; a fresh root when headers are missing or malformed) and starts the process span. */
  start(topic: string, partition: number, message: KafkaMessage, startTime?: TimeInput): [Span, Context] {
    // ROOT, not the active context: the consume loop inherits whatever was active when run() was called.
    const extracted = extractContext(message.headers ?? {}, headerGetter);
    const outcome = extracted.outcome;
    const attributes: Attributes = {
      ...SYSTEM,
      'messaging.operation.name': 'process',
      'messaging.operation.type': 'process',
      'messaging.destination.name': topic,
      'messaging.destination.partition.id': String(partition),
    };
    outcomeAttributes(outcome, attributes);
    const offset = Number(message.offset);
    if (Number.isSafeInteger(offset)) attributes['messaging.kafka.offset'] = offset;
    const key = keyAttribute(message.key);
    if (key !== undefined) attributes['messaging.kafka.message.key'] = key;
    if (message.value === null) attributes['messaging.kafka.message.tombstone'] = true;
    if (this.group !== undefined) attributes['messaging.consumer.group.name'] = this.group;

    let parent = extracted.context;
    let links: Link[] | undefined;
    if (this.link) {
      const producer = trace.getSpanContext(parent);
      if (producer !== undefined) links = [{ context: producer }];
      // A new root keeps the message's baggage; the SDK draws its trace id at random (trace-context-2 §3.2.2.5).
      parent = trace.deleteSpan(parent).setValue(RANDOM_TRACE_ID_KEY, true);
    }
    const span = tracerOf(this.tracer).startSpan(
      `process ${topic}`,
      { kind: SpanKind.CONSUMER, attributes, links, startTime },
      parent,
    );
    callHook('consumerHook', this.hook, span, { topic, partition, message }, '@meshtrace/kafka');
    return [span, trace.setSpan(parent, span)];
  }

  /** Runs `fn(arg)` in `ctx`, ending `span` when it settles. */
  async run<A, T>(span: Span, ctx: Context, fn: (arg: A) => T | Promise<T>, arg: A): Promise<T> {
    return runInSpan(span, ctx, fn, undefined, arg, KAFKA_ERRORS);
  }

  eachMessage(handler: EachMessageHandler): EachMessageHandler {
    const tracing = this;
    return function meshEachMessage(payload: EachMessagePayload): Promise<void> {
      const [span, ctx] = tracing.start(payload.topic, payload.partition, payload.message);
      return tracing.run(span, ctx, handler, payload);
    };
  }

  eachBatch(handler: MeshEachBatchHandler): EachBatchHandler {
    const tracing = this;
    return async function meshEachBatch(payload: EachBatchPayload): Promise<void> {
      const { topic, partition, messages } = payload.batch;
      const startTime = Date.now();
      const done = new Set<KafkaMessage>();
      const withMessage = <T>(message: KafkaMessage, fn: (message: KafkaMessage) => T | Promise<T>): Promise<T> => {
        done.add(message);
        const [span, ctx] = tracing.start(topic, partition, message);
        return tracing.run(span, ctx, fn, message);
      };
      let failed = false;
      let error: unknown;
      try {
        await handler({ ...payload, withMessage });
      } catch (err) {
        failed = true;
        error = err;
        throw err;
      } finally {
        // Every delivered message gets one span, even when the handler processed the batch as a whole.
        for (const message of messages) {
          if (done.has(message)) continue;
          const [span] = tracing.start(topic, partition, message, startTime);
          if (failed) recordError(span, error);
          span.end();
        }
      }
    };
  }
}

/**
 * Traces a kafkajs consumer in place and returns it: each message is processed under a CONSUMER
 * span in its producer's context (`eachMessage` directly; `eachBatch` through `payload.withMessage`).
 * Missing or malformed headers give a fresh root, counted and warned; a handler's throw marks the
 * span ERROR and reaches kafkajs, which retries as usual.
 * @example
 * const consumer = meshConsumer(kafka.consumer({ groupId: 'billing' }));
 * await consumer.run({ eachMessage: async ({ message }) => bill(message) });
 */
export function meshConsumer<C extends Consumer>(consumer: C, options: MeshConsumerOptions = {}): MeshConsumer<C> {
  if (
    consumer === null ||
    typeof consumer !== 'object' ||
    typeof consumer.run !== 'function' ||
    typeof consumer.on !== 'function' ||
    typeof consumer.events?.GROUP_JOIN !== 'string'
  ) {
    throw new TypeError(`${PACKAGE}: consumer must be a kafkajs Consumer, got ${typeName(consumer)}`);
  }
  const target = consumer as Consumer & { [WRAPPED]?: true };
  if (target[WRAPPED]) throw new TypeError(`${PACKAGE}: consumer is already traced by meshConsumer`);
  const o = checkOptions(PACKAGE, options, {
    tracerProvider: 'tracerProvider',
    consumerHook: 'function',
    mode: ['parent', 'link'],
  });
  const tracing = new ConsumerTracing(o.tracerProvider?.getTracer(PACKAGE), o.mode === 'link', o.consumerHook);
  target.on(target.events.GROUP_JOIN, (event) => {
    tracing.group = event.payload.groupId;
  });
  const run = target.run;

  target.run = function meshRun(this: unknown, config?: ConsumerRunConfig): Promise<void> {
    if (config === null || typeof config !== 'object') return run.call(this, config);
    // The caller's config object is left as it was.
    const traced: ConsumerRunConfig = { ...config };
    if (typeof config.eachMessage === 'function') traced.eachMessage = tracing.eachMessage(config.eachMessage);
    if (typeof config.eachBatch === 'function')
      traced.eachBatch = tracing.eachBatch(config.eachBatch as MeshEachBatchHandler);
    return run.call(this, traced);
  };
  target[WRAPPED] = true;
  return consumer as unknown as MeshConsumer<C>;
}
