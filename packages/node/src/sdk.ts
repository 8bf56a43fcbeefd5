import type { Context, Sampler, Span, SpanContext, TracerProvider } from '@opentelemetry/api';

/** The package name every diagnostic and configuration error of this package starts with. */
export const PACKAGE = '@meshtrace/node';

// The trace SDK is the application's: `@opentelemetry/sdk-trace` (SDK 3, and 2.9 onwards beside the older
// `@opentelemetry/sdk-trace-base`, which NodeSDK 0.2xx still installs). Both are optional peer dependencies, loaded
// here by name, so one build of this package runs beside either line. The types below are the shapes both lines share,
// so an application's exporter, processor or sampler of either line fits them.

/** What an exporter reports for one export (`@opentelemetry/core`'s `ExportResult`). */
export interface ExportResult {
  /** 0 success, 1 failed (`ExportResultCode`). */
  code: number;
  error?: Error;
}

/** `ExportResultCode` of `@opentelemetry/core`, the same numbers on every SDK line. */
export const ExportResultCode = { SUCCESS: 0, FAILED: 1 } as const;

/** A finished span as the SDK hands it to processors and exporters. */
export interface ReadableSpan {
  spanContext(): SpanContext;
}

/** An SDK span exporter (OTLP, console, in-memory, ...). */
export interface SpanExporter {
  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void;
  shutdown(): Promise<void>;
  forceFlush?(): Promise<void>;
}

/** An SDK span processor. */
export interface SpanProcessor {
  onStart(span: Span, parentContext: Context): void;
  onEnd(span: ReadableSpan): void;
  forceFlush(): Promise<void>;
  shutdown(): Promise<void>;
}

/** Batch span processor settings (`BufferConfig` of the SDK); all optional. */
export interface BufferConfig {
  /** Spans exported per request. Default 512 (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`). */
  maxExportBatchSize?: number;
  /** Delay between exports, in ms. Default 5000 (`OTEL_BSP_SCHEDULE_DELAY`). */
  scheduledDelayMillis?: number;
  /** How long an export may take, in ms. Default 30000 (`OTEL_BSP_EXPORT_TIMEOUT`). */
  exportTimeoutMillis?: number;
  /** Spans waiting at most; more are dropped (and counted). Default 2048 (`OTEL_BSP_MAX_QUEUE_SIZE`). */
  maxQueueSize?: number;
}

/** The SDK's tracer provider as setup uses it. */
export interface SdkTracerProvider extends TracerProvider {
  forceFlush(): Promise<void>;
  shutdown(): Promise<void>;
}

/** The parts of the application's trace SDK that this package builds on. */
export interface TraceSdk {
  /** The package they came from. */
  readonly name: '@opentelemetry/sdk-trace' | '@opentelemetry/sdk-trace-base';
  readonly TracerProvider: new (config: {
    resource?: unknown;
    sampler?: Sampler;
    spanProcessors?: SpanProcessor[];
  }) => SdkTracerProvider;
  /** The SDK's BatchSpanProcessor: `sdk-trace` takes one options object, `sdk-trace-base` (exporter, config). */
  readonly batchSpanProcessor: (exporter: SpanExporter, config: BufferConfig) => SpanProcessor;
  readonly AlwaysOnSampler: new () => Sampler;
  readonly AlwaysOffSampler: new () => Sampler;
  readonly TraceIdRatioBasedSampler: new (ratio: number) => Sampler;
}

type Loader = (name: string) => Record<string, unknown>;

/** `sdk-trace` first: `sdk-trace-base` 2.9+ is a shim over it, and SDK 3 has only it. */
const CANDIDATES = ['@opentelemetry/sdk-trace', '@opentelemetry/sdk-trace-base'] as const;

function fromModule(name: TraceSdk['name'], m: Record<string, unknown>): TraceSdk {
  // `sdk-trace` names it TracerProvider, `sdk-trace-base` BasicTracerProvider; NodeTracerProvider only added
  // register().
  const options = name === '@opentelemetry/sdk-trace';
  const provider = options ? m.TracerProvider : m.BasicTracerProvider;
  const Batch = m.BatchSpanProcessor as new (...args: unknown[]) => SpanProcessor;
  return {
    name,
    TracerProvider: provider as TraceSdk['TracerProvider'],
    batchSpanProcessor: options
      ? (exporter, config) => new Batch({ ...config, exporter })
      : (exporter, config) => new Batch(exporter, config),
    AlwaysOnSampler: m.AlwaysOnSampler as TraceSdk['AlwaysOnSampler'],
    AlwaysOffSampler: m.AlwaysOffSampler as TraceSdk['AlwaysOffSampler'],
    TraceIdRatioBasedSampler: m.TraceIdRatioBasedSampler as TraceSdk['TraceIdRatioBasedSampler'],
  };
}

function missing(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 'MODULE_NOT_FOUND';
}

/**
 * The first trace SDK of `candidates` that the application installed. Throws a `TypeError` naming
 * both packages when neither is there.
 */
export function loadTraceSdk(candidates: readonly TraceSdk['name'][] = CANDIDATES, load: Loader = require): TraceSdk {
  for (const name of candidates) {
    let m: Record<string, unknown>;
    try {
      m = load(name);
    } catch (err) {
      if (missing(err)) continue;
      throw err;
    }
    return fromModule(name, m);
  }
  throw new TypeError(
    `${PACKAGE}: no OpenTelemetry trace SDK is installed: npm install @opentelemetry/sdk-trace (SDK 3 and 2.9+) ` +
      'or @opentelemetry/sdk-trace-base (SDK 2.x)',
  );
}

let cached: TraceSdk | undefined;

/** The application's trace SDK, loaded once. */
export function traceSdk(): TraceSdk {
  cached ??= loadTraceSdk();
  return cached;
}

/**
 * Loads an optional peer dependency, or throws a `TypeError` that says which option needs it and how
 * to install it.
 */
export function optionalPeer<T>(name: string, option: string, load: Loader = require): T {
  try {
    return load(name) as T;
  } catch (err) {
    if (missing(err)) throw new TypeError(`${PACKAGE}: ${option} needs ${name}: npm install ${name}`);
    throw err;
  }
}
