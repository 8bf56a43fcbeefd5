import { randomBytes } from 'node:crypto';
import { AlwaysOnSampler } from '@opentelemetry/sdk-trace';
import { MeshSampler } from '@meshtrace/node';
import type { SamplingOwner } from '@meshtrace/node';
import { jaegerTrace, setupTestTracing, startJaeger } from '@meshtrace/testkit';
import type { JaegerServer, JaegerSpan, TestTracing } from '@meshtrace/testkit';
import { caddyMeshInto } from './jaeger';
import type { RunningMesh } from './jaeger';
import { SERVICES } from './telemetry';
import type { ServiceName } from './telemetry';
import { sidecarName } from './topology';
import type { Mesh, MeshOptions } from './topology';

// Real Caddy sidecars with their tracing on, exporting beside the services to one real Jaeger; every
// assertion reads what Jaeger's query API answers.
let jaeger: JaegerServer;
let tracing: TestTracing;

beforeAll(async () => {
  tracing = setupTestTracing();
  jaeger = await startJaeger();
}, 60_000);

afterAll(async () => {
  await jaeger?.stop();
  await tracing?.shutdown();
}, 30_000);

const hex = (bytes: number): string => randomBytes(bytes).toString('hex');
const SIDECARS = SERVICES.map(sidecarName);

/** The Caddy mesh into this file's Jaeger, its services sampling as `sampling` says when given. */
function caddyMesh(
  options: Partial<Pick<MeshOptions, 'stripAt' | 'sidecarTracing'>> & { sampling?: SamplingOwner } = {},
): Promise<RunningMesh> {
  const { sampling, ...mesh } = options;
  return caddyMeshInto(jaeger, {
    ...mesh,
    sampler: sampling === undefined ? undefined : new MeshSampler(new AlwaysOnSampler(), sampling),
  });
}

/** Sends one request into the mesh; the time it took, to search Jaeger by. */
async function send(mesh: Mesh, headers: Record<string, string> = {}): Promise<{ startMs: number; endMs: number }> {
  const startMs = Date.now();
  const res = await fetch(`${mesh.entry}/checkout/7`, { headers });
  expect(res.status).toBe(200);
  await res.arrayBuffer();
  return { startMs, endMs: Date.now() };
}

/** Jaeger's v1 search, once per service of the mesh: the ids of the traces with a span that started in the window. */
async function tracesIn(window: { startMs: number; endMs: number }): Promise<string[]> {
  const ids = new Set<string>();
  for (const service of [...SERVICES, ...SIDECARS]) {
    const query = new URLSearchParams({
      service,
      start: String((window.startMs - 5) * 1000),
      end: String((window.endMs + 5) * 1000),
      limit: '50',
    });
    const res = await fetch(`${jaeger.queryUrl}/api/traces?${query}`);
    const body = (await res.json()) as { data: Array<{ traceID: string }> | null };
    for (const t of body.data ?? []) ids.add(t.traceID.padStart(32, '0'));
  }
  return [...ids];
}

