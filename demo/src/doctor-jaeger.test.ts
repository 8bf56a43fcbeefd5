import { randomBytes } from 'node:crypto';
import { SpanKind, context, trace } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { jaegerSource, runProbe, startReceiver } from '@meshtrace/doctor';
import type { SpanSource } from '@meshtrace/doctor';
import { hasNginx, jaegerTrace, setupTestTracing, startFaultProxy, startJaeger, startNginx } from '@meshtrace/testkit';
import type { JaegerServer, NginxSidecar, TestTracing } from '@meshtrace/testkit';
import { caddyMeshInto } from './jaeger';
import type { Mesh } from './topology';

// `meshtrace probe --backend jaeger` against a real Jaeger, over API v3 and over v1: for the v1 case a
// real nginx in front of Jaeger's query port answers 404 for /api/v3/, as a Jaeger without API v3 does.
let jaeger: JaegerServer;
let v1Only: NginxSidecar;
let tracing: TestTracing;

beforeAll(async () => {
  if (!hasNginx()) throw new Error('nginx is not installed (apt-get install -y nginx): it hides API v3 here');
  tracing = setupTestTracing();
  jaeger = await startJaeger();
  v1Only = await startNginx({
    upstreamPort: Number(new URL(jaeger.queryUrl).port),
    extra: "location /api/v3/ { return 404 '404 page not found\\n'; }",
  });
}, 60_000);

afterAll(async () => {
  await v1Only?.stop();
  await jaeger?.stop();
  await tracing?.shutdown();
}, 30_000);

interface Report {
  verdict: string;
  source: string;
  probes: Array<{
    verdict: string;
    traces: string[];
    spans: number;
    services: string[];
    hops: Array<{ from: string | null; to: string; proxies: string[]; evidence: string | null; state: string }>;
    breaks: Array<{
      hop: { from: string | null; to: string };
      proxies: string[];
      evidence: string | null;
      outcome: string | null;
      callee: { service: string; traceId: string; spanId: string } | null;
      lastCarrier: { service: string; kind: string } | null;
    }>;
    untracedPeers: Array<{ address: string; caller: string; declared: boolean }>;
    searchError: string | null;
    reason: string | null;
    waited: string;
  }>;
}

/** `meshtrace probe --backend jaeger --json` against the mesh's entry; Caddy exports every 200 ms, the services at once. */
async function probe(
  mesh: Mesh,
  endpoint: string,
  more: { mesh?: string[]; source?: SpanSource; count?: number } = {},
): Promise<[number, Report]> {
  const lines: string[] = [];
  const code = await runProbe(
    {
      url: `${mesh.entry}/checkout/42`,
      backend: 'jaeger',
      endpoint,
      batchDelayMs: 500,
      waitMs: 20_000,
      json: true,
      ...more,
    },
    { line: (s = '') => void lines.push(s), color: false, width: 120 },
  );
  return [code, JSON.parse(lines.join('\n')) as Report];
}

const APIS: ReadonlyArray<[string, () => string, boolean]> = [
  ['API v3', () => jaeger.queryUrl, false],
  ['the v1 fallback (API v3 answers 404)', () => v1Only.url, true],
];

