import { TraceFlags, diag } from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import type { Span } from '@opentelemetry/api';
import { TallyCounter, optionError, warner } from '@meshtrace/core/adapter';
import { ExportResultCode, PACKAGE, traceSdk } from './sdk';
import type { BufferConfig, ExportResult, ReadableSpan, SpanExporter, SpanProcessor } from './sdk';

/** What happened to spans on their way out, counted by `meshtrace.export.spans` as `result`. */
export type ExportOutcome = 'exported' | 'failed' | 'dropped';

/** A snapshot of span export in this process, summed over every meshtrace export pipeline. */
export interface ExportStats {
  /** Spans the exporter reported as delivered. */
  readonly exported: number;
  /** Spans in exports that failed or gave no answer within the export timeout. */
  readonly failed: number;
  /** Spans refused because the queue was full (the exporter was not keeping up). */
  readonly dropped: number;
  /** Spans waiting in the queue now. */
  readonly queued: number;
  /** Spans handed to the exporter and not yet answered. */
  readonly inFlight: number;
  /** The most spans ever waiting in one queue at once; never above its `maxQueueSize`. */
  readonly peakQueued: number;
  /** Why the last failed export failed, if one did. */
  readonly lastError: string | undefined;
}

/** The SDK's defaults (OpenTelemetry SDK environment variables, Batch Span Processor). */
const BATCH_DEFAULTS = {
  maxQueueSize: 2048,
  maxExportBatchSize: 512,
  scheduledDelayMillis: 5000,
  exportTimeoutMillis: 30_000,
} as const;
const BATCH_ENV: Record<keyof typeof BATCH_DEFAULTS, string> = {
  maxQueueSize: 'OTEL_BSP_MAX_QUEUE_SIZE',
  maxExportBatchSize: 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE',
  scheduledDelayMillis: 'OTEL_BSP_SCHEDULE_DELAY',
  exportTimeoutMillis: 'OTEL_BSP_EXPORT_TIMEOUT',
};
/** How much later than ours the SDK's batch timeout fires, so that it never does. */
const SDK_TIMEOUT_MARGIN = 1000;
/** The OTLP exporter's default request timeout. */
const OTLP_TIMEOUT_DEFAULT = 10_000;

type Totals = { -readonly [K in keyof ExportStats]: ExportStats[K] };
const totals: Totals = {
  exported: 0,
  failed: 0,
  dropped: 0,
  queued: 0,
  inFlight: 0,
  peakQueued: 0,
  lastError: undefined,
};

/**
 * The export counts of this process, cheap enough for a health endpoint. Works without a metrics
 * pipeline, which a service whose collector is down may not have either.
 * @example
 * app.get('/healthz', (req, res) => res.json(exportStats()));
 */
export function exportStats(): ExportStats {
  return { ...totals };
}

/** `meshtrace.export.spans`, by result. */
const spansCounter = new TallyCounter(
  'meshtrace.export.spans',
  'Spans leaving the process, by result: exported, failed (export error or timeout) or dropped (queue full)',
  '{span}',
);
const ATTRIBUTES = {
  exported: { result: 'exported' },
  failed: { result: 'failed' },
  dropped: { result: 'dropped' },
} as const;

function count(outcome: ExportOutcome, spans: number): void {
  totals[outcome] += spans;
  spansCounter.add(spans, ATTRIBUTES[outcome]);
}

const SUCCESS: ExportResult = Object.freeze({ code: ExportResultCode.SUCCESS });

function describe(error: unknown): string {
  if (error instanceof Error) return error.message || error.name;
  return error === undefined ? 'unknown error' : String(error);
}

/** Options of {@link countingExporter}; all optional. */
export interface CountingExporterOptions {
  /**
   * Report an export that has not answered within this many milliseconds as failed, so every
   * export is answered and counted. Default: wait for the exporter.
   */
  timeoutMillis?: number;
}

class CountingExporter implements SpanExporter {
  /** Spans of this exporter's exports not yet answered. */
  private pending = 0;
  private idleWaiters: Array<() => void> = [];
  private shutdownOnce: Promise<void> | undefined;

