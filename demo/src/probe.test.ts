import { hasNginx, setupTestTracing } from '@meshtrace/testkit';
import type { TestTracing } from '@meshtrace/testkit';
import { receivedSpanSource, runProbe, startReceiver } from '@meshtrace/doctor';
import type { Receiver } from '@meshtrace/doctor';
import { Stopper } from './lifecycle';
import { createTelemetry } from './telemetry';
import type { Telemetry } from './telemetry';
import { startMesh } from './topology';
import type { MeshOptions } from './topology';

// The sidecars are real nginx: CI installs it, so its absence fails here instead of skipping.
beforeAll(() => {
  if (!hasNginx())
    throw new Error(
      'nginx is not installed (apt-get install -y nginx): the probe tests run the mesh behind real nginx sidecars',
    );
});

let tracing: TestTracing;
beforeAll(() => {
  tracing = setupTestTracing();
});
afterAll(() => tracing.shutdown());

interface Probed {
  readonly code: number;
  readonly report: {
    verdict: string;
    probes: Array<{
      verdict: string;
      status: number;
      services: string[];
      breaks: Array<{
        hop: { from: string | null; to: string };
        outcome: string | null;
        reason: string | null;
        detail: string;
        lastCarrier: { service: string; kind: string } | null;
        evidence: string | null;
      }>;
    }>;
  };
  readonly text: string;
}

/**
 * Starts the three-service mesh behind nginx sidecars, exporting OTLP into a receiver, and runs
 * `meshtrace probe` against its entry twice: as JSON (returned, parsed) and as text.
 */
async function probeMesh(
  variant: Partial<Pick<MeshOptions, 'stripAt' | 'uppercaseAt' | 'plainOrders'>>,
): Promise<Probed> {
  const stopper = new Stopper();
  let receiver: Receiver | undefined;
  let telemetry: Telemetry | undefined;
  try {
    receiver = await startReceiver({ port: 0 });
    // The demo's services export to a receiver of the demo's own, which passes every export on to this one.
    telemetry = await createTelemetry({ otlpUrl: `${receiver.url}/v1/traces` });
    const mesh = await startMesh({
      sidecars: 'nginx',
      propagate: true,
      providers: telemetry.providers,
      stopper,
      ...variant,
    });
    const source = receivedSpanSource(receiver);
    const lines: string[] = [];
    const out = { line: (s = '') => void lines.push(s), color: false, width: 120 };
    const options = { url: `${mesh.entry}/checkout/42`, source, waitMs: 20_000, quietMs: 1_500 };
    const code = await runProbe({ ...options, json: true }, out);
    const report = JSON.parse(lines.join('\n')) as Probed['report'];
    lines.length = 0;
    expect(await runProbe(options, out)).toBe(code);
    return { code, report, text: lines.join('\n') };
  } finally {
    await stopper.stop();
    await telemetry?.shutdown();
    await receiver?.close();
  }
}

describe('meshtrace probe over the three-service mesh behind nginx sidecars', () => {
  test('all good: whole, exit 0', async () => {
    const { code, report, text } = await probeMesh({});
    expect(code).toBe(0);
    expect(report.verdict).toBe('whole');
    expect(report.probes[0]).toMatchObject({
      verdict: 'whole',
      status: 200,
      services: ['gateway', 'inventory', 'orders'],
      breaks: [],
    });
    expect(text).toMatch(/WHOLE {2}5 spans from gateway, inventory, orders in one trace/);
  }, 60_000);

  test('a sidecar that strips traceparent: broken at that hop, outcome missing', async () => {
    const { code, report, text } = await probeMesh({ stripAt: 'orders' });
    expect(code).toBe(1);
    const [first] = report.probes[0].breaks;
    expect(first).toMatchObject({
      hop: { from: 'gateway', to: 'orders' },
      outcome: 'missing',
      lastCarrier: { service: 'gateway', kind: 'client' },
    });
    expect(report.probes[0].breaks).toHaveLength(1);
    expect(text).toContain('BROKEN  gateway → orders');
    expect(text).toContain('orders recorded outcome missing: no traceparent reached it');
  }, 60_000);

  test('a service that forwards an upper-case traceparent by hand: broken at inventory, malformed with the reason, no caller invented', async () => {
    const { code, report, text } = await probeMesh({ uppercaseAt: 'orders' });
    expect(code).toBe(1);
    // orders forwards with plain fetch and records no CLIENT span: only the probe id ties inventory's new trace,
    // and nothing names who called it.
    expect(report.probes[0].breaks).toEqual([
      expect.objectContaining({
        hop: { from: null, to: 'inventory' },
        evidence: 'probe-id',
        outcome: 'malformed',
        reason: 'bad-trace-id',
      }),
    ]);
    const { reason } = report.probes[0].breaks[0];
    expect(text).toContain('BROKEN  ? → inventory');
    expect(text).toContain(`inventory recorded outcome malformed (${reason})`);
  }, 60_000);

  test('a plain service without meshtrace in the middle: broken at the hop into it, no outcome recorded', async () => {
    const { code, report, text } = await probeMesh({ plainOrders: true });
    expect(code).toBe(1);
    expect(report.probes[0].breaks).toEqual([
      expect.objectContaining({
        hop: { from: 'gateway', to: 'orders' },
        evidence: 'peer',
        lastCarrier: expect.objectContaining({ service: 'gateway', kind: 'client' }),
      }),
    ]);
    expect(report.probes[0].breaks[0].outcome).toBeNull();
    expect(text).toContain('BROKEN  gateway → orders');
    expect(text).toContain('orders recorded no propagation outcome (meshtrace does not run there)');
  }, 60_000);
});

test('nothing exporting: unknown, exit 2, naming the source asked and what to check', async () => {
  const receiver = await startReceiver({ port: 0 });
  try {
    const lines: string[] = [];
    const code = await runProbe(
      { url: `${receiver.url}/nowhere`, source: receivedSpanSource(receiver), waitMs: 1_000 },
      { line: (s = '') => void lines.push(s), color: false, width: 100 },
    );
    expect(code).toBe(2);
    const text = lines.join('\n');
    expect(text).toContain(`UNKNOWN  no span of trace`);
    expect(text).toContain(`arrived at the receiver at ${receiver.url}; the request answered HTTP 404`);
    expect(text).toContain(`waited 1.0 s (--wait 1000 ms) and the entry's span never arrived`);
    expect(text).toContain(`check: the services export their spans to the receiver at ${receiver.url}`);
  } finally {
    await receiver.close();
  }
});