describe.each(APIS)(
  'meshtrace probe --backend jaeger through %s, on the mesh behind Caddy sidecars',
  (_name, endpoint, v1) => {
    test('WHOLE: hops named by the application services, each sidecar shown between them', async () => {
      const { mesh, stop } = await caddyMeshInto(jaeger);
      try {
        const [code, report] = await probe(mesh, endpoint());
        expect(code).toBe(0);
        const [p] = report.probes;
        expect(p).toMatchObject({ verdict: 'whole', spans: 8, breaks: [], untracedPeers: [], searchError: null });
        expect(p.traces).toHaveLength(1);
        expect(p.services).toEqual([
          'gateway',
          'gateway-sidecar',
          'inventory',
          'inventory-sidecar',
          'orders',
          'orders-sidecar',
        ]);
        expect(p.hops).toEqual([
          { from: 'probe', to: 'gateway', proxies: ['gateway-sidecar'], evidence: 'parent-link', state: 'continued' },
          { from: 'gateway', to: 'orders', proxies: ['orders-sidecar'], evidence: 'parent-link', state: 'continued' },
          {
            from: 'orders',
            to: 'inventory',
            proxies: ['inventory-sidecar'],
            evidence: 'parent-link',
            state: 'continued',
          },
        ]);
      } finally {
        await stop();
      }
    }, 60_000);

    test('BROKEN at the sidecar that strips traceparent, and Jaeger holds the new trace the doctor names', async () => {
      const { mesh, stop } = await caddyMeshInto(jaeger, { stripAt: 'orders' });
      try {
        const [code, report] = await probe(mesh, endpoint());
        expect(code).toBe(1);
        const [p] = report.probes;
        expect(p.traces).toHaveLength(2);
        expect(p.searchError).toBeNull();
        expect(p.breaks).toEqual([
          expect.objectContaining({
            hop: { from: 'gateway', to: 'orders' },
            proxies: ['orders-sidecar'],
            evidence: 'peer',
            outcome: 'missing',
            lastCarrier: expect.objectContaining({ service: 'orders-sidecar', kind: 'server' }),
          }),
        ]);
        // In the order of the trail, though the new trace has fewer sidecar spans above inventory than the first had above the break.
        expect(p.hops.map((h) => [h.from, h.to, h.proxies, h.state])).toEqual([
          ['probe', 'gateway', ['gateway-sidecar'], 'continued'],
          ['gateway', 'orders', ['orders-sidecar'], 'broken'],
          ['orders', 'inventory', ['inventory-sidecar'], 'continued'],
        ]);
        // The callee the doctor names is, in Jaeger, a root of orders that recorded outcome missing.
        const callee = p.breaks[0].callee!;
        const spans = await jaegerTrace(jaeger.queryUrl, callee.traceId);
        const root = spans.find((s) => s.spanId === callee.spanId);
        expect(root).toMatchObject({ serviceName: 'orders', parentSpanId: undefined });
        expect(root?.tags['meshtrace.propagation.outcome']).toBe('missing');
        if (v1) {
          // nginx answered 404 for API v3 and passed v1 on: the trace and the search per service went over v1.
          const log = v1Only.accessLog();
          expect(log).toMatch(/"GET \/api\/v3\/traces\/[0-9a-f]{32} HTTP\/1\.1" 404/);
          expect(log).toMatch(/"GET \/api\/traces\/[0-9a-f]{32} HTTP\/1\.1" 200/);
          expect(log).toMatch(/"GET \/api\/traces\?service=orders&start=\d+&end=\d+&limit=20 HTTP\/1\.1" 200/);
        }
      } finally {
        await stop();
      }
    }, 60_000);
  },
);

test('a sidecar that samples out: an untraced peer to the probe, and a break once the mesh is declared', async () => {
  const { mesh, stop } = await caddyMeshInto(jaeger, { sidecarTracing: { orders: { sampler: 'always_off' } } });
  try {
    const sidecar = `127.0.0.1:${mesh.sidecars.orders.port}`;
    const [code, report] = await probe(mesh, jaeger.queryUrl);
    expect(report.probes[0].untracedPeers).toEqual([expect.objectContaining({ address: sidecar, caller: 'gateway' })]);
    expect(code).toBe(0);
    const [declared, again] = await probe(mesh, jaeger.queryUrl, { mesh: [sidecar] });
    // The whole probe in the assertion: a wrong verdict shows the suspects and gaps that made it.
    expect({ declared, probe: again.probes[0] }).toMatchObject({
      declared: 1,
      probe: { breaks: [expect.objectContaining({ hop: { from: 'gateway', to: sidecar }, evidence: 'peer' })] },
    });
  } finally {
    await stop();
  }
}, 60_000);

/** This file's Jaeger as the probe reads it, with reads `from` to `to` of a trace failing as an overloaded one's do. */
function failingReads(from: number, to: number): SpanSource & { readonly reads: number } {
  const real = jaegerSource({ endpoint: jaeger.queryUrl });
  let reads = 0;
  return {
    description: real.description,
    get reads() {
      return reads;
    },
    trace: (traceId, window) => {
      reads++;
      if (reads < from || reads > to) return real.trace(traceId, window);
      return Promise.reject(new Error(`GET ${jaeger.queryUrl}/api/v3/traces/${traceId} answered 503`));
    },
    probeTraces: (probeId, window) => real.probeTraces(probeId, window),
    recentRoots: (window) => real.recentRoots?.(window) ?? Promise.resolve([]),
    close: () => real.close(),
  };
}

