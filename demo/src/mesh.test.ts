import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DiagLogLevel, diag } from '@opentelemetry/api';
import { warner } from '@meshtrace/core/adapter';
import { selfSignedCert, setupTestTracing } from '@meshtrace/testkit';
import type { TestTracing } from '@meshtrace/testkit';
import type { Span, SpanKindName } from '@meshtrace/doctor';
import { Stopper } from './lifecycle';
import type { Sidecar } from './sidecar';
import { createTelemetry } from './telemetry';
import type { Telemetry } from './telemetry';
import { startMesh } from './topology';
import type { Mesh, MeshOptions } from './topology';

const TRACE_ID = '00000000000000000000000000000001';
const PARENT_ID = '0000000000000001';
const TRACEPARENT = `00-${TRACE_ID}-${PARENT_ID}-01`;

const diagLines: string[] = [];
const log = (message: string): void => void diagLines.push(message);
diag.setLogger(
  { error: log, warn: log, info: () => undefined, debug: () => undefined, verbose: () => undefined },
  DiagLogLevel.WARN,
);

// Globals once (context manager, MeshPropagator, metrics); spans go to each service's own provider.
let tracing: TestTracing;
let certDir: string;
let cert: { cert: string; key: string };
beforeAll(() => {
  tracing = setupTestTracing();
  certDir = mkdtempSync(join(tmpdir(), 'meshtrace-demo-cert-'));
  cert = selfSignedCert(certDir);
});
afterAll(async () => {
  await tracing.shutdown();
  diag.disable();
  rmSync(certDir, { recursive: true, force: true });
});

/** A mesh with fresh per-service telemetry, stopped after the test whatever happens. */
async function withMesh(
  options: Omit<MeshOptions, 'providers' | 'stopper'>,
  body: (mesh: Mesh, telemetry: Telemetry) => Promise<void>,
): Promise<void> {
  const telemetry = await createTelemetry();
  const stopper = new Stopper();
  try {
    const mesh = await startMesh({ ...options, providers: telemetry.providers, stopper });
    await body(mesh, telemetry);
  } finally {
    await stopper.stop();
    await telemetry.shutdown();
  }
}

/** GET `url` over http or https (trusting `ca`), returning the status once the body is read. */
function get(url: string, headers: Record<string, string>, ca?: string): Promise<number> {
  const send = url.startsWith('https:') ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = send(url, { headers, ca }, (res) => {
      res.resume();
      res.once('end', () => resolve(res.statusCode ?? 0));
    });
    req.once('error', reject);
    req.end();
  });
}

