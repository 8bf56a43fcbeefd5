import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DiagLogLevel, ROOT_CONTEXT, context, defaultTextMapGetter, diag, propagation, trace } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { checkPropagation, hasContextManager, setupMeshTracing } from '@meshtrace/core';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const P = '00f067aa0ba902b7';

afterEach(() => {
  trace.disable();
  propagation.disable();
  context.disable();
});

test('registers context, propagator and provider, and says so in one line', async () => {
  const lines: string[] = [];
  const exporter = new InMemorySpanExporter();
  expect(hasContextManager()).toBe(false);
  const tracing = setupMeshTracing({ serviceName: 'checkout', exporter, log: (l) => lines.push(l), batch: { scheduledDelayMillis: 10 }, env: {} });
  expect(hasContextManager()).toBe(true);
  expect(propagation.fields()).toEqual(['traceparent', 'tracestate', 'baggage', 'b3', 'x-b3-traceid', 'x-b3-spanid', 'x-b3-sampled', 'x-b3-flags']);
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
  const parent = propagation.extract(ROOT_CONTEXT, { traceparent: `00-${T}-${P}-01`, baggage: 'k=v' }, defaultTextMapGetter);
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
    const tracing = setupMeshTracing({ serviceName: 'svc', log: (l) => lines.push(l), env: { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}/` } });
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
  expect(() => setupMeshTracing(options as never)).toThrow(new RegExp(`^@meshtrace/core: option "${option}"`));
  expect(() => setupMeshTracing(options as never)).toThrow(TypeError);
});

test('Kubernetes attributes from the downward API are on the resource by default', async () => {
  const exporter = new InMemorySpanExporter();
  const tracing = setupMeshTracing({ exporter, log: false, env: { K8S_POD_NAME: 'checkout-1', K8S_NAMESPACE_NAME: 'shop' } });
  trace.getTracer('t').startSpan('x').end();
  await tracing.tracerProvider?.forceFlush();
  expect(exporter.getFinishedSpans()[0].resource.attributes).toMatchObject({ 'k8s.pod.name': 'checkout-1', 'k8s.namespace.name': 'shop' });
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
  diag.setLogger({ warn: (m: string) => warnings.push(m), error: () => {}, info: () => {}, debug: () => {}, verbose: () => {} }, DiagLogLevel.WARN);
  try {
    setupMeshTracing({ log: false, env: { OTEL_SDK_DISABLED: 'true' } });
    propagation.disable();
    propagation.setGlobalPropagator({ inject: () => undefined, extract: (c) => c, fields: () => ['x-custom'] });
    await new Promise((r) => setImmediate(r));
    expect(warnings.some((w) => w.includes('does not read traceparent'))).toBe(true);
    expect(checkPropagation()).toEqual(['the global propagator does not read traceparent (was it replaced after setup?)']);
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
