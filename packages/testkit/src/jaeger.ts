import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { httpStatus, launch, portAccepts } from './launch';
import { freePort } from './nginx';
import { peerDir } from './peers';

/** Options of {@link startJaeger}; all optional. */
export interface JaegerOptions {
  /** How long to wait for the query API and the OTLP ports. Default 30000 ms. */
  startTimeoutMs?: number;
}

/** A private Jaeger all-in-one on 127.0.0.1 with in-memory storage. */
export interface JaegerServer {
  /** OTLP/HTTP receiver base URL (`/v1/traces` below it). */
  readonly otlpHttpUrl: string;
  /** OTLP/gRPC receiver port on 127.0.0.1. */
  readonly otlpGrpcPort: number;
  /** Query API and UI base URL (`/api/traces/{id}`, `/api/v3/traces/{id}`). */
  readonly queryUrl: string;
  /** Jaeger's output so far. */
  output(): string;
  stop(): Promise<void>;
}

/** One span as Jaeger's query API returns it, reduced to what the tests compare. */
export interface JaegerSpan {
  readonly traceId: string;
  readonly spanId: string;
  /** The CHILD_OF reference's span id; undefined for a root. */
  readonly parentSpanId: string | undefined;
  readonly name: string;
  readonly serviceName: string;
  /** Tags (span attributes), by key. */
  readonly tags: Readonly<Record<string, unknown>>;
}

/** Options of {@link jaegerTrace}. */
export interface JaegerTraceOptions {
  /** Keep asking until the spans satisfy this (spans arrive in batches). Default: at least one span. */
  until?: (spans: readonly JaegerSpan[]) => boolean;
  /** Default 10000 ms. */
  timeoutMs?: number;
}

// Jaeger v2 is an OpenTelemetry Collector; this is its all-in-one configuration (memory storage, query,
// OTLP receivers) with every endpoint on 127.0.0.1 and its own telemetry kept in the process.
function config(p: { otlpHttp: number; otlpGrpc: number; query: number; queryGrpc: number }): string {
  return `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:${p.query}
    grpc:
      endpoint: 127.0.0.1:${p.queryGrpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:${p.otlpGrpc}
      http:
        endpoint: 127.0.0.1:${p.otlpHttp}

processors:
  batch:
    timeout: 100ms

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`;
}

/**
 * Starts Jaeger all-in-one (the build `npx -y pnpm@10 peers jaeger` brings) with in-memory storage,
 * OTLP/HTTP and OTLP/gRPC receivers and the query API on free loopback ports. Resolves once the query
 * API answers and both OTLP ports accept connections; `stop()` ends it and removes its config.
 * @example
 * const jaeger = await startJaeger();
 * const spans = await jaegerTrace(jaeger.queryUrl, traceId);
 * await jaeger.stop();
 */
export async function startJaeger(options: JaegerOptions = {}): Promise<JaegerServer> {
  const jaeger = join(peerDir('jaeger'), 'jaeger');
  const dir = mkdtempSync(join(tmpdir(), 'meshtrace-jaeger-'));
  try {
    const ports = {
      otlpHttp: await freePort(),
      otlpGrpc: await freePort(),
      query: await freePort(),
      queryGrpc: await freePort(),
    };
    const file = join(dir, 'config.yaml');
    writeFileSync(file, config(ports));
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('OTEL_')) env[k] = v;
    const queryUrl = `http://127.0.0.1:${ports.query}`;
    const peer = await launch({
      name: 'jaeger',
      command: jaeger,
      args: ['--config', file],
      env,
      cwd: dir,
      startTimeoutMs: options.startTimeoutMs,
      ready: async () =>
        (await httpStatus(`${queryUrl}/api/services`)) === 200 &&
        (await portAccepts(ports.otlpHttp)) &&
        (await portAccepts(ports.otlpGrpc)),
      cleanup: () => rmSync(dir, { recursive: true, force: true }),
    });
    return {
      otlpHttpUrl: `http://127.0.0.1:${ports.otlpHttp}`,
      otlpGrpcPort: ports.otlpGrpc,
      queryUrl,
      output: peer.output,
      stop: peer.stop,
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

interface V1Trace {
  spans: {
    traceID: string;
    spanID: string;
    operationName: string;
    processID: string;
    references?: { refType: string; traceID: string; spanID: string }[];
    tags?: { key: string; value: unknown }[];
  }[];
  processes: Record<string, { serviceName: string }>;
}

function reduce(trace: V1Trace): JaegerSpan[] {
  return trace.spans.map((s) => ({
    traceId: s.traceID,
    spanId: s.spanID,
    parentSpanId: s.references?.find((r) => r.refType === 'CHILD_OF')?.spanID,
    name: s.operationName,
    serviceName: trace.processes[s.processID]?.serviceName ?? '',
    tags: Object.fromEntries((s.tags ?? []).map((t) => [t.key, t.value])),
  }));
}

/**
 * The spans of one trace from Jaeger's query API (`/api/traces/{id}`), asked again until `until` holds
 * (exporters send in batches); throws after `timeoutMs` with what Jaeger had by then.
 */
export async function jaegerTrace(
  queryUrl: string,
  traceId: string,
  options: JaegerTraceOptions = {},
): Promise<JaegerSpan[]> {
  const until = options.until ?? ((spans) => spans.length > 0);
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  let spans: JaegerSpan[] = [];
  let last = '';
  for (;;) {
    const res = await fetch(`${queryUrl}/api/traces/${traceId}`);
    const text = await res.text();
    last = `${res.status} ${text}`;
    if (res.status === 200) {
      const body = JSON.parse(text) as { data?: V1Trace[] };
      spans = (body.data ?? []).flatMap(reduce);
      if (until(spans)) return spans;
    }
    if (Date.now() > deadline) {
      const seen = spans.map((s) => `${s.serviceName}/${s.name} ${s.spanId} <- ${s.parentSpanId ?? 'root'}`);
      const answer = seen.length > 0 ? seen.join('; ') : last.slice(0, 500);
      throw new Error(`Jaeger had no matching trace ${traceId} within the time allowed; last answer: ${answer}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
