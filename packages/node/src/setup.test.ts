import { spawnSync } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import {
  DiagLogLevel,
  ROOT_CONTEXT,
  context,
  defaultTextMapGetter,
  diag,
  propagation,
  trace,
} from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import { checkPropagation } from '@meshtrace/core';
import { warner } from '@meshtrace/core/adapter';
import { hasContextManager } from '@meshtrace/testkit';
import { setupMeshTracing } from '@meshtrace/node';
import { loadTraceSdk, optionalPeer } from './sdk';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const P = '00f067aa0ba902b7';

afterEach(() => {
  trace.disable();
  propagation.disable();
  context.disable();
  diag.disable();
});

test('registers context, propagator and provider, and says so in one line', async () => {
  const lines: string[] = [];
  const exporter = new InMemorySpanExporter();
  expect(hasContextManager()).toBe(false);
  const tracing = setupMeshTracing({
    serviceName: 'checkout',
    exporter,
    log: (l) => lines.push(l),
    batch: { scheduledDelayMillis: 10 },
    env: {},
  });
  expect(hasContextManager()).toBe(true);
  expect(propagation.fields()).toEqual([
    'traceparent',
    'tracestate',
    'baggage',
    'b3',
    'x-b3-traceid',
    'x-b3-spanid',
    'x-b3-sampled',
    'x-b3-flags',
  ]);
  expect(lines).toHaveLength(1);
  expect(lines[0]).toContain('traceparent, tracestate, baggage');
  expect(lines[0]).toContain('service checkout');
  const parent = propagation.extract(ROOT_CONTEXT, { traceparent: `00-${T}-${P}-01` }, defaultTextMapGetter);
  trace.getTracer('t').startSpan('work', {}, parent).end();
  await tracing.tracerProvider?.forceFlush();
  const [span] = exporter.getFinishedSpans();
  expect(span.spanContext().traceId).toBe(T);
  expect(span.resource.attributes['service.name']).toBe('checkout');
  await tracing.shutdown();
});

test('OTEL_SERVICE_NAME names the service when the option does not', async () => {
  const exporter = new InMemorySpanExporter();
  const tracing = setupMeshTracing({ exporter, log: false, env: { OTEL_SERVICE_NAME: 'from-env' } });
  trace.getTracer('t').startSpan('x').end();
  await tracing.tracerProvider?.forceFlush();
  expect(exporter.getFinishedSpans()[0].resource.attributes['service.name']).toBe('from-env');
  await tracing.shutdown();
});

test('OTEL_SDK_DISABLED=true records nothing, yet the caller context flows to outbound calls', () => {
  const lines: string[] = [];
  const tracing = setupMeshTracing({ log: (l) => lines.push(l), env: { OTEL_SDK_DISABLED: 'true' } });
  expect(tracing.tracerProvider).toBeUndefined();
  expect(lines[0]).toContain('OTEL_SDK_DISABLED');
  const parent = propagation.extract(
    ROOT_CONTEXT,
    { traceparent: `00-${T}-${P}-01`, baggage: 'k=v' },
    defaultTextMapGetter,
  );
  const out: Record<string, string> = {};
  context.with(parent, () => {
    const span = trace.getTracer('t').startSpan('server');
    expect(span.isRecording()).toBe(false);
    context.with(trace.setSpan(context.active(), span), () => propagation.inject(context.active(), out));
  });
  expect(out).toEqual({ traceparent: `00-${T}-${P}-01`, baggage: 'k=v' });
});

test('an existing context manager is kept', () => {
  setupMeshTracing({ log: false, env: { OTEL_SDK_DISABLED: 'true' } });
  const lines: string[] = [];
  setupMeshTracing({ log: (l) => lines.push(l), env: { OTEL_SDK_DISABLED: 'true' } });
  expect(lines[0]).toContain('context manager already registered');
});

