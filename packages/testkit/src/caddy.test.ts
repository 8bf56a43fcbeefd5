import { randomBytes } from 'node:crypto';
import { startCaddy } from './caddy';
import { jaegerTrace, startJaeger } from './jaeger';
import type { JaegerServer } from './jaeger';
import { startHeaderRecorder } from './outbound';
import type { HeaderRecorder } from './outbound';

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

let jaeger: JaegerServer;
let service: HeaderRecorder;
let upstreamPort: number;

beforeAll(async () => {
  service = await startHeaderRecorder();
  upstreamPort = Number(new URL(service.base).port);
  jaeger = await startJaeger();
}, 60_000);

afterAll(async () => {
  await service?.close();
  await jaeger?.stop();
}, 30_000);

describe('startCaddy', () => {
  test('forwards with its own span as the parent, and exports that span to Jaeger under the service name', async () => {
    const caddy = await startCaddy({ upstreamPort, otlpEndpoint: jaeger.otlpHttpUrl, serviceName: 'edge-caddy' });
    try {
      const [traceId, parentId] = [hex(16), hex(8)];
      const res = await fetch(`${caddy.url}/orders/1`, { headers: { traceparent: `00-${traceId}-${parentId}-01` } });
      expect(res.status).toBe(200);
      const seen = service.values('/orders/1', 'traceparent');
      expect(seen).toHaveLength(1);
      const [version, seenTrace, caddySpan, flags] = seen[0].split('-');
      expect([version, seenTrace, flags]).toEqual(['00', traceId, '01']);
      expect(caddySpan).toMatch(/^[0-9a-f]{16}$/);
      expect(caddySpan).not.toBe(parentId);

      const spans = await jaegerTrace(jaeger.queryUrl, traceId, {
        until: (all) => all.some((s) => s.serviceName === 'edge-caddy'),
      });
      const span = spans.find((s) => s.serviceName === 'edge-caddy');
      expect(span).toMatchObject({ traceId, spanId: caddySpan, parentSpanId: parentId, name: 'handler' });
    } finally {
      await caddy.stop();
    }
  }, 60_000);

  test('stripTraceContext: the service sees none of the trace headers Caddy read or wrote', async () => {
    const caddy = await startCaddy({ upstreamPort, stripTraceContext: true, propagators: ['tracecontext', 'b3multi'] });
    try {
      const headers = {
        traceparent: `00-${hex(16)}-${hex(8)}-01`,
        tracestate: 'vendor=1',
        baggage: 'tenant=blue',
        b3: `${hex(16)}-${hex(8)}-1`,
        'x-b3-traceid': hex(16),
        'x-b3-spanid': hex(8),
        'x-b3-sampled': '1',
      };
      expect((await fetch(`${caddy.url}/stripped`, { headers })).status).toBe(200);
      for (const name of Object.keys(headers)) expect([name, service.values('/stripped', name)]).toEqual([name, []]);
    } finally {
      await caddy.stop();
    }
  }, 60_000);

  test("b3multi (Linkerd's headers): Caddy continues the B3 trace and forwards X-B3 headers only", async () => {
    const caddy = await startCaddy({ upstreamPort, propagators: 'b3multi' });
    try {
      const [traceId, spanId] = [hex(16), hex(8)];
      const headers = { 'X-B3-TraceId': traceId, 'X-B3-SpanId': spanId, 'X-B3-Sampled': '1' };
      expect((await fetch(`${caddy.url}/b3`, { headers })).status).toBe(200);
      expect(service.values('/b3', 'x-b3-traceid')).toEqual([traceId]);
      const [forwardedSpan] = service.values('/b3', 'x-b3-spanid');
      expect(forwardedSpan).toMatch(/^[0-9a-f]{16}$/);
      expect(forwardedSpan).not.toBe(spanId);
      expect(service.values('/b3', 'x-b3-sampled')).toEqual(['1']);
      expect(service.values('/b3', 'traceparent')).toEqual([]);
    } finally {
      await caddy.stop();
    }
  }, 60_000);

  test('sampler always_off: the sidecar decides against a sampled caller, and says so in the flags', async () => {
    const caddy = await startCaddy({ upstreamPort, sampler: 'always_off' });
    try {
      const traceId = hex(16);
      await fetch(`${caddy.url}/unsampled`, { headers: { traceparent: `00-${traceId}-${hex(8)}-01` } });
      const [seen] = service.values('/unsampled', 'traceparent');
      expect(seen).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-00$`));
    } finally {
      await caddy.stop();
    }
  }, 60_000);

  test('bad options throw a TypeError naming the package', async () => {
    await expect(startCaddy({ upstreamPort: 0 })).rejects.toThrow(
      new TypeError('@meshtrace/testkit: startCaddy: upstreamPort must be a TCP port, got 0'),
    );
    await expect(startCaddy({ upstreamPort, propagators: ['jaeger' as 'b3'] })).rejects.toThrow(/unknown propagator/);
    await expect(startCaddy({ upstreamPort, samplerArg: 2 })).rejects.toThrow(TypeError);
  });
});