/** Polls the search until some trace shows up in the window, then until nothing changes for a second. */
async function settledTraces(window: { startMs: number; endMs: number }): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  let ids: string[] = [];
  let since = Date.now();
  for (;;) {
    const now = await tracesIn(window);
    if (now.length !== ids.length) since = Date.now();
    ids = now;
    if (ids.length > 0 && Date.now() - since > 1000) return ids;
    if (Date.now() > deadline) throw new Error(`Jaeger's search kept changing or stayed empty: ${ids.join(', ')}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

const kind = (s: JaegerSpan): unknown => s.tags['span.kind'];
/** The one span of `service` of `spanKind` in `spans`. */
function one(spans: readonly JaegerSpan[], service: string, spanKind: 'server' | 'client'): JaegerSpan {
  const found = spans.filter((s) => s.serviceName === service && kind(s) === spanKind);
  if (found.length !== 1) throw new Error(`expected one ${spanKind} span of ${service}, got ${found.length}`);
  return found[0];
}

/** Each application SERVER span is a child of its own sidecar's span, and continued the trace (W3C, or `formats`). */
function expectSidecarParents(spans: readonly JaegerSpan[], formats: Partial<Record<ServiceName, string>> = {}): void {
  for (const service of SERVICES) {
    const server = one(spans, service, 'server');
    expect([service, server.parentSpanId]).toEqual([service, one(spans, sidecarName(service), 'server').spanId]);
    expect([
      service,
      server.tags['meshtrace.propagation.outcome'],
      server.tags['meshtrace.propagation.format'],
    ]).toEqual([service, 'continued', formats[service] ?? 'w3c']);
  }
  // A sidecar's span is the child of the CLIENT span of the service calling through it.
  expect(one(spans, 'orders-sidecar', 'server').parentSpanId).toBe(one(spans, 'gateway', 'client').spanId);
  expect(one(spans, 'inventory-sidecar', 'server').parentSpanId).toBe(one(spans, 'orders', 'client').spanId);
}

const EIGHT = (all: readonly JaegerSpan[]): boolean => all.length >= 8;

describe('gateway → orders → inventory, each behind a Caddy sidecar that traces, into Jaeger', () => {
  test("one trace per request, with the application's and the sidecars' spans; each SERVER span's parent is its sidecar's span", async () => {
    const { mesh, stop } = await caddyMesh();
    try {
      // A caller's traceparent: the entry sidecar continues it.
      const [traceId, callerSpan] = [hex(16), hex(8)];
      const sent = await send(mesh, { traceparent: `00-${traceId}-${callerSpan}-01` });
      const spans = await jaegerTrace(jaeger.queryUrl, traceId, { until: EIGHT });
      expect(spans.map((s) => `${s.serviceName} ${kind(s)}`).sort()).toEqual(
        [
          ...SERVICES.map((s) => `${s} server`),
          ...SIDECARS.map((s) => `${s} server`),
          'gateway client',
          'orders client',
        ].sort(),
      );
      expect(one(spans, 'gateway-sidecar', 'server').parentSpanId).toBe(callerSpan);
      expectSidecarParents(spans);
      expect(await settledTraces(sent)).toEqual([traceId]);

      // No traceparent: the entry sidecar starts the trace, and the services continue it.
      const bare = await send(mesh);
      const [started, ...others] = await settledTraces(bare);
      expect(others).toEqual([]);
      const second = await jaegerTrace(jaeger.queryUrl, started, { until: EIGHT });
      expect(second).toHaveLength(8);
      expect(one(second, 'gateway-sidecar', 'server').parentSpanId).toBeUndefined();
      expectSidecarParents(second);
    } finally {
      await stop();
    }
  }, 60_000);

  test('an entry sidecar on B3 (b3multi): meshtrace continues the B3 trace and sends W3C on', async () => {
    const { mesh, stop } = await caddyMesh({ sidecarTracing: { gateway: { propagators: 'b3multi' } } });
    try {
      const [traceId, b3Span] = [hex(16), hex(8)];
      await send(mesh, { 'X-B3-TraceId': traceId, 'X-B3-SpanId': b3Span, 'X-B3-Sampled': '1' });
      const spans = await jaegerTrace(jaeger.queryUrl, traceId, { until: EIGHT });
      expect(spans).toHaveLength(8);
      expect(one(spans, 'gateway-sidecar', 'server').parentSpanId).toBe(b3Span);
      // gateway read Caddy's X-B3 headers; orders' sidecar reads only traceparent, so its span being the
      // child of gateway's CLIENT span is the W3C header gateway sent on.
      expectSidecarParents(spans, { gateway: 'b3' });
    } finally {
      await stop();
    }
  }, 60_000);

  test("a sidecar that samples out (always_off), sampling 'parent': meshtrace follows its decision, and nothing past it reaches Jaeger", async () => {
    const { mesh, stop } = await caddyMesh({
      sampling: 'parent',
      sidecarTracing: { orders: { sampler: 'always_off' } },
    });
    const before = (await tracing.counters())['meshtrace.sampling.mismatch'] ?? 0;
    try {
      const traceId = hex(16);
      const sent = await send(mesh, { traceparent: `00-${traceId}-${hex(8)}-01` });
      expect(await settledTraces(sent)).toEqual([traceId]);
      const spans = await jaegerTrace(jaeger.queryUrl, traceId, { until: (all) => all.length >= 3 });
      expect(spans.map((s) => `${s.serviceName} ${kind(s)}`).sort()).toEqual(
        ['gateway client', 'gateway server', 'gateway-sidecar server'].sort(),
      );
      // orders and inventory were told "not sampled" while their own sampler would record: counted, not recorded.
      expect((await tracing.counters())['meshtrace.sampling.mismatch']).toBe(before + 2);
    } finally {
      await stop();
    }
  }, 60_000);

  test("the same sidecar, sampling 'local': meshtrace decides for itself, and its span's parent is the sidecar's unrecorded span", async () => {
    const { mesh, stop } = await caddyMesh({
      sampling: 'local',
      sidecarTracing: { orders: { sampler: 'always_off' } },
    });
    try {
      const traceId = hex(16);
      const sent = await send(mesh, { traceparent: `00-${traceId}-${hex(8)}-01` });
      expect(await settledTraces(sent)).toEqual([traceId]);
      const spans = await jaegerTrace(jaeger.queryUrl, traceId, { until: (all) => all.length >= 7 });
      expect(spans).toHaveLength(7);
      expect(spans.some((s) => s.serviceName === 'orders-sidecar')).toBe(false);
      const orders = one(spans, 'orders', 'server');
      // The parent is the span id Caddy forwarded (flags 00) and never exported.
      expect(orders.parentSpanId).toMatch(/^[0-9a-f]{16}$/);
      expect(spans.some((s) => s.spanId === orders.parentSpanId)).toBe(false);
      expect(orders.parentSpanId).not.toBe(one(spans, 'gateway', 'client').spanId);
      // orders sent its own decision on ("sampled"), so inventory's sidecar and inventory record again.
      expect(one(spans, 'inventory-sidecar', 'server').parentSpanId).toBe(one(spans, 'orders', 'client').spanId);
      expect(one(spans, 'inventory', 'server').parentSpanId).toBe(one(spans, 'inventory-sidecar', 'server').spanId);
    } finally {
      await stop();
    }
  }, 60_000);

  test('a sidecar that strips traceparent: its span ends the trace, and the service behind it starts another (outcome missing)', async () => {
    const { mesh, stop } = await caddyMesh({ stripAt: 'orders' });
    try {
      const traceId = hex(16);
      const sent = await send(mesh, { traceparent: `00-${traceId}-${hex(8)}-01` });
      const ids = await settledTraces(sent);
      expect(ids).toHaveLength(2);
      expect(ids).toContain(traceId);
      const first = await jaegerTrace(jaeger.queryUrl, traceId, { until: (all) => all.length >= 4 });
      // Caddy recorded the call and continued the trace before its header_up rule dropped the headers.
      expect(one(first, 'orders-sidecar', 'server').parentSpanId).toBe(one(first, 'gateway', 'client').spanId);
      expect(first.map((s) => s.serviceName).sort()).toEqual([
        'gateway',
        'gateway',
        'gateway-sidecar',
        'orders-sidecar',
      ]);
      const other = ids.find((id) => id !== traceId)!;
      const second = await jaegerTrace(jaeger.queryUrl, other, { until: (all) => all.length >= 4 });
      const orders = one(second, 'orders', 'server');
      expect(orders.parentSpanId).toBeUndefined();
      expect(orders.tags['meshtrace.propagation.outcome']).toBe('missing');
      expect(one(second, 'inventory', 'server').tags['meshtrace.propagation.outcome']).toBe('continued');
    } finally {
      await stop();
    }
  }, 60_000);
});