  constructor(
    private readonly inner: SpanExporter,
    private readonly timeoutMillis: number | undefined,
    /** Told how many spans left the queue, before the exporter sees them. */
    private readonly handedOff: ((spans: number) => void) | undefined,
    /** Answer success whatever happened, once it is counted and reported (see MeshBatchSpanProcessor). */
    private readonly hideFailures = false,
  ) {}

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    const n = spans.length;
    this.handedOff?.(n);
    totals.inFlight += n;
    this.pending += n;
    let timer: NodeJS.Timeout | undefined;
    let answered = false;
    const settle = (result: ExportResult): void => {
      // First answer wins: a late result after the timeout must not count the spans twice.
      if (answered) return;
      answered = true;
      if (timer !== undefined) clearTimeout(timer);
      totals.inFlight -= n;
      this.pending -= n;
      if (this.pending === 0) for (const wake of this.idleWaiters.splice(0)) wake();
      if (result.code === ExportResultCode.SUCCESS) {
        count('exported', n);
      } else {
        const reason = describe(result.error);
        totals.lastError = reason;
        count('failed', n);
        warner.warn(
          'export:failed',
          () => `${PACKAGE}: could not export ${n} span(s): ${reason}; ${totals.failed} failed so far.`,
        );
      }
      resultCallback(this.hideFailures ? SUCCESS : result);
    };
    if (this.timeoutMillis !== undefined) {
      const ms = this.timeoutMillis;
      timer = setTimeout(
        () => settle({ code: ExportResultCode.FAILED, error: new Error(`export timed out after ${ms} ms`) }),
        ms,
      );
      timer.unref();
    }
    try {
      this.inner.export(spans, settle);
    } catch (err) {
      settle({ code: ExportResultCode.FAILED, error: err instanceof Error ? err : new Error(String(err)) });
    }
  }

  /** Resolves once every export made so far has been answered (or timed out). */
  idle(): Promise<void> {
    return this.pending === 0 ? Promise.resolve() : new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  shutdown(): Promise<void> {
    this.shutdownOnce ??= this.inner.shutdown();
    return this.shutdownOnce;
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

function checkExporter(exporter: unknown): asserts exporter is SpanExporter {
  const e = exporter as SpanExporter | null | undefined;
  if (typeof e?.export !== 'function' || typeof e?.shutdown !== 'function')
    throw optionError(PACKAGE, 'exporter', 'a SpanExporter', exporter);
}

/**
 * Wraps a span exporter so that exported and failed spans are counted (`meshtrace.export.spans`,
 * {@link exportStats}) and failures reported through `diag`, rate-limited.
 * @example
 * new SimpleSpanProcessor(countingExporter(new OTLPTraceExporter(), { timeoutMillis: 10_000 }));
 */
export function countingExporter(exporter: SpanExporter, options: CountingExporterOptions = {}): SpanExporter {
  checkExporter(exporter);
  if (options === null || typeof options !== 'object') throw optionError(PACKAGE, 'options', 'an object', options);
  const { timeoutMillis } = options;
  if (timeoutMillis !== undefined && !(Number.isInteger(timeoutMillis) && timeoutMillis > 0))
    throw optionError(PACKAGE, 'timeoutMillis', 'a positive integer', timeoutMillis);
  return new CountingExporter(exporter, timeoutMillis, undefined);
}

/** The batch settings in force: options first, then `OTEL_BSP_*` from `env`, then the SDK defaults. */
export function resolveBatchConfig(
  batch: BufferConfig | undefined,
  env: Readonly<Record<string, string | undefined>>,
): Required<BufferConfig> {
  const out = { ...BATCH_DEFAULTS } as Required<BufferConfig>;
  for (const key of Object.keys(BATCH_DEFAULTS) as Array<keyof typeof BATCH_DEFAULTS>) {
    const min = key === 'scheduledDelayMillis' ? 0 : 1;
    const given = batch?.[key];
    if (given !== undefined) {
      if (!Number.isInteger(given) || given < min)
        throw optionError(PACKAGE, `batch.${key}`, min === 0 ? 'a non-negative integer' : 'a positive integer', given);
      out[key] = given;
      continue;
    }
    const raw = env[BATCH_ENV[key]]?.trim();
    if (!raw) continue;
    const value = Number(raw);
    // A bad variable must not stop the service: the SDK also warns and keeps its default.
    if (Number.isInteger(value) && value >= min) out[key] = value;
    else
      diag.warn(
        `${PACKAGE}: ignoring ${BATCH_ENV[key]}=${JSON.stringify(raw)}, not ` +
          `${min === 0 ? 'a non-negative' : 'a positive'} integer; using ${out[key]}.`,
      );
  }
  return out;
}

/**
 * The OTLP request timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT` or
 * 10 s, at most `exportTimeoutMillis`. A longer one would let the batch processor give up on an
 * export and start the next while the first still holds its spans, so a hung collector would pile
 * requests up instead of costing one queue's worth of memory.
 */
export function otlpTimeoutMillis(
  env: Readonly<Record<string, string | undefined>>,
  exportTimeoutMillis: number,
): number {
  let timeout = OTLP_TIMEOUT_DEFAULT;
  for (const name of ['OTEL_EXPORTER_OTLP_TRACES_TIMEOUT', 'OTEL_EXPORTER_OTLP_TIMEOUT']) {
    const raw = env[name]?.trim();
    if (!raw) continue;
    const value = Number(raw);
    if (Number.isInteger(value) && value > 0) {
      timeout = value;
      break;
    }
    diag.warn(`${PACKAGE}: ignoring ${name}=${JSON.stringify(raw)}, not a positive integer.`);
  }
  return Math.min(timeout, exportTimeoutMillis);
}

/**
 * The SDK's BatchSpanProcessor with its losses counted: spans refused by the full queue as
 * `dropped`, exports as `exported` or `failed` (`meshtrace.export.spans`, {@link exportStats}).
 * Every export is answered within `exportTimeoutMillis`, and shutdown and flush resolve even when
 * the collector is unreachable (the failure is counted and reported instead).
 * @example
 * new NodeSDK({ spanProcessors: [new MeshBatchSpanProcessor(new OTLPTraceExporter(), { maxQueueSize: 4096 })] });
 */
export class MeshBatchSpanProcessor implements SpanProcessor {
  private readonly batch: SpanProcessor;
  private readonly counting: CountingExporter;
  private readonly maxQueueSize: number;
  /** Spans given to the batch processor and not yet handed to the exporter: its queue length. */
  private queued = 0;
  private stopped = false;

  constructor(exporter: SpanExporter, config?: BufferConfig) {
    checkExporter(exporter);
    if (config !== undefined && (config === null || typeof config !== 'object'))
      throw optionError(PACKAGE, 'batch', 'an object', config);
    const resolved = resolveBatchConfig(config, process.env);
    this.maxQueueSize = resolved.maxQueueSize;
    // The SDK's BatchSpanProcessor (2.x) restarts exporting after a failed export, then clears its
    // "exporting" flag in a later catch: the next span starts a second export beside the first,
    // and with the collector away the overlapping exports pile up to the exporter's concurrency
    // limit, each holding a batch. So it is never told of a failure (this exporter has counted and
    // reported it already) and its own timeout is set past ours, which therefore always answers first.
    this.counting = new CountingExporter(exporter, resolved.exportTimeoutMillis, (n) => this.leftQueue(n), true);
    // Every value explicit, so the SDK reads no environment of its own and its bound is ours.
    this.batch = traceSdk().batchSpanProcessor(this.counting, {
      ...resolved,
      exportTimeoutMillis: resolved.exportTimeoutMillis + SDK_TIMEOUT_MARGIN,
    });
  }

  /**
   * The batch processor takes spans off its queue right before it calls the exporter, in the same
   * tick, so counting here mirrors its queue length without reading its private fields. (When a
   * resource still awaits asynchronous attributes the call comes later: this count then runs ahead
   * of the SDK's, so the bound holds all the same.)
   */
  private leftQueue(n: number): void {
    const left = Math.min(n, this.queued);
    this.queued -= left;
    totals.queued -= left;
  }

  onStart(span: Span, parentContext: Context): void {
    this.batch.onStart(span, parentContext);
  }

  onEnd(span: ReadableSpan): void {
    // The batch processor ignores these two as well; they are not losses.
    if (this.stopped || (span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
    if (this.queued >= this.maxQueueSize) {
      // Refused here, where it can be counted; the batch processor would drop it silently.
      count('dropped', 1);
      warner.warn(
        'export:dropped',
        () =>
          `${PACKAGE}: span queue full (maxQueueSize ${this.maxQueueSize}): dropping spans until the exporter ` +
          `catches up; ${totals.dropped} dropped so far.`,
      );
      return;
    }
    this.queued++;
    totals.queued++;
    if (this.queued > totals.peakQueued) totals.peakQueued = this.queued;
    this.batch.onEnd(span);
  }

  /** Exports what is queued; resolves when every export is answered, even if one failed (counted as `failed`). */
  async forceFlush(): Promise<void> {
    // The SDK rejects as soon as one batch fails, while the others are still out: wait for them too.
    await this.batch.forceFlush().catch(() => undefined);
    await this.counting.idle();
  }

  /** Exports what is queued and shuts the exporter down; resolves even if the export failed. */
  async shutdown(): Promise<void> {
    this.stopped = true;
    try {
      await this.batch.shutdown();
    } catch (err) {
      diag.warn(`${PACKAGE}: span export did not finish at shutdown: ${describe(err)}`);
    } finally {
      // A failed flush makes the SDK skip the exporter's shutdown (and leave the other batches out).
      await this.counting.idle();
      await this.counting
        .shutdown()
        .catch((err: unknown) => diag.warn(`${PACKAGE}: span exporter shutdown failed: ${describe(err)}`));
      // Spans the batch processor lost without calling the exporter (a resource whose asynchronous
      // attributes failed) would otherwise stay queued forever in the totals.
      if (this.queued > 0) {
        totals.queued -= this.queued;
        count('dropped', this.queued);
        this.queued = 0;
      }
    }
  }
}