test("reads that fail once the backend has answered are tried again: the verdict is still the spans' own", async () => {
  const { mesh, stop } = await caddyMeshInto(jaeger);
  try {
    // Five reads in a row fail after the first: more than a backend that never answered is given.
    const source = failingReads(2, 6);
    const [code, report] = await probe(mesh, jaeger.queryUrl, { source });
    expect({ code, probe: report.probes[0], readAgain: source.reads > 6 }).toMatchObject({
      code: 0,
      probe: { verdict: 'whole', spans: 8 },
      readAgain: true,
    });
  } finally {
    await stop();
  }
}, 60_000);

test('a backend that never answers ends the probe after three reads, saying what failed', async () => {
  const { mesh, stop } = await caddyMeshInto(jaeger);
  try {
    const source = failingReads(1, Number.POSITIVE_INFINITY);
    const [code, report] = await probe(mesh, jaeger.queryUrl, { source });
    expect({ code, reads: source.reads, waited: report.probes[0].waited }).toEqual({
      code: 2,
      reads: 3,
      waited: expect.stringMatching(/reading spans failed 3 times in a row$/),
    });
    expect(report.probes[0]).toMatchObject({ verdict: 'unknown', reason: expect.stringContaining('answered 503') });
  } finally {
    await stop();
  }
}, 60_000);

test('the probe asks Jaeger one thing at a time: two reads of one trace at once can corrupt its memory storage', async () => {
  const { mesh, stop } = await caddyMeshInto(jaeger);
  // Every answer held 50 ms on its way back, so requests made together would overlap.
  const proxy = await startFaultProxy({
    targetPort: Number(new URL(jaeger.queryUrl).port),
    mode: 'delay',
    delayMs: 50,
  });
  let most = 0;
  const sample = setInterval(() => {
    most = Math.max(most, proxy.open);
  }, 5);
  try {
    // Two probes at once, each reading its trace and searching for its probe id on every look.
    const [code, report] = await probe(mesh, `http://127.0.0.1:${proxy.port}`, { count: 2 });
    expect({ code, verdicts: report.probes.map((p) => p.verdict), most }).toEqual({
      code: 0,
      verdicts: ['whole', 'whole'],
      most: 1,
    });
  } finally {
    clearInterval(sample);
    await proxy.close();
    await stop();
  }
}, 60_000);

test('meshtrace receive --forward into Jaeger keeps every span', async () => {
  const receiver = await startReceiver({ port: 0, forward: `${jaeger.otlpHttpUrl}/v1/traces` });
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': `forwarded-${randomBytes(4).toString('hex')}` }),
    spanProcessors: [
      new BatchSpanProcessor({
        exporter: new OTLPTraceExporter({ url: `${receiver.url}/v1/traces` }),
        maxExportBatchSize: 64,
      }),
    ],
  });
  try {
    const tracer = provider.getTracer('forward-test');
    const traces: string[] = [];
    // 25 traces of 1 SERVER span and 11 children each: 300 spans, in several exports.
    for (let t = 0; t < 25; t++) {
      const root = tracer.startSpan('GET /batch', { kind: SpanKind.SERVER });
      traces.push(root.spanContext().traceId);
      for (let c = 0; c < 11; c++)
        tracer.startSpan(`step ${c}`, { kind: SpanKind.INTERNAL }, trace.setSpan(context.active(), root)).end();
      root.end();
    }
    await provider.forceFlush();
    let total = 0;
    for (const id of traces) total += (await jaegerTrace(jaeger.queryUrl, id, { until: (s) => s.length >= 12 })).length;
    expect(total).toBe(300);
    expect(receiver.stats().forward).toMatchObject({ okSpans: 300, failedSpans: 0 });
  } finally {
    await provider.shutdown().finally(() => receiver.close());
  }
}, 60_000);
