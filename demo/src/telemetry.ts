import { SpanKind } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { TracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace';
import type { ReadableSpan, SpanExporter, SpanProcessor } from '@opentelemetry/sdk-trace';

/** The services of the mesh, in call order: the first one is where requests enter. */
export const SERVICES = ['gateway', 'orders', 'inventory'] as const;

/** One of {@link SERVICES}. */
export type ServiceName = (typeof SERVICES)[number];

/** The framework each service is written with. */
export const FRAMEWORK: Readonly<Record<ServiceName, string>> = { gateway: 'Express', orders: 'Fastify', inventory: 'Koa' };

/** How the OTLP export of one run went. */
export interface OtlpReport {
  readonly url: string;
  exported: number;
  failed: number;
  lastError: string | undefined;
}

/** Options of {@link createTelemetry}; all optional. */
export interface TelemetryOptions {
  /** Also export every span over OTLP/HTTP (protobuf) to this URL (`.../v1/traces`). */
  otlpUrl?: string;
  /** A resource attribute `meshtrace.demo.run` telling runs apart in a tracing backend. */
  run?: string;
}

/** One tracer provider per service, all recording into one list that can be waited on. */
export interface Telemetry {
  /** Each service's provider, with its own `service.name` resource. */
  readonly providers: Readonly<Record<ServiceName, TracerProvider>>;
  /** Set when spans are also exported over OTLP. */
  readonly otlp: OtlpReport | undefined;
  /** Finished spans, in the order they ended. */
  spans(): ReadableSpan[];
  /** Forgets the finished spans. */
  reset(): void;
  /** Resolves with the finished spans once `count` SERVER spans have ended, or when `timeoutMs` passes. */
  waitForServerSpans(count: number, timeoutMs?: number): Promise<ReadableSpan[]>;
  /** Flushes the OTLP export (if any) and stops every provider; never rejects (failures are in `otlp`). */
  shutdown(): Promise<void>;
}

/** Keeps finished spans in memory; the only processor the printed waterfalls need. */
class Recorder implements SpanProcessor {
  finished: ReadableSpan[] = [];
  private servers = 0;
  private waiters: Array<{ count: number; resolve: () => void }> = [];

  onStart(): void {}

  onEnd(span: ReadableSpan): void {
    this.finished.push(span);
    if (span.kind !== SpanKind.SERVER) return;
    this.servers++;
    const ready = this.waiters.filter((w) => this.servers >= w.count);
    this.waiters = this.waiters.filter((w) => this.servers < w.count);
    for (const w of ready) w.resolve();
  }

  reset(): void {
    this.finished = [];
    this.servers = 0;
  }

  async wait(count: number, timeoutMs: number): Promise<void> {
    if (this.servers >= count) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.waiters.push({ count, resolve: () => (clearTimeout(timer), resolve()) });
    });
  }

  async forceFlush(): Promise<void> {}
  async shutdown(): Promise<void> {}
}

/** Counts what the OTLP exporter managed to send, so the program can say so instead of guessing. */
class CountingExporter implements SpanExporter {
  constructor(
    private readonly inner: SpanExporter,
    private readonly report: OtlpReport,
  ) {}

  export(spans: ReadableSpan[], done: Parameters<SpanExporter['export']>[1]): void {
    this.inner.export(spans, (result) => {
      // ExportResultCode.SUCCESS is 0 (@opentelemetry/core).
      if (result.code === 0) this.report.exported += spans.length;
      else {
        this.report.failed += spans.length;
        const cause = (result.error as { cause?: { code?: string } } | undefined)?.cause?.code;
        this.report.lastError = [result.error?.message, cause].filter(Boolean).join(': ') || 'export failed';
      }
      done(result);
    });
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

/**
 * Makes the tracer providers of the three services: each has its own `service.name`, as it would
 * in its own process, so a backend shows which service made each span.
 */
export function createTelemetry(options: TelemetryOptions = {}): Telemetry {
  const recorder = new Recorder();
  const otlp: OtlpReport | undefined = options.otlpUrl === undefined ? undefined : { url: options.otlpUrl, exported: 0, failed: 0, lastError: undefined };
  const make = (name: ServiceName): TracerProvider => {
    const processors: SpanProcessor[] = [recorder];
    if (otlp !== undefined) processors.push(new BatchSpanProcessor({ exporter: new CountingExporter(new OTLPTraceExporter({ url: otlp.url }), otlp) }));
    const attributes: Record<string, string> = { 'service.name': name, 'service.namespace': 'meshtrace-demo' };
    if (options.run !== undefined) attributes['meshtrace.demo.run'] = options.run;
    return new TracerProvider({ resource: resourceFromAttributes(attributes), spanProcessors: processors });
  };
  const providers = { gateway: make('gateway'), orders: make('orders'), inventory: make('inventory') };
  return {
    providers,
    otlp,
    spans: () => [...recorder.finished],
    reset: () => recorder.reset(),
    waitForServerSpans: async (count, timeoutMs = 5000) => {
      await recorder.wait(count, timeoutMs);
      return [...recorder.finished];
    },
    shutdown: async () => {
      // A collector that cannot be reached fails the flush; the report already says so.
      await Promise.allSettled(Object.values(providers).map((p) => p.shutdown()));
    },
  };
}

/** The `service.name` of the provider that made `span`. */
export function serviceOf(span: ReadableSpan): string {
  return String(span.resource.attributes['service.name'] ?? 'unknown');
}
