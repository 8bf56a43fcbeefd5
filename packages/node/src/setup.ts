import {
  DiagConsoleLogger,
  DiagLogLevel,
  context,
  createContextKey,
  diag,
  propagation,
  trace,
} from '@opentelemetry/api';
import type { Sampler } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import type { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import type { Resource, ResourceDetector } from '@opentelemetry/resources';
import { MeshPropagator, checkPropagation } from '@meshtrace/core';
import { optionError } from '@meshtrace/core/adapter';
import type { MeshPropagatorOptions } from '@meshtrace/core';
import { MeshBatchSpanProcessor, otlpTimeoutMillis, resolveBatchConfig } from './span-export';
import { kubernetesDetector } from './k8s';
import { MeshSampler, samplerFromEnv } from './sampler';
import type { SamplingOwner } from './sampler';
import { PACKAGE, optionalPeer, traceSdk } from './sdk';
import type { BufferConfig, SdkTracerProvider, SpanExporter, SpanProcessor } from './sdk';

const CONTEXT_PROBE = createContextKey('@meshtrace/node context probe');

/** True when a real context manager is registered (the no-op one never makes a context active). */
function hasContextManager(): boolean {
  const probe = context.active().setValue(CONTEXT_PROBE, true);
  return context.with(probe, () => context.active().getValue(CONTEXT_PROBE) === true);
}

/** Options of {@link setupMeshTracing}; all optional. */
export interface SetupOptions {
  /** `service.name`. Default: `OTEL_SERVICE_NAME`, else `unknown_service:node`. */
  serviceName?: string;
  /** Where spans go when `OTEL_EXPORTER_OTLP_ENDPOINT` is not set (with it, spans go over OTLP). */
  exporter?: SpanExporter;
  /** Extra span processors, after the batch processor. */
  spanProcessors?: SpanProcessor[];
  /**
   * The local sampler for new traces (and for continued ones with `sampling: 'local'`). Default: `OTEL_TRACES_SAMPLER`,
   * else always-on.
   */
  sampler?: Sampler;
  /**
   * Who decides for a continued trace: `'parent'` (the inbound sampled flag, so proxy and SDK agree)
   * or `'local'` (the sampler; the outbound flag says what it decided). Default `'parent'`, or
   * `'local'` when `OTEL_TRACES_SAMPLER` names a sampler that is not parent-based.
   */
  sampling?: SamplingOwner;
  /**
   * Resource detectors. Default: `OTEL_RESOURCE_ATTRIBUTES`/`OTEL_SERVICE_NAME` and Kubernetes (downward API, cgroup).
   */
  resourceDetectors?: ResourceDetector[];
  /**
   * Batch processor queue and timing (`maxQueueSize` bounds memory while the collector is away;
   * spans refused by a full queue are counted, see `exportStats`). Default: `OTEL_BSP_*`, else the SDK's defaults.
   */
  batch?: BufferConfig;
  /** More resource attributes, merged over the detected ones. */
  resource?: Resource;
  /** Options of the global {@link MeshPropagator}. */
  propagator?: MeshPropagatorOptions;
  /** Where the one start-up line goes; `false` for nowhere. Default: standard error. */
  log?: ((line: string) => void) | false;
  /** Environment to read `OTEL_*` from. Default: `process.env`. */
  env?: Readonly<Record<string, string | undefined>>;
}

/** What {@link setupMeshTracing} registered. */
export interface MeshTracing {
  /** The SDK's tracer provider, or undefined when `OTEL_SDK_DISABLED=true`. */
  readonly tracerProvider: SdkTracerProvider | undefined;
  readonly propagator: MeshPropagator;
  /** Flushes and stops span export. */
  shutdown(): Promise<void>;
}

const LOG_LEVELS: Readonly<Record<string, DiagLogLevel>> = {
  NONE: DiagLogLevel.NONE,
  ERROR: DiagLogLevel.ERROR,
  WARN: DiagLogLevel.WARN,
  INFO: DiagLogLevel.INFO,
  DEBUG: DiagLogLevel.DEBUG,
  VERBOSE: DiagLogLevel.VERBOSE,
  ALL: DiagLogLevel.ALL,
};

/** Where `@opentelemetry/api` 1.x keeps what is registered with it (a tracer provider, a diag logger, ...). */
const API_GLOBALS = Symbol.for('opentelemetry.js.api.1');

/**
 * Whether the application set a diag logger: the API cannot be asked, so its registry is read. Never with
 * MESHTRACE_PUBLIC_API_ONLY=1 (core's switch for reads of OpenTelemetry's internals): then no logger is seen.
 */
function diagLoggerSet(): boolean {
  if (process.env.MESHTRACE_PUBLIC_API_ONLY === '1') return false;
  const registry = (globalThis as { [API_GLOBALS]?: Record<string, unknown> | null })[API_GLOBALS];
  return typeof registry === 'object' && registry !== null && registry.diag !== undefined;
}

/**
 * meshtrace reports lost traces through `diag`, which logs nowhere until a logger is set. Unless
 * the application set one, log to the console at `OTEL_LOG_LEVEL` (as NodeSDK does), `WARN` when unset.
 */
function ensureDiagLogger(env: Readonly<Record<string, string | undefined>>): string {
  if (diagLoggerSet()) return 'warnings to the diag logger set before';
  const name = (env.OTEL_LOG_LEVEL ?? '').trim().toUpperCase() || 'WARN';
  const level = LOG_LEVELS[name] ?? DiagLogLevel.WARN;
  if (level === DiagLogLevel.NONE) return 'warnings off (OTEL_LOG_LEVEL=none)';
  diag.setLogger(new DiagConsoleLogger(), { logLevel: level, suppressOverrideMessage: true });
  return `warnings to the console (OTEL_LOG_LEVEL=${LOG_LEVELS[name] === undefined ? 'warn' : name.toLowerCase()})`;
}

function check<T>(value: T | undefined, option: string, ok: (v: T) => boolean, expected: string): void {
  if (value !== undefined && !ok(value)) throw optionError(PACKAGE, option, expected, value);
}

/**
 * One call at process start: AsyncLocalStorage context (if none is set), the {@link MeshPropagator}
 * globally, the application's trace SDK (`@opentelemetry/sdk-trace` 3 or `sdk-trace-base` 2.x) with a
 * batch processor to OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`) or to `exporter`, and a console `diag`
 * logger unless one is set. With `OTEL_SDK_DISABLED=true` no spans are made, yet context still flows.
 * @example
 * setupMeshTracing({ serviceName: 'checkout' });
 */
export function setupMeshTracing(options: SetupOptions = {}): MeshTracing {
  if (options === null || typeof options !== 'object') throw optionError(PACKAGE, 'options', 'an object', options);
  const env = options.env ?? process.env;
  check(options.serviceName, 'serviceName', (v) => typeof v === 'string' && v.length > 0, 'a non-empty string');
  check(
    options.exporter,
    'exporter',
    (v) => typeof v?.export === 'function' && typeof v?.shutdown === 'function',
    'a SpanExporter',
  );
  check(
    options.spanProcessors,
    'spanProcessors',
    (v) => Array.isArray(v) && v.every((p) => typeof p?.onEnd === 'function'),
    'an array of SpanProcessors',
  );
  check(options.sampler, 'sampler', (v) => typeof v?.shouldSample === 'function', 'a Sampler');
  check(options.sampling, 'sampling', (v) => v === 'parent' || v === 'local', "'parent' or 'local'");
  check(
    options.resourceDetectors,
    'resourceDetectors',
    (v) => Array.isArray(v) && v.every((d) => typeof d?.detect === 'function'),
    'an array of ResourceDetectors',
  );
  check(options.batch, 'batch', (v) => typeof v === 'object' && v !== null, 'an object');
  check(options.log, 'log', (v) => v === false || typeof v === 'function', 'a function or false');
  const batch = resolveBatchConfig(options.batch, env);
  const propagator = new MeshPropagator(options.propagator);
  const log =
    options.log === false
      ? () => undefined
      : (options.log ?? ((line: string) => void process.stderr.write(`${line}\n`)));
  const disabled = String(env.OTEL_SDK_DISABLED).trim().toLowerCase() === 'true';
  // OTLP/HTTP §endpoint: the signal-specific variable is used as is; the generic one gets /v1/traces.
  const endpoint =
    env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ||
    (env.OTEL_EXPORTER_OTLP_ENDPOINT ? `${env.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/+$/, '')}/v1/traces` : undefined);
  // What is missing fails here, before anything is registered.
  const sdk = disabled ? undefined : traceSdk();
  const otlp =
    disabled || !endpoint
      ? undefined
      : optionalPeer<{ OTLPTraceExporter: typeof OTLPTraceExporter }>(
          '@opentelemetry/exporter-trace-otlp-proto',
          'OTEL_EXPORTER_OTLP_ENDPOINT',
        ).OTLPTraceExporter;
  const warnings = ensureDiagLogger(env);

  let contextManager = 'already registered';
  if (!hasContextManager()) {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    contextManager = 'AsyncLocalStorage';
  }
  let replaced = '';
  if (!propagation.setGlobalPropagator(propagator)) {
    // Registered first by other code: the caller asked for meshtrace, so meshtrace it is.
    propagation.disable();
    propagation.setGlobalPropagator(propagator);
    replaced = '; replaced the propagator registered before it';
  }
  // Code that runs right after setup (another SDK's start(), say) may replace what was registered.
  setImmediate(checkPropagation).unref();

  const fields = propagator.fields().join(', ');
  if (sdk === undefined) {
    log(
      `${PACKAGE}: propagating ${fields}${replaced}; context manager ${contextManager}; OTEL_SDK_DISABLED=true, ` +
        `so no spans are recorded; ${warnings}`,
    );
    return { tracerProvider: undefined, propagator, shutdown: async () => undefined };
  }

  const exporter =
    otlp !== undefined && endpoint
      ? new otlp({ url: endpoint, timeoutMillis: otlpTimeoutMillis(env, batch.exportTimeoutMillis) })
      : options.exporter;
  const serviceName = options.serviceName ?? env.OTEL_SERVICE_NAME;
  let resource = detectResources({
    detectors: options.resourceDetectors ?? [envDetector, kubernetesDetector({ env })],
  });
  if (serviceName) resource = resource.merge(resourceFromAttributes({ 'service.name': serviceName }));
  if (options.resource) resource = resource.merge(options.resource);
  // Counts what the SDK's batch processor would lose silently: spans refused by a full queue, failed exports.
  const processors: SpanProcessor[] = exporter ? [new MeshBatchSpanProcessor(exporter, batch)] : [];
  if (options.spanProcessors) processors.push(...options.spanProcessors);
  const fromEnv = samplerFromEnv(env);
  const sampler = new MeshSampler(options.sampler ?? fromEnv.root, options.sampling ?? fromEnv.owner);
  const tracerProvider = new sdk.TracerProvider({ resource, sampler, spanProcessors: processors });
  if (!trace.setGlobalTracerProvider(tracerProvider)) {
    trace.disable();
    trace.setGlobalTracerProvider(tracerProvider);
    replaced += '; replaced the tracer provider registered before it';
  }

  const where = endpoint
    ? `OTLP ${endpoint}`
    : exporter
      ? exporter.constructor.name
      : 'no exporter (spans are not exported)';
  log(
    `${PACKAGE}: propagating ${fields}${replaced}; context manager ${contextManager}; service ` +
      `${String(resource.attributes['service.name'] ?? 'unknown_service:node')}; spans to ${where} (${sdk.name}); ` +
      `${warnings}`,
  );
  if (!exporter && !options.spanProcessors?.length)
    diag.warn(`${PACKAGE}: no exporter and no span processor: spans are recorded but go nowhere`);
  return { tracerProvider, propagator, shutdown: () => tracerProvider.shutdown() };
}