/** Expects a line of the sidecar's access log to contain `text`, waiting up to 2 s: nginx writes it after answering. */
async function expectLogged(sidecar: Sidecar, text: string): Promise<void> {
  const deadline = Date.now() + 2000;
  while (!sidecar.accessLog().includes(text) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  expect(sidecar.accessLog()).toContain(text);
}

const label = (s: Span): string => `${s.service} ${s.kind.toUpperCase()}`;

/** Each span as "service KIND <- its parent": a span of the set, one outside it (the remote caller; OTLP does not say remote), or ROOT. */
function parentage(spans: readonly Span[]): string[] {
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  return spans
    .map((s) => {
      const parent = s.parentSpanId;
      const of = parent === undefined ? 'ROOT' : byId.has(parent) ? label(byId.get(parent)!) : `remote ${parent}`;
      return `${label(s)} <- ${of}`;
    })
    .sort();
}

const CHAIN = [
  `gateway CLIENT <- gateway SERVER`,
  `gateway SERVER <- remote ${PARENT_ID}`,
  `inventory SERVER <- orders CLIENT`,
  `orders CLIENT <- orders SERVER`,
  `orders SERVER <- gateway CLIENT`,
].sort();

const find = (spans: readonly Span[], service: string, kind: SpanKindName): Span => {
  const found = spans.find((s) => s.service === service && s.kind === kind);
  if (found === undefined) throw new Error(`no ${service} ${kind} span among ${spans.map(label).join(', ')}`);
  return found;
};

describe('the three-service mesh', () => {
  test.each(['nginx', 'node'] as const)(
    'continues one trace through %s sidecars, parent by parent',
    async (sidecars) => {
      await withMesh({ sidecars, propagate: true }, async (mesh, telemetry) => {
        expect(await get(`${mesh.entry}/checkout/42`, { traceparent: TRACEPARENT })).toBe(200);
        const spans = await telemetry.waitForServerSpans(3);

        expect(new Set(spans.map((s) => s.traceId))).toEqual(new Set([TRACE_ID]));
        expect(parentage(spans)).toEqual(CHAIN);
        expect(
          spans
            .filter((s) => s.kind === 'server')
            .map((s) => [s.service, s.name, s.attributes['meshtrace.propagation.outcome']]),
        ).toEqual(
          expect.arrayContaining([
            ['gateway', 'GET /checkout/:id', 'continued'],
            ['orders', 'GET /orders/:id', 'continued'],
            ['inventory', 'GET /stock/:sku', 'continued'],
          ]),
        );
        // Every hop went through its sidecar: it added x-request-id and saw the caller's CLIENT span in traceparent.
        for (const s of spans.filter((x) => x.kind === 'server'))
          expect(s.attributes['http.request.header.x-request-id']).toEqual([
            expect.stringMatching(/^[0-9a-f-]{32,36}$/),
          ]);
        const sentBy = (service: string): string =>
          `traceparent="00-${TRACE_ID}-${find(spans, service, 'client').spanId}-01"`;
        await expectLogged(mesh.sidecars.gateway, `"GET /checkout/42 HTTP/1.1" 200 traceparent="${TRACEPARENT}"`);
        await expectLogged(mesh.sidecars.orders, `"GET /orders/42 HTTP/1.1" 200 ${sentBy('gateway')}`);
        await expectLogged(mesh.sidecars.inventory, `"GET /stock/sku-42 HTTP/1.1" 200 ${sentBy('orders')}`);
        // Each adapter and the client used the provider they were given, none the global one.
        expect(tracing.spans()).toEqual([]);
      });
    },
  );

  test('the chain holds through a TLS-terminating nginx ingress', async () => {
    await withMesh({ sidecars: 'nginx', propagate: true, ingress: cert }, async (mesh, telemetry) => {
      expect(mesh.entry).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      expect(
        await get(
          `${mesh.entry}/checkout/7`,
          { traceparent: TRACEPARENT, tracestate: 'vendor=abc', baggage: 'tenant=acme' },
          readFileSync(cert.cert, 'utf8'),
        ),
      ).toBe(200);
      const spans = await telemetry.waitForServerSpans(3);

      expect(new Set(spans.map((s) => s.traceId))).toEqual(new Set([TRACE_ID]));
      expect(parentage(spans)).toEqual(CHAIN);
      await expectLogged(mesh.ingress!, `"GET /checkout/7 HTTP/1.1" 200 traceparent="${TRACEPARENT}"`);
      // What the ingress forwarded reached the gateway's sidecar unchanged.
      await expectLogged(mesh.sidecars.gateway, `traceparent="${TRACEPARENT}"`);
      expect(find(spans, 'gateway', 'server').attributes['meshtrace.propagation.outcome']).toBe('continued');
    });
  });

  test('a sidecar that strips traceparent breaks the trace: fresh root, warning, counter', async () => {
    await withMesh({ sidecars: 'nginx', propagate: true, stripAt: 'inventory' }, async (mesh, telemetry) => {
      warner.reset();
      diagLines.length = 0;
      const before = await tracing.outcomeCounts();
      expect(await get(`${mesh.entry}/checkout/9`, { traceparent: TRACEPARENT })).toBe(200);
      const spans = await telemetry.waitForServerSpans(3);
      const after = await tracing.outcomeCounts();

      const inventory = find(spans, 'inventory', 'server');
      expect(parentage(spans)).toEqual(
        [
          `gateway CLIENT <- gateway SERVER`,
          `gateway SERVER <- remote ${PARENT_ID}`,
          `inventory SERVER <- ROOT`,
          `orders CLIENT <- orders SERVER`,
          `orders SERVER <- gateway CLIENT`,
        ].sort(),
      );
      expect(inventory.traceId).not.toBe(TRACE_ID);
      expect(spans.filter((s) => s !== inventory).every((s) => s.traceId === TRACE_ID)).toBe(true);
      expect(inventory.attributes['meshtrace.propagation.outcome']).toBe('missing');
      // The header reached the sidecar (its log shows it) and went no further.
      await expectLogged(
        mesh.sidecars.inventory,
        `traceparent="00-${TRACE_ID}-${find(spans, 'orders', 'client').spanId}-01"`,
      );
      expect(diagLines).toEqual([expect.stringContaining('request without traceparent; started a fresh root trace')]);
      const delta = (key: string): number => (after[key] ?? 0) - (before[key] ?? 0);
      expect({ continued: delta('continued'), missing: delta('missing') }).toEqual({ continued: 2, missing: 1 });
    });
  });
});
