import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { resolve } from 'node:path';
import { receivedSpanSource, runProbe, startReceiver } from '@meshtrace/doctor';
import type { ProbeOptions, ProbeResult } from '@meshtrace/doctor';
import {
  PYTHON_SERVICE,
  freePort,
  hasExited,
  jaegerTrace,
  startHeaderRecorder,
  startJaeger,
  startPythonService,
  stopChild,
} from '@meshtrace/testkit';
import type { HeaderRecorder, JaegerServer, JaegerSpan } from '@meshtrace/testkit';

// A real OpenTelemetry Python service (aiohttp, SDK 1.45.1, OTLP/HTTP) between meshtrace services, every
// process exporting to one real Jaeger; the ids are read back from Jaeger's query API. The Node services
// are the process-mesh program of testkit (setupMeshTracing, an adapter, meshFetch) and run against the
// built packages: `tsc -b` first, as the test command does. Jaeger and Python come from `pnpm peers`.

const NODE_SERVICE = resolve(__dirname, '..', '..', 'packages', 'testkit', 'mesh', 'service.js');
/** The Node services' exporter batch delay; the Python service's batch processor sends every 100 ms. */
const BATCH_DELAY_MS = 200;

const hex = (bytes: number): string => {
  for (;;) {
    const id = randomBytes(bytes).toString('hex');
    // Letters in both ids make an upper-cased traceparent invalid in the trace id (§3.2.2.3), not valid by chance.
    if (/[a-f]/.test(id) && !/^0+$/.test(id)) return id;
  }
};

interface Service {
  readonly url: string;
  stop(): Promise<void>;
}

const running: Service[] = [];
let jaeger: JaegerServer;

beforeAll(async () => {
  jaeger = await startJaeger();
}, 60_000);

afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop()));
}, 30_000);

afterAll(() => jaeger?.stop(), 30_000);

/** Whether something accepts connections on `port` of 127.0.0.1. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => resolve(socket.end() !== undefined));
    socket.once('error', () => resolve(false));
  });
}

/**
 * Starts the process-mesh service program with meshtrace on `kind`, exporting to `otlp` (default Jaeger); on
 * every request it calls `<base>/work` for each of `calls` with meshFetch. Resolves once it listens.
 */
