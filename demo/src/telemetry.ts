import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import type { ReadableSpan, Sampler, SpanExporter, SpanProcessor } from '@opentelemetry/sdk-trace';
import { startReceiver } from '@meshtrace/doctor';
import type { ReceivedSpans, Span } from '@meshtrace/doctor';

/** The services of the mesh, in call order: the first one is where requests enter. */
export const SERVICES = ['gateway', 'orders', 'inventory'] as const;

/** One of {@link SERVICES}. */
export type ServiceName = (typeof SERVICES)[number];

/** The framework each service is written with. */
export const FRAMEWORK: Readonly<Record<ServiceName, string>> = {
  gateway: 'Express',
  orders: 'Fastify',
  inventory: 'Koa',
};

/** How the OTLP export of one run went. */
export interface OtlpReport {
  readonly url: string;
  exported: number;
  failed: number;
  lastError: string | undefined;
}

/** Options of {@link createTelemetry}; all optional. */
export interface TelemetryOptions {
  /** Also pass every export on, over OTLP/HTTP (protobuf), to this URL (`.../v1/traces`). */
  otlpUrl?: string;
  /**
   * Where the services export: `receiver` (default; the receiver passes every export on to `otlpUrl`),
   * `otlp` straight to `otlpUrl` instead (the receiver gets nothing), or `both`, each export to both.
   */
  exportTo?: 'receiver' | 'otlp' | 'both';
  /** Every service's sampler. Default the SDK's: parent-based, always on for new traces. */
  sampler?: Sampler;
  /** A resource attribute `meshtrace.demo.run` telling runs apart in a tracing backend. */
  run?: string;
}

/** One tracer provider per service, all exporting over OTLP to one receiver in this process, whose spans can be waited on. */
export interface Telemetry {
  /** Each service's provider, with its own `service.name` resource. */
  readonly providers: Readonly<Record<ServiceName, TracerProvider>>;
  /** Set when spans are also passed on over OTLP; filled in by `shutdown()`. */
  readonly otlp: OtlpReport | undefined;
  /** The receiver the providers export to, as `meshtrace probe` reads it. */
  readonly receiver: ReceivedSpans;
  /** The spans received since the last reset, in the order they arrived. */
  spans(): Span[];
  /** Forgets the received spans. */
  reset(): void;
  /** Resolves with the received spans once `count` SERVER spans and every span exported before them arrived, or when `timeoutMs` passes. */
  waitForServerSpans(count: number, timeoutMs?: number): Promise<Span[]>;
  /** Flushes the exports, stops every provider and the receiver; never rejects (pass-on failures are in `otlp`). */
  shutdown(): Promise<void>;
}

/**
 * Makes the tracer providers of the three services: each has its own `service.name`, as it would
 * in its own process, and exports with the standard OTLP/HTTP protobuf exporter to a doctor
 * receiver in this process, which passes every export on to `otlpUrl` when there is one.
 */
export async function createTelemetry(options: TelemetryOptions = {}): Promise<Telemetry> {
  const exportTo = options.exportTo ?? 'receiver';
  if (exportTo !== 'receiver' && options.otlpUrl === undefined)
    throw new TypeError(`@meshtrace/demo: exportTo ${exportTo} needs an otlpUrl`);
  let received: Span[] = [];
  let servers = 0;
  let waiters: Array<{ count: number; resolve: () => void }> = [];
  const receiver = await startReceiver({
    port: 0,
    forward: exportTo === 'receiver' ? options.otlpUrl : undefined,
    onSpans: (spans) => {
      received.push(...spans);
      servers += spans.filter((s) => s.kind === 'server').length;
      const ready = waiters.filter((w) => servers >= w.count);
      waiters = waiters.filter((w) => servers < w.count);
      for (const w of ready) w.resolve();
    },
  });
  const otlp: OtlpReport | undefined =
    options.otlpUrl === undefined ? undefined : { url: options.otlpUrl, exported: 0, failed: 0, lastError: undefined };
  // Straight exports are counted here; the receiver counts what it passes on.
  const direct = { exported: 0, failed: 0, lastError: undefined as string | undefined };
  const make = (name: ServiceName): TracerProvider => {
    // One export per span, so a span is at the receiver as soon as its export resolves.
    const processors: SpanProcessor[] = [];
    if (exportTo !== 'otlp')
      processors.push(
        new SimpleSpanProcessor({ exporter: new OTLPTraceExporter({ url: `${receiver.url}/v1/traces` }) }),
      );
    if (exportTo !== 'receiver') {
      const exporter = new OTLPTraceExporter({ url: options.otlpUrl });
      const counted: SpanExporter = {
        export: (spans: ReadableSpan[], done) =>
          exporter.export(spans, (result) => {
            if (result.error === undefined && result.code === 0) direct.exported += spans.length;
            else {
              direct.failed += spans.length;
              direct.lastError = result.error?.message ?? 'export failed';
            }
            done(result);
          }),
        shutdown: () => exporter.shutdown(),
        forceFlush: () => exporter.forceFlush(),
      };
      processors.push(new SimpleSpanProcessor({ exporter: counted }));
    }
    const attributes: Record<string, string> = { 'service.name': name, 'service.namespace': 'meshtrace-demo' };
    if (options.run !== undefined) attributes['meshtrace.demo.run'] = options.run;
    return new TracerProvider({
      resource: resourceFromAttributes(attributes),
      spanProcessors: processors,
      ...(options.sampler === undefined ? {} : { sampler: options.sampler }),
    });
  };
  const providers = { gateway: make('gateway'), orders: make('orders'), inventory: make('inventory') };
  const flush = (): Promise<unknown> => Promise.allSettled(Object.values(providers).map((p) => p.forceFlush()));
  return {
    providers,
    otlp,
    receiver,
    spans: () => [...received],
    reset: () => {
      received = [];
      servers = 0;
    },
    waitForServerSpans: async (count, timeoutMs = 5000) => {
      if (servers < count) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, timeoutMs);
          waiters.push({
            count,
            resolve: () => {
              clearTimeout(timer);
              resolve();
            },
          });
        });
      }
      // A CLIENT span ends before its SERVER parent does, but its export may still be on the way.
      await flush();
      return [...received];
    },
    shutdown: async () => {
      await Promise.allSettled(Object.values(providers).map((p) => p.shutdown()));
      await receiver.close();
      if (otlp !== undefined && exportTo === 'receiver') {
        const forward = receiver.stats().forward;
        otlp.exported = forward.okSpans;
        otlp.failed = forward.failedSpans;
        otlp.lastError = forward.lastError;
      } else if (otlp !== undefined) Object.assign(otlp, direct);
    },
  };
}
