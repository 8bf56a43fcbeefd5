import { SpanKind, context, trace } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { jaegerTrace, startJaeger } from './jaeger';
import type { JaegerServer } from './jaeger';

let jaeger: JaegerServer;

beforeAll(async () => {
  jaeger = await startJaeger();
}, 60_000);

afterAll(() => jaeger?.stop(), 30_000);

interface V3Span {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
}
interface V3Answer {
  result: {
    resourceSpans: {
      resource: { attributes: { key: string; value: { stringValue?: string } }[] };
      scopeSpans: { spans: V3Span[] }[];
    }[];
  };
}

describe('startJaeger', () => {
  test('takes an OTLP/HTTP protobuf export and returns it on /api/traces/{id} and /api/v3/traces/{id}', async () => {
    const provider = new TracerProvider({
      resource: resourceFromAttributes({ 'service.name': 'inventory' }),
      spanProcessors: [
        new SimpleSpanProcessor({ exporter: new OTLPTraceExporter({ url: `${jaeger.otlpHttpUrl}/v1/traces` }) }),
      ],
    });
    const tracer = provider.getTracer('jaeger-test');
    const server = tracer.startSpan('GET /stock/:sku', { kind: SpanKind.SERVER });
    const { traceId, spanId } = server.spanContext();
    const client = tracer.startSpan('GET', { kind: SpanKind.CLIENT }, trace.setSpan(context.active(), server));
    client.end();
    server.end();
    await provider.forceFlush();
    await provider.shutdown();

    const spans = await jaegerTrace(jaeger.queryUrl, traceId, { until: (all) => all.length === 2 });
    const byName = new Map(spans.map((s) => [s.name, s]));
    expect(byName.get('GET /stock/:sku')).toMatchObject({
      traceId,
      spanId,
      parentSpanId: undefined,
      serviceName: 'inventory',
    });
    expect(byName.get('GET')).toMatchObject({
      traceId,
      spanId: client.spanContext().spanId,
      parentSpanId: spanId,
      serviceName: 'inventory',
    });

    const res = await fetch(`${jaeger.queryUrl}/api/v3/traces/${traceId}`);
    expect(res.status).toBe(200);
    const v3 = (await res.json()) as V3Answer;
    const resources = v3.result.resourceSpans;
    expect(resources.flatMap((r) => r.resource.attributes.filter((a) => a.key === 'service.name'))).toContainEqual({
      key: 'service.name',
      value: { stringValue: 'inventory' },
    });
    const v3Spans = resources.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans));
    expect(v3Spans.map((s) => [s.name, s.traceId, s.spanId, s.parentSpanId ?? '']).sort()).toEqual(
      [
        ['GET', traceId, client.spanContext().spanId, spanId],
        ['GET /stock/:sku', traceId, spanId, ''],
      ].sort(),
    );
  }, 60_000);

  test('a trace it never received: jaegerTrace gives up with what Jaeger answered', async () => {
    await expect(jaegerTrace(jaeger.queryUrl, 'f'.repeat(32), { timeoutMs: 300 })).rejects.toThrow(
      /Jaeger had no matching trace f{32}.*404/,
    );
  });
});