async function startNode(
  name: string,
  kind: 'express' | 'fastify' | 'koa' | 'http',
  calls: string[],
  otlp = jaeger.otlpHttpUrl,
): Promise<Service> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith('OTEL_') && !k.startsWith('MESH_') && k !== 'NODE_OPTIONS') env[k] = v;
  Object.assign(env, {
    PORT: String(port),
    MESH_SERVICE: name,
    MESH_KIND: kind,
    MESH_CALLS: JSON.stringify(calls),
    OTEL_SERVICE_NAME: name,
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp,
    OTEL_BSP_SCHEDULE_DELAY: String(BATCH_DELAY_MS),
    OTEL_LOG_LEVEL: 'warn',
  });
  const child = spawn(process.execPath, [NODE_SERVICE], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (chunk: Buffer): void => {
    out += chunk.toString();
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const service: Service = { url: `http://127.0.0.1:${port}`, stop: () => stopChild(child, 3000) };
  running.push(service);
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (hasExited(child))
      throw new Error(`${name} (${kind}) exited before it listened (built? \`npx tsc -b\`): ${out}`);
    // A connection, not a request: a request would be a trace of its own in Jaeger.
    if (await accepts(port)) return service;
    if (Date.now() > deadline) throw new Error(`${name} (${kind}) did not listen within 30 s: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The Python peer exporting to Jaeger as `name`, calling `next` when given, with more environment from `env`. */
async function startPython(name: string, next: string | undefined, env: Record<string, string> = {}): Promise<Service> {
  const svc = await startPythonService(PYTHON_SERVICE, {
    OTEL_SERVICE_NAME: name,
    OTEL_EXPORTER_OTLP_ENDPOINT: jaeger.otlpHttpUrl,
    ...(next === undefined ? {} : { NEXT_URL: next }),
    ...env,
  });
  running.push(svc);
  return svc;
}

async function startRecorder(): Promise<HeaderRecorder> {
  const recorder = await startHeaderRecorder();
  running.push({ url: recorder.base, stop: () => recorder.close() });
  return recorder;
}

/** The ids of every trace Jaeger holds with a span of `service`, once there are at least `atLeast` of them. */
async function tracesOf(service: string, atLeast = 1): Promise<string[]> {
  const url = `${jaeger.queryUrl}/api/traces?service=${encodeURIComponent(service)}&lookback=1h&limit=100`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const res = await fetch(url);
    expect(res.status).toBe(200);
    const ids = ((await res.json()) as { data: Array<{ traceID: string }> }).data.map((t) =>
      t.traceID.padStart(32, '0'),
    );
    if (ids.length >= atLeast || Date.now() > deadline) return ids;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The one span of `service` of this kind; fails, listing every span, when there is not exactly one. */
function only(spans: readonly JaegerSpan[], service: string, kind: 'server' | 'client'): JaegerSpan {
  const found = spans.filter((s) => s.serviceName === service && s.tags['span.kind'] === kind);
  if (found.length !== 1) {
    const all = spans.map((s) => `${s.serviceName} ${s.tags['span.kind']} ${s.spanId} <- ${s.parentSpanId ?? 'root'}`);
    throw new Error(`expected one ${kind} span of ${service}, found ${found.length}: ${all.join('; ')}`);
  }
  return found[0];
}

const count = (service: string, kind: string) => (spans: readonly JaegerSpan[]) =>
  spans.filter((s) => s.serviceName === service && s.tags['span.kind'] === kind).length;

/** Waits until Jaeger holds, in `traceId`, every `[service, kind, n]` wanted. */
function spansOf(traceId: string, wanted: Array<[string, 'server' | 'client', number]>): Promise<JaegerSpan[]> {
  return jaegerTrace(jaeger.queryUrl, traceId, {
    until: (spans) => wanted.every(([service, kind, n]) => count(service, kind)(spans) >= n),
    timeoutMs: 15_000,
  });
}

/** One probe of `url` through the doctor, reading Jaeger: the exit code, its JSON and the single probe's result. */
async function probe(
  url: string,
  more: Partial<ProbeOptions> = {},
): Promise<{ code: number; report: { verdict: string }; result: ProbeResult }> {
  const lines: string[] = [];
  const code = await runProbe(
    {
      url,
      backend: 'jaeger',
      endpoint: jaeger.queryUrl,
      batchDelayMs: 2 * BATCH_DELAY_MS,
      waitMs: 20_000,
      json: true,
      ...more,
    },
    { line: (s = '') => void lines.push(s), color: false, width: 120 },
  );
  const report = JSON.parse(lines.join('\n')) as { verdict: string; probes: ProbeResult[] };
  expect(report.probes).toHaveLength(1);
  return { code, report, result: report.probes[0] };
}

describe('a real OpenTelemetry Python peer between meshtrace services, read back from Jaeger', () => {
  test('Node (Express) → Python (aiohttp) → Node (Koa): one trace, each SERVER span the child of its caller’s CLIENT span', async () => {
    const b = await startNode('inventory', 'koa', []);
    const py = await startPython('py-pricing', `${b.url}/work`);
    const a = await startNode('checkout', 'express', [py.url]);
    const [traceId, parentId] = [hex(16), hex(8)];

    const res = await fetch(`${a.url}/work`, { headers: { traceparent: `00-${traceId}-${parentId}-01` } });
    expect(res.status).toBe(200);
    const spans = await spansOf(traceId, [
      ['checkout', 'server', 1],
      ['checkout', 'client', 1],
      ['py-pricing', 'server', 1],
      ['py-pricing', 'client', 1],
      ['inventory', 'server', 1],
    ]);

    const aServer = only(spans, 'checkout', 'server');
    const aClient = only(spans, 'checkout', 'client');
    const pyServer = only(spans, 'py-pricing', 'server');
    const pyClient = only(spans, 'py-pricing', 'client');
    const bServer = only(spans, 'inventory', 'server');
    expect(spans).toHaveLength(5);
    expect(spans.every((s) => s.traceId.padStart(32, '0') === traceId)).toBe(true);
    expect(aServer.parentSpanId).toBe(parentId);
    expect(aServer.tags['meshtrace.propagation.outcome']).toBe('continued');
    expect(aServer.tags['meshtrace.propagation.format']).toBe('w3c');
    expect(aClient.parentSpanId).toBe(aServer.spanId);
    expect(pyServer.parentSpanId).toBe(aClient.spanId);
    expect(pyClient.parentSpanId).toBe(pyServer.spanId);
    expect(bServer.parentSpanId).toBe(pyClient.spanId);
    expect(bServer.tags['meshtrace.propagation.outcome']).toBe('continued');
    expect(bServer.tags['meshtrace.propagation.format']).toBe('w3c');
    // One trace: no service of the chain recorded a span anywhere else.
    for (const service of ['checkout', 'py-pricing', 'inventory']) expect(await tracesOf(service)).toEqual([traceId]);
  }, 60_000);

  test('Python sending B3 multi-header: meshtrace continues it (format b3) and calls on with traceparent only', async () => {
    const recorder = await startRecorder();
    const b = await startNode('b3-reader', 'fastify', [`${recorder.base}/b3`]);
    const py = await startPython('py-b3', `${b.url}/work`, { OTEL_PROPAGATORS: 'b3multi' });
    const [traceId, parentId] = [hex(16), hex(8)];

    const res = await fetch(`${py.url}/quote`, {
      headers: { 'X-B3-TraceId': traceId, 'X-B3-SpanId': parentId, 'X-B3-Sampled': '1' },
    });
    expect(res.status).toBe(200);
    const spans = await spansOf(traceId, [
      ['py-b3', 'server', 1],
      ['py-b3', 'client', 1],
      ['b3-reader', 'server', 1],
      ['b3-reader', 'client', 1],
    ]);
    const pyServer = only(spans, 'py-b3', 'server');
    const pyClient = only(spans, 'py-b3', 'client');
    const bServer = only(spans, 'b3-reader', 'server');
    const bClient = only(spans, 'b3-reader', 'client');
    expect(pyServer.parentSpanId).toBe(parentId);
    expect(pyClient.parentSpanId).toBe(pyServer.spanId);
    expect(bServer.parentSpanId).toBe(pyClient.spanId);
    expect(bServer.tags['meshtrace.propagation.outcome']).toBe('continued');
    expect(bServer.tags['meshtrace.propagation.format']).toBe('b3');
    expect(bClient.parentSpanId).toBe(bServer.spanId);
    // On the wire past meshtrace: W3C only, naming meshtrace's CLIENT span, the B3 headers not copied on.
    expect(recorder.values('/b3/work', 'traceparent')).toEqual([`00-${traceId}-${bClient.spanId}-01`]);
    for (const h of ['x-b3-traceid', 'x-b3-spanid', 'x-b3-sampled', 'b3'])
      expect([h, recorder.values('/b3/work', h)]).toEqual([h, []]);
  }, 60_000);

  test('Python forwarding an upper-cased traceparent: meshtrace starts a new root (malformed), sends only its own, and the doctor names the hop into B', async () => {
    const recorder = await startRecorder();
    const b = await startNode('upper-reader', 'http', [`${recorder.base}/upper`]);
    const py = await startPython('py-upper', `${b.url}/work`, { FORWARD_TRACEPARENT: 'upper' });
    const [traceId, parentId] = [hex(16), hex(8)];

    const res = await fetch(`${py.url}/work`, { headers: { traceparent: `00-${traceId}-${parentId}-01` } });
    expect(res.status).toBe(200);
    const sent = recorder.values('/upper/work', 'traceparent');
    expect(sent).toHaveLength(1);
    const [, newTraceId, bClientId] = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[0-3]$/.exec(sent[0]) ?? [];
    expect(newTraceId).toBeDefined();
    expect(newTraceId).not.toBe(traceId);
    expect(sent[0].toLowerCase()).not.toContain(traceId);

    const theirs = await spansOf(traceId, [
      ['py-upper', 'server', 1],
      ['py-upper', 'client', 1],
    ]);
    const pyServer = only(theirs, 'py-upper', 'server');
    const pyClient = only(theirs, 'py-upper', 'client');
    expect(pyServer.parentSpanId).toBe(parentId);
    expect(pyClient.parentSpanId).toBe(pyServer.spanId);
    expect(theirs.filter((s) => s.serviceName === 'upper-reader')).toEqual([]);

    const ours = await spansOf(newTraceId, [
      ['upper-reader', 'server', 1],
      ['upper-reader', 'client', 1],
    ]);
    const bServer = only(ours, 'upper-reader', 'server');
    const bClient = only(ours, 'upper-reader', 'client');
    expect(bServer.parentSpanId).toBeUndefined();
    expect(bServer.tags['meshtrace.propagation.outcome']).toBe('malformed');
    expect(bServer.tags['meshtrace.propagation.reason']).toBe('bad-trace-id');
    expect(bClient.spanId).toBe(bClientId);
    expect(bClient.parentSpanId).toBe(bServer.spanId);

    // The doctor reading Jaeger. The Python peer passes no baggage on (its aiohttp server instrumentation
    // starts the SERVER span from the extracted context without making that context current), so B's new root
    // carries no probe id; the doctor finds it among the new roots of the window (Jaeger's search per
    // service), and the Python CLIENT span's peer (`http.url`) is B's address: the hop is named, no --mesh needed.
    const { code, result } = await probe(`${py.url}/work`);
    const explain = JSON.stringify(result, null, 2);
    expect([result.verdict, code, explain]).toEqual(['broken', 1, explain]);
    const probed = await spansOf(result.traceId, [['py-upper', 'client', 1]]);
    const carrier = only(probed, 'py-upper', 'client');
    expect(carrier.tags['http.url']).toBe(`${b.url}/work`);
    expect(result.breaks).toEqual([
      expect.objectContaining({
        hop: { from: 'py-upper', to: 'upper-reader' },
        proxies: [],
        evidence: 'peer',
        outcome: 'malformed',
        reason: 'bad-trace-id',
        lastCarrier: {
          service: 'py-upper',
          kind: 'client',
          name: 'GET',
          traceId: result.traceId,
          spanId: carrier.spanId,
        },
      }),
    ]);
    expect(result.hops.map((h) => `${h.from} → ${h.to} ${h.state} (${h.evidence})`)).toEqual([
      'probe → py-upper continued (parent-link)',
      'py-upper → upper-reader broken (peer)',
    ]);
    // What B did record for the probe's request: a new root, malformed, without the probe id.
    const [probeRoot] = (await tracesOf('upper-reader', 2)).filter((t) => t !== newTraceId);
    const bProbed = only(await spansOf(probeRoot, [['upper-reader', 'server', 1]]), 'upper-reader', 'server');
    expect(bProbed.parentSpanId).toBeUndefined();
    expect(bProbed.tags['meshtrace.propagation.outcome']).toBe('malformed');
    expect(bProbed.tags['meshtrace.probe']).toBeUndefined();
  }, 90_000);

  test('the same hop through the doctor’s own receiver, which lists new roots: B’s root tied to the Python call by B’s address', async () => {
    const receiver = await startReceiver({ port: 0 });
    running.push({ url: receiver.url, stop: () => receiver.close() });
    const b = await startNode('upper-reader-2', 'http', [], receiver.url);
    const py = await startPython('py-upper-2', `${b.url}/work`, {
      FORWARD_TRACEPARENT: 'upper',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    });

    const { code, result } = await probe(`${py.url}/work`, { source: receivedSpanSource(receiver) });
    const explain = JSON.stringify(result, null, 2);
    expect([result.verdict, code, explain]).toEqual(['broken', 1, explain]);
    const root = receiver
      .spans()
      .find((s) => s.service === 'upper-reader-2' && s.kind === 'server' && s.parentSpanId === undefined);
    const call = receiver.spans().find((s) => s.service === 'py-upper-2' && s.kind === 'client');
    expect(result.breaks).toEqual([
      {
        hop: { from: 'py-upper-2', to: 'upper-reader-2' },
        proxies: [],
        evidence: 'peer',
        callee: {
          service: 'upper-reader-2',
          kind: 'server',
          name: 'GET',
          traceId: root?.traceId,
          spanId: root?.spanId,
        },
        outcome: 'malformed',
        reason: /[a-f]/.test(result.traceId) ? 'bad-trace-id' : 'bad-parent-id',
        lastCarrier: {
          service: 'py-upper-2',
          kind: 'client',
          name: 'GET',
          traceId: result.traceId,
          spanId: call?.spanId,
        },
        detail: expect.stringContaining(
          `tied to py-upper-2's call by the address it was called at (${new URL(b.url).host})`,
        ),
      },
    ]);
    expect(root?.traceId).not.toBe(result.traceId);
  }, 60_000);

  test('the doctor probes Node → Python → Node through Jaeger: whole, every hop a parent link', async () => {
    const b = await startNode('probe-stock', 'koa', []);
    const py = await startPython('py-probe', `${b.url}/work`);
    const a = await startNode('probe-front', 'express', [py.url]);

    const { code, report, result } = await probe(`${a.url}/work`);
    const explain = JSON.stringify(result, null, 2);
    expect([report.verdict, result.verdict, code, explain]).toEqual(['whole', 'whole', 0, explain]);
    expect(result.status).toBe(200);
    expect(result.traces).toEqual([result.traceId]);
    expect(result.services).toEqual(['probe-front', 'probe-stock', 'py-probe']);
    expect(result.spans).toBe(5);
    expect(result.hops.map((h) => `${h.from} → ${h.to} ${h.state} (${h.evidence})`)).toEqual([
      'probe → probe-front continued (parent-link)',
      'probe-front → py-probe continued (parent-link)',
      'py-probe → probe-stock continued (parent-link)',
    ]);
    expect(result.breaks).toEqual([]);
  }, 90_000);
});
