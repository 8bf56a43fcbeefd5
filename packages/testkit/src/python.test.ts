import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jaegerTrace, startJaeger } from './jaeger';
import type { JaegerServer } from './jaeger';
import { startHeaderRecorder } from './outbound';
import type { HeaderRecorder } from './outbound';
import { PYTHON_SERVICE, startPythonService } from './python';

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

interface ServiceAnswer {
  received: Record<string, string>;
  traceId: string;
  spanId: string;
  next?: { status: number; body: string };
}

let jaeger: JaegerServer;
let next: HeaderRecorder;

beforeAll(async () => {
  next = await startHeaderRecorder();
  jaeger = await startJaeger();
}, 60_000);

afterAll(async () => {
  await next?.close();
  await jaeger?.stop();
}, 30_000);

describe('startPythonService (aiohttp with OpenTelemetry Python)', () => {
  test('continues a sent traceparent (parent of its SERVER span in Jaeger) and propagates it on', async () => {
    const svc = await startPythonService(PYTHON_SERVICE, {
      OTEL_SERVICE_NAME: 'py-orders',
      OTEL_EXPORTER_OTLP_ENDPOINT: jaeger.otlpHttpUrl,
      NEXT_URL: `${next.base}/continued`,
    });
    const [traceId, parentId] = [hex(16), hex(8)];
    try {
      const res = await fetch(`${svc.url}/orders`, { headers: { traceparent: `00-${traceId}-${parentId}-01` } });
      expect(res.status).toBe(200);
      const body = (await res.json()) as ServiceAnswer;
      expect(body.traceId).toBe(traceId);
      expect(body.next?.status).toBe(200);
    } finally {
      await svc.stop();
    }

    const spans = await jaegerTrace(jaeger.queryUrl, traceId, {
      until: (all) => all.filter((s) => s.serviceName === 'py-orders').length >= 2,
    });
    const server = spans.find((s) => s.serviceName === 'py-orders' && s.parentSpanId === parentId);
    expect(server).toMatchObject({ traceId, parentSpanId: parentId });
    expect(server?.tags['span.kind']).toBe('server');
    const client = spans.find((s) => s.serviceName === 'py-orders' && s.parentSpanId === server?.spanId);
    expect(client?.tags['span.kind']).toBe('client');
    // The aiohttp client instrumentation put its CLIENT span on the wire as the next hop's parent.
    expect(next.values('/continued', 'traceparent')).toEqual([`00-${traceId}-${client?.spanId}-01`]);
  }, 60_000);

  test('FORWARD_TRACEPARENT=upper sends the next hop the same traceparent in upper case', async () => {
    const svc = await startPythonService(PYTHON_SERVICE, {
      NEXT_URL: `${next.base}/upper`,
      FORWARD_TRACEPARENT: 'upper',
    });
    try {
      const traceId = hex(16);
      await fetch(svc.url, { headers: { traceparent: `00-${traceId}-${hex(8)}-01` } });
      const [sent] = next.values('/upper', 'traceparent');
      expect(sent).toMatch(new RegExp(`^00-${traceId.toUpperCase()}-[0-9A-F]{16}-01$`));
      expect(sent).not.toBe(sent.toLowerCase());
    } finally {
      await svc.stop();
    }
  }, 60_000);

  test('OTEL_PROPAGATORS=b3multi: continues X-B3 headers and sends them on', async () => {
    const svc = await startPythonService(PYTHON_SERVICE, { OTEL_PROPAGATORS: 'b3multi', NEXT_URL: `${next.base}/b3` });
    try {
      const [traceId, spanId] = [hex(16), hex(8)];
      const res = await fetch(svc.url, {
        headers: { 'X-B3-TraceId': traceId, 'X-B3-SpanId': spanId, 'X-B3-Sampled': '1' },
      });
      expect(((await res.json()) as ServiceAnswer).traceId).toBe(traceId);
      expect(next.values('/b3', 'x-b3-traceid')).toEqual([traceId]);
      expect(next.values('/b3', 'traceparent')).toEqual([]);
    } finally {
      await svc.stop();
    }
  }, 60_000);

  test('a program that exits before listening fails the start with its own output', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshtrace-python-test-'));
    try {
      const script = join(dir, 'broken.py');
      writeFileSync(script, 'import sys\nprint("no port for me", file=sys.stderr)\nsys.exit(3)\n');
      await expect(startPythonService(script)).rejects.toThrow(/exited \(3\) before it was ready:\nno port for me/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});
