import { DiagLogLevel, context, createContextKey, diag, metrics, propagation, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { AggregationTemporality, MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { MeshPropagator } from '@meshtrace/core';

const CONTEXT_PROBE = createContextKey('@meshtrace/testkit context probe');

/** True when a real context manager is registered (the no-op one never makes a context active). */
export function hasContextManager(): boolean {
  const probe = context.active().setValue(CONTEXT_PROBE, true);
  return context.with(probe, () => context.active().getValue(CONTEXT_PROBE) === true);
}

class CollectingReader extends MetricReader {
  constructor() {
    super({ aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE });
  }
  protected override async onForceFlush(): Promise<void> {}
  protected override async onShutdown(): Promise<void> {}
}

/** The in-memory OpenTelemetry a test runs against. */
export interface TestTracing {
  readonly exporter: InMemorySpanExporter;
  readonly provider: TracerProvider;
  /** Finished spans so far. */
  spans(): ReadableSpan[];
  /** Cumulative `meshtrace.propagation.extract` counts by `continued`, `missing`, `malformed:<reason>`. */
  outcomeCounts(): Promise<Record<string, number>>;
  /** Cumulative `meshtrace.propagation.dropped` counts by `<header>:<reason>`. */
  droppedCounts(): Promise<Record<string, number>>;
  /** Cumulative totals of every counter, by metric name. */
  counters(): Promise<Record<string, number>>;
  /** Forgets finished spans. */
  reset(): void;
  shutdown(): Promise<void>;
}

async function sums(
  reader: MetricReader,
  name: string | undefined,
  label: (a: Record<string, unknown>, metric: string) => string,
): Promise<Record<string, number>> {
  const { resourceMetrics } = await reader.collect();
  const out: Record<string, number> = {};
  for (const scope of resourceMetrics.scopeMetrics) {
    for (const metric of scope.metrics) {
      if (name !== undefined && metric.descriptor.name !== name) continue;
      for (const point of metric.dataPoints) {
        const key = label(point.attributes as Record<string, unknown>, metric.descriptor.name);
        out[key] = (out[key] ?? 0) + (point.value as number);
      }
    }
  }
  return out;
}

/**
 * Registers AsyncLocalStorage context, the MeshPropagator, an in-memory span exporter and a metric
 * reader as the process globals, the way `setupMeshTracing` would with a real exporter.
 */
export function setupTestTracing(): TestTracing {
  if (!hasContextManager()) context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new MeshPropagator());
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });
  trace.setGlobalTracerProvider(provider);
  const reader = new CollectingReader();
  metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
  return {
    exporter,
    provider,
    spans: () => exporter.getFinishedSpans(),
    outcomeCounts: () =>
      sums(reader, 'meshtrace.propagation.extract', (a) =>
        a.reason ? `${String(a.outcome)}:${String(a.reason)}` : String(a.outcome),
      ),
    droppedCounts: () =>
      sums(reader, 'meshtrace.propagation.dropped', (a) => `${String(a.header)}:${String(a.reason)}`),
    counters: () => sums(reader, undefined, (_a, metric) => metric),
    reset: () => exporter.reset(),
    shutdown: async () => {
      await provider.shutdown();
      trace.disable();
      metrics.disable();
      propagation.disable();
      context.disable();
    },
  };
}

/**
 * Registers a diag logger that keeps every warning (and drops the other levels); the returned list fills as
 * warnings come. `diag.disable()` removes it.
 */
export function captureWarnings(): string[] {
  const warnings: string[] = [];
  const drop = (): undefined => undefined;
  diag.setLogger(
    { warn: (m: string) => void warnings.push(m), error: drop, info: drop, debug: drop, verbose: drop },
    DiagLogLevel.WARN,
  );
  return warnings;
}
