import { DiagLogLevel, context, diag, metrics, propagation, trace } from '@opentelemetry/api';
import { ExportResultCode } from '@opentelemetry/core';
import type { ExportResult } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { AggregationTemporality, MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import { TracerProvider, InMemorySpanExporter, SamplingDecision } from '@opentelemetry/sdk-trace';
import type { ReadableSpan, Sampler, SpanProcessor } from '@opentelemetry/sdk-trace';
import { MeshBatchSpanProcessor, countingExporter, exportStats, setupMeshTracing } from '@meshtrace/node';
import type { ExportStats } from '@meshtrace/node';
import { startCollector, startFaultProxy } from '@meshtrace/testkit';
import type { FaultProxy, TestCollector } from '@meshtrace/testkit';

class Reader extends MetricReader {
  constructor() {
    super({ aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE });
  }
  protected override async onForceFlush(): Promise<void> {}
  protected override async onShutdown(): Promise<void> {}
}

let collector: TestCollector;
let proxy: FaultProxy;
let logs: string[];

beforeAll(async () => {
  collector = await startCollector();
  proxy = await startFaultProxy({ targetPort: collector.port });
});

afterAll(async () => {
  await proxy.close();
  await collector.close();
});

beforeEach(async () => {
  await proxy.setMode('pass');
  logs = [];
  const log = (m: string) => void logs.push(m);
  diag.setLogger({ error: log, warn: log, info: log, debug: log, verbose: () => undefined }, DiagLogLevel.DEBUG);
});

afterEach(() => {
  diag.disable();
  metrics.disable();
  trace.disable();
  propagation.disable();
  context.disable();
});

/** How the totals moved since `before`; `queued`/`inFlight` are current values, as they are levels, not counts. */
function since(before: ExportStats): Omit<ExportStats, 'lastError' | 'peakQueued'> {
  const now = exportStats();
  return {
    exported: now.exported - before.exported,
    failed: now.failed - before.failed,
    dropped: now.dropped - before.dropped,
    queued: now.queued,
    inFlight: now.inFlight,
  };
}

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function endSpans(processor: SpanProcessor, count: number, sampler?: Sampler): TracerProvider {
  const provider = new TracerProvider({ spanProcessors: [processor], sampler });
  const tracer = provider.getTracer('t');
  for (let i = 0; i < count; i++) tracer.startSpan(`s${i}`).end();
  return provider;
}

/** Spans to export, made by the SDK itself. */
function spans(count: number): ReadableSpan[] {
  const memory = new InMemorySpanExporter();
  const provider = new TracerProvider({
    spanProcessors: [
      {
        onStart: () => undefined,
        onEnd: (s) => memory.export([s], () => undefined),
        forceFlush: async () => undefined,
        shutdown: async () => undefined,
      },
    ],
  });
  for (let i = 0; i < count; i++) provider.getTracer('t').startSpan(`s${i}`).end();
  return memory.getFinishedSpans();
}

function exportOnce(
  exporter: { export(spans: ReadableSpan[], cb: (r: ExportResult) => void): void },
  batch: ReadableSpan[],
): Promise<ExportResult[]> {
  return new Promise((resolve) => {
    const results: ExportResult[] = [];
    exporter.export(batch, (r) => {
      results.push(r);
      // A second answer would land here within the same macrotask queue turn; give it one.
      setTimeout(() => resolve(results), 20);
    });
  });
}

test('countingExporter counts delivered spans in exportStats and meshtrace.export.spans', async () => {
  const reader = new Reader();
  metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
  const before = exportStats();
  const batch = spans(3);
  const exporter = countingExporter(new OTLPTraceExporter({ url: `${collector.url}/v1/traces` }));
  const results = await exportOnce(exporter, batch);
  expect(results).toEqual([{ code: ExportResultCode.SUCCESS }]);
  expect(collector.hasTrace(batch[0].spanContext().traceId)).toBe(true);
  expect(since(before)).toMatchObject({ exported: 3, failed: 0, dropped: 0 });
  const { resourceMetrics } = await reader.collect();
  const points = resourceMetrics.scopeMetrics
    .flatMap((s) => s.metrics)
    .filter((m) => m.descriptor.name === 'meshtrace.export.spans')
    .flatMap((m) =>
      (m.dataPoints as Array<{ attributes: Record<string, unknown>; value: unknown }>).map((p) => [
        p.attributes.result,
        p.value,
      ]),
    );
  expect(points).toEqual([['exported', 3]]);
  await exporter.shutdown();
});

test('countingExporter counts a refused export as failed, with its reason, answered once', async () => {
  await proxy.setMode('refuse');
  const before = exportStats();
  const exporter = countingExporter(new OTLPTraceExporter({ url: `${proxy.url}/v1/traces`, timeoutMillis: 300 }));
  const results = await exportOnce(exporter, spans(2));
  expect(results).toHaveLength(1);
  expect(results[0].code).toBe(ExportResultCode.FAILED);
  expect(since(before)).toMatchObject({ exported: 0, failed: 2, dropped: 0 });
  expect(exportStats().lastError).toMatch(/ECONNREFUSED|connect/);
  expect(logs.filter((l) => l.includes('could not export 2 span(s)')).length).toBeLessThanOrEqual(1);
  await exporter.shutdown();
});

test('countingExporter answers a hung export at timeoutMillis, and the late answer is not counted again', async () => {
  await proxy.setMode('blackhole');
  const before = exportStats();
  const exporter = countingExporter(new OTLPTraceExporter({ url: `${proxy.url}/v1/traces`, timeoutMillis: 400 }), {
    timeoutMillis: 100,
  });
  const results = await exportOnce(exporter, spans(4));
  expect(results).toEqual([{ code: ExportResultCode.FAILED, error: new Error('export timed out after 100 ms') }]);
  expect(since(before)).toMatchObject({ failed: 4, inFlight: 0 });
  // The OTLP exporter answers when its own request times out; forceFlush waits for that.
  await exporter.forceFlush?.();
  expect(since(before)).toMatchObject({ exported: 0, failed: 4, inFlight: 0 });
  await exporter.shutdown();
});

test('MeshBatchSpanProcessor refuses and counts spans past maxQueueSize, exactly where the SDK queue would drop them', async () => {
  await proxy.setMode('blackhole');
  const before = exportStats();
  const processor = new MeshBatchSpanProcessor(
    new OTLPTraceExporter({ url: `${proxy.url}/v1/traces`, timeoutMillis: 300 }),
    { maxQueueSize: 10, maxExportBatchSize: 5, scheduledDelayMillis: 0, exportTimeoutMillis: 300 },
  );
  const provider = endSpans(processor, 100);
  // The first full batch left for the (hung) exporter at once; ten wait; the rest had no room.
  expect(since(before)).toEqual({ exported: 0, failed: 0, dropped: 85, queued: 10, inFlight: 5 });
  expect(exportStats().peakQueued).toBeGreaterThanOrEqual(10);
  await provider.shutdown();
  expect(since(before)).toEqual({ exported: 0, failed: 15, dropped: 85, queued: 0, inFlight: 0 });
  // The SDK's own drop path never ran, so its queue never held more than ours allowed.
  expect(logs.filter((l) => l.includes('maxQueueSize reached'))).toEqual([]);
  expect(logs.filter((l) => l.includes('span queue full'))).toHaveLength(1);
});

test('exports never overlap while a blackholed collector times them out and spans keep coming', async () => {
  await proxy.setMode('blackhole');
  const before = exportStats();
  const processor = new MeshBatchSpanProcessor(
    new OTLPTraceExporter({ url: `${proxy.url}/v1/traces`, timeoutMillis: 100 }),
    { maxQueueSize: 20, maxExportBatchSize: 5, scheduledDelayMillis: 0, exportTimeoutMillis: 100 },
  );
  const provider = new TracerProvider({ spanProcessors: [processor] });
  const tracer = provider.getTracer('t');
  let peakInFlight = 0;
  let peakOpen = 0;
  // Ten export timeouts' worth of steady traffic: every failed export must be followed by one export, not two.
  for (let tick = 0; tick < 100; tick++) {
    for (let i = 0; i < 5; i++) tracer.startSpan('s').end();
    peakInFlight = Math.max(peakInFlight, exportStats().inFlight);
    peakOpen = Math.max(peakOpen, proxy.open);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const d = since(before);
  expect(d.failed).toBeGreaterThanOrEqual(5 * 5);
  expect(peakInFlight).toBe(5);
  // A request abandoned at its timeout may still be closing while the next one opens.
  expect(peakOpen).toBeLessThanOrEqual(2);
  await provider.shutdown();
  expect(logs.filter((l) => l.includes('Concurrent export limit'))).toEqual([]);
});

test('spans recorded but not sampled are neither queued nor counted as dropped', async () => {
  const before = exportStats();
  const recordOnly: Sampler = {
    shouldSample: () => ({ decision: SamplingDecision.RECORD }),
    toString: () => 'RecordOnly',
  };
  const exporter = new InMemorySpanExporter();
  const provider = endSpans(
    new MeshBatchSpanProcessor(exporter, { maxQueueSize: 2, maxExportBatchSize: 2 }),
    10,
    recordOnly,
  );
  await provider.forceFlush();
  expect(since(before)).toEqual({ exported: 0, failed: 0, dropped: 0, queued: 0, inFlight: 0 });
  expect(exporter.getFinishedSpans()).toEqual([]);
  await provider.shutdown();
});

test('forceFlush and shutdown resolve while the collector refuses, and the spans count as failed', async () => {
  await proxy.setMode('refuse');
  const before = exportStats();
  const processor = new MeshBatchSpanProcessor(
    new OTLPTraceExporter({ url: `${proxy.url}/v1/traces`, timeoutMillis: 200 }),
    { scheduledDelayMillis: 60_000, exportTimeoutMillis: 200 },
  );
  const provider = endSpans(processor, 3);
  await expect(processor.forceFlush()).resolves.toBeUndefined();
  endSpans(processor, 2);
  await expect(provider.shutdown()).resolves.toBeUndefined();
  expect(since(before)).toEqual({ exported: 0, failed: 5, dropped: 0, queued: 0, inFlight: 0 });
  // After shutdown nothing is queued, and nothing is counted as lost either.
  endSpans(processor, 1);
  expect(since(before)).toEqual({ exported: 0, failed: 5, dropped: 0, queued: 0, inFlight: 0 });
});

test('setupMeshTracing reads OTEL_BSP_* from its env and keeps the OTLP timeout within the export timeout', async () => {
  await proxy.setMode('blackhole');
  const before = exportStats();
  const tracing = setupMeshTracing({
    log: false,
    env: {
      OTEL_EXPORTER_OTLP_ENDPOINT: proxy.url,
      OTEL_BSP_MAX_QUEUE_SIZE: '4',
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '2',
      OTEL_BSP_SCHEDULE_DELAY: '0',
      OTEL_BSP_EXPORT_TIMEOUT: '300',
      // Far longer than the export timeout: each hung request would then outlive its export.
      OTEL_EXPORTER_OTLP_TIMEOUT: '60000',
    },
  });
  const tracer = trace.getTracer('t');
  for (let i = 0; i < 20; i++) tracer.startSpan(`s${i}`).end();
  expect(since(before)).toEqual({ exported: 0, failed: 0, dropped: 14, queued: 4, inFlight: 2 });
  await until('three failed exports', () => since(before).failed === 6);
  // Each hung request was abandoned with its export, so none is left open on the collector side.
  await until('the proxy to have no open connection', () => proxy.open === 0, 3000);
  await tracing.shutdown();
});

test('a bad OTEL_BSP_* value is reported and the default kept; a bad batch option is a TypeError', async () => {
  const tracing = setupMeshTracing({
    log: false,
    exporter: new InMemorySpanExporter(),
    env: { OTEL_BSP_MAX_QUEUE_SIZE: 'lots' },
  });
  expect(logs.some((l) => l.includes('ignoring OTEL_BSP_MAX_QUEUE_SIZE="lots"') && l.includes('using 2048'))).toBe(
    true,
  );
  await tracing.shutdown();
  for (const [option, value] of [
    ['maxQueueSize', 0],
    ['maxExportBatchSize', 1.5],
    ['exportTimeoutMillis', '1000'],
    ['scheduledDelayMillis', -1],
  ] as const) {
    expect(() => setupMeshTracing({ log: false, env: {}, batch: { [option]: value } })).toThrow(
      new RegExp(`^@meshtrace/node: option "batch\\.${option}"`),
    );
    expect(() => new MeshBatchSpanProcessor(new InMemorySpanExporter(), { [option]: value })).toThrow(TypeError);
  }
  expect(() => countingExporter({} as never)).toThrow(/^@meshtrace\/node: option "exporter"/);
  expect(() => countingExporter(new InMemorySpanExporter(), { timeoutMillis: 0 })).toThrow(
    /^@meshtrace\/node: option "timeoutMillis"/,
  );
  expect(() => new MeshBatchSpanProcessor(null as never)).toThrow(/^@meshtrace\/node: option "exporter"/);
});

test('exportStats returns a snapshot, not the live totals', () => {
  const snapshot = exportStats() as { dropped: number };
  snapshot.dropped = -1;
  expect(exportStats().dropped).toBeGreaterThanOrEqual(0);
});