test('with OTEL_EXPORTER_OTLP_ENDPOINT spans go to the collector over OTLP/HTTP protobuf', async () => {
  const received: Array<{ url?: string; type?: string; bytes: number }> = [];
  const collector = createServer((req, res) => {
    let bytes = 0;
    req.on('data', (c: Buffer) => (bytes += c.length));
    req.on('end', () => {
      received.push({ url: req.url, type: req.headers['content-type'], bytes });
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((r) => collector.listen(0, '127.0.0.1', r));
  const port = (collector.address() as AddressInfo).port;
  try {
    const lines: string[] = [];
    const tracing = setupMeshTracing({
      serviceName: 'svc',
      log: (l) => lines.push(l),
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}/` },
    });
    expect(lines[0]).toContain(`OTLP http://127.0.0.1:${port}/v1/traces`);
    trace.getTracer('t').startSpan('exported').end();
    await tracing.shutdown();
    expect(received).toHaveLength(1);
    expect(received[0]).toMatchObject({ url: '/v1/traces', type: 'application/x-protobuf' });
    expect(received[0].bytes).toBeGreaterThan(0);
  } finally {
    await new Promise((r) => collector.close(r));
  }
});

const bad: Array<[string, unknown]> = [
  ['serviceName', { serviceName: '' }],
  ['exporter', { exporter: {} }],
  ['spanProcessors', { spanProcessors: [{}] }],
  ['sampler', { sampler: 1 }],
  ['sampling', { sampling: 'mine' }],
  ['resourceDetectors', { resourceDetectors: [1] }],
  ['batch', { batch: 'fast' }],
  ['log', { log: 'stderr' }],
  ['maxBaggageBytes', { propagator: { maxBaggageBytes: 'big' } }],
];
test.each(bad)('bad option %s fails at setup with a TypeError naming it', (option, options) => {
  expect(() => setupMeshTracing(options as never)).toThrow(new RegExp(`^@meshtrace/(node|core): option "${option}"`));
  expect(() => setupMeshTracing(options as never)).toThrow(TypeError);
});

test('Kubernetes attributes from the downward API are on the resource by default', async () => {
  const exporter = new InMemorySpanExporter();
  const tracing = setupMeshTracing({
    exporter,
    log: false,
    env: { K8S_POD_NAME: 'checkout-1', K8S_NAMESPACE_NAME: 'shop' },
  });
  trace.getTracer('t').startSpan('x').end();
  await tracing.tracerProvider?.forceFlush();
  expect(exporter.getFinishedSpans()[0].resource.attributes).toMatchObject({
    'k8s.pod.name': 'checkout-1',
    'k8s.namespace.name': 'shop',
  });
  await tracing.shutdown();
});

test.each([
  ['parent', 0],
  ['local', 1],
] as const)("sampling: '%s' with an unsampled caller records %i span(s)", async (sampling, count) => {
  const exporter = new InMemorySpanExporter();
  const tracing = setupMeshTracing({ exporter, log: false, sampling, env: {} });
  const parent = propagation.extract(ROOT_CONTEXT, { traceparent: `00-${T}-${P}-00` }, defaultTextMapGetter);
  trace.getTracer('t').startSpan('server', {}, parent).end();
  await tracing.tracerProvider?.forceFlush();
  expect(exporter.getFinishedSpans()).toHaveLength(count);
  await tracing.shutdown();
});

test('a propagator replaced right after setup is reported', async () => {
  const warnings: string[] = [];
  diag.setLogger(
    { warn: (m: string) => warnings.push(m), error: () => {}, info: () => {}, debug: () => {}, verbose: () => {} },
    DiagLogLevel.WARN,
  );
  try {
    setupMeshTracing({ log: false, env: { OTEL_SDK_DISABLED: 'true' } });
    propagation.disable();
    propagation.setGlobalPropagator({ inject: () => undefined, extract: (c) => c, fields: () => ['x-custom'] });
    await new Promise((r) => setImmediate(r));
    expect(warnings.some((w) => w.includes('does not read traceparent'))).toBe(true);
    expect(checkPropagation()).toEqual([
      'the global propagator does not read traceparent (was it replaced after setup?)',
    ]);
  } finally {
    diag.disable();
  }
});

test('setup replaces a propagator and provider registered before it, and says so', async () => {
  propagation.setGlobalPropagator({ inject: () => undefined, extract: (c) => c, fields: () => ['x-custom'] });
  const lines: string[] = [];
  const tracing = setupMeshTracing({ log: (l) => lines.push(l), exporter: new InMemorySpanExporter(), env: {} });
  expect(propagation.fields()).toContain('traceparent');
  expect(lines.join('\n')).toContain('replaced the propagator registered before it');
  await tracing.shutdown();
});

describe("the application's trace SDK", () => {
  const notFound = (name: string): never => {
    throw Object.assign(new Error(`Cannot find module '${name}'`), { code: 'MODULE_NOT_FOUND' });
  };

  test.each(['@opentelemetry/sdk-trace', '@opentelemetry/sdk-trace-base'] as const)(
    '%s: its provider and batch processor export a continued span',
    async (name) => {
      const sdk = loadTraceSdk([name]);
      expect(sdk.name).toBe(name);
      const exporter = new InMemorySpanExporter();
      const provider = new sdk.TracerProvider({
        spanProcessors: [
          sdk.batchSpanProcessor(exporter, {
            scheduledDelayMillis: 10,
            maxQueueSize: 10,
            maxExportBatchSize: 10,
            exportTimeoutMillis: 1000,
          }),
        ],
      });
      const parent = trace.setSpanContext(ROOT_CONTEXT, { traceId: T, spanId: P, traceFlags: 1, isRemote: true });
      provider.getTracer('t').startSpan('work', {}, parent).end();
      await provider.forceFlush();
      expect(exporter.getFinishedSpans().map((s) => s.spanContext().traceId)).toEqual([T]);
      await provider.shutdown();
    },
  );

  test('sdk-trace-base is used when sdk-trace is not installed', () => {
    const sdk = loadTraceSdk(undefined, (name) =>
      name === '@opentelemetry/sdk-trace' ? notFound(name) : require(name),
    );
    expect(sdk.name).toBe('@opentelemetry/sdk-trace-base');
  });

  test('neither installed: a TypeError that says what to install', () => {
    expect(() => loadTraceSdk(undefined, notFound)).toThrow(
      new TypeError(
        '@meshtrace/node: no OpenTelemetry trace SDK is installed: npm install @opentelemetry/sdk-trace (SDK 3 and 2.9+) or @opentelemetry/sdk-trace-base (SDK 2.x)',
      ),
    );
  });

  test('an SDK that fails to load for another reason is not hidden', () => {
    expect(() =>
      loadTraceSdk(undefined, () => {
        throw new SyntaxError('broken build');
      }),
    ).toThrow(SyntaxError);
  });

  test('an OTLP endpoint without the exporter installed is a TypeError naming the variable and the package', () => {
    expect(() =>
      optionalPeer('@opentelemetry/exporter-trace-otlp-proto', 'OTEL_EXPORTER_OTLP_ENDPOINT', notFound),
    ).toThrow(
      new TypeError(
        '@meshtrace/node: OTEL_EXPORTER_OTLP_ENDPOINT needs @opentelemetry/exporter-trace-otlp-proto: npm install @opentelemetry/exporter-trace-otlp-proto',
      ),
    );
  });

  test('the start-up line names the SDK in use', () => {
    const lines: string[] = [];
    void setupMeshTracing({ exporter: new InMemorySpanExporter(), log: (l) => lines.push(l), env: {} }).shutdown();
    expect(lines[0]).toContain('(@opentelemetry/sdk-trace)');
  });
});

describe('warnings reach the application', () => {
  const lost = () => propagation.extract(ROOT_CONTEXT, { traceparent: 'garbage' }, defaultTextMapGetter);

  test('without a diag logger, setup logs warnings to the console at WARN and says so', () => {
    // The API's console logger keeps the console methods it found when it loaded, so this runs in a child process (on
    // the build).
    const script = `
      const { propagation, ROOT_CONTEXT } = require('@opentelemetry/api');
      const { setupMeshTracing } = require(${JSON.stringify(join(__dirname, '..', 'dist', 'index.js'))});
      const { InMemorySpanExporter } = require('@opentelemetry/sdk-trace');
      setupMeshTracing({ exporter: new InMemorySpanExporter(), env: {} });
      propagation.extract(ROOT_CONTEXT, { traceparent: 'garbage' });
      propagation.extract(ROOT_CONTEXT, { traceparent: 'garbage' });`;
    const run = spawnSync(process.execPath, ['-e', script], {
      cwd: join(__dirname, '..'),
      encoding: 'utf8',
      env: { PATH: process.env.PATH },
    });
    expect(run.status).toBe(0);
    const lines = run.stderr.trim().split('\n');
    expect(lines[0]).toContain('warnings to the console (OTEL_LOG_LEVEL=warn)');
    // Rate-limited: one line for the two requests.
    expect(lines.slice(1)).toEqual([
      expect.stringContaining('@meshtrace/core: malformed traceparent (bad-version) "garbage"'),
    ]);
  });

  test('a diag logger the application set is kept', () => {
    const lines: string[] = [];
    const mine: string[] = [];
    diag.setLogger(
      { warn: (m: string) => mine.push(m), error: () => {}, info: () => {}, debug: () => {}, verbose: () => {} },
      DiagLogLevel.WARN,
    );
    void setupMeshTracing({ exporter: new InMemorySpanExporter(), log: (l) => lines.push(l), env: {} }).shutdown();
    expect(lines[0]).toContain('warnings to the diag logger set before');
    warner.reset();
    lost();
    expect(mine).toEqual([expect.stringContaining('malformed traceparent')]);
  });

  test('OTEL_LOG_LEVEL=none keeps them off', () => {
    const lines: string[] = [];
    void setupMeshTracing({
      exporter: new InMemorySpanExporter(),
      log: (l) => lines.push(l),
      env: { OTEL_LOG_LEVEL: 'none' },
    }).shutdown();
    expect(lines[0]).toContain('warnings off');
  });
});
