import { Readable } from 'node:stream';
import { MAX_LINE_LENGTH, readLines } from './lines';
import { scanLogs } from './scan';

const id = (n: number) => n.toString(16).padStart(32, '0');
const tp = (n: number, parent = 'b7ad6b7169203331') => `00-${id(n)}-${parent}-01`;

/** Envoy's default format with `traceparent=%REQ(TRACEPARENT)%`; lines are grouped by their `:authority`. */
function envoy(path: string, authority: string, traceparent: string): string {
  return `[2024-05-14T09:12:03.512Z] "GET ${path} HTTP/1.1" 200 - 0 512 14 12 "10.244.0.1" "curl/8.5.0" "5d3e3c9e-7d2a-4c9b-9a57-2b1b1f0c6f11" "${authority}" "10.244.1.17:8080" traceparent=${traceparent}`;
}

function nginx(path: string, traceparent: string): string {
  return `3f1d2c4b5a6978a1b2c3d4e5f6a7b8c9 "GET ${path} HTTP/1.1" 200 traceparent="${traceparent}"`;
}

async function* lines(items: Iterable<string>): AsyncGenerator<string> {
  yield* items;
}

describe('scanLogs', () => {
  it('reports missing and malformed traceparents per upstream, with a sample line each', async () => {
    const log = [
      envoy('/orders/1', '10.244.1.17:8080', tp(1)),
      envoy('/orders/2', '10.244.1.17:8080', '-'),
      envoy('/orders/3', '10.244.1.17:8080', tp(0)),
      envoy('/orders/4', '10.244.1.17:8080', '-'),
      'upstream connect error or disconnect/reset before headers',
      envoy('/pay', '10.244.2.9:8080', tp(5).toUpperCase()), // upper-case hex: the parent id is the first field with a letter
      '',
    ];
    const report = await scanLogs(lines(log));
    expect(report.files).toEqual([
      { name: '-', format: 'envoy', lines: 7, requests: 5, unparseable: 1, withTraceparent: 3, valid: 1 },
    ]);
    expect(report.unparseable).toEqual({ count: 1, reason: 'not-envoy', sample: { file: '-', line: 5, text: log[4] } });
    const orders = report.groups.find((g) => g.name === '10.244.1.17:8080')!;
    expect(orders).toMatchObject({
      kind: 'upstream',
      requests: 4,
      valid: 1,
      missing: { count: 2, sample: { line: 2, text: log[1] } },
    });
    expect(orders.malformed).toEqual([
      { reason: 'zero-trace-id', count: 1, sample: { file: '-', line: 3, text: log[2] } },
    ]);
    const pay = report.groups.find((g) => g.name === '10.244.2.9:8080')!;
    expect(pay.malformed.map((m) => m.reason)).toEqual(['bad-parent-id']);
    // One file where no trace id repeats is one proxy: one hop per request is expected, nothing judged.
    expect(report.hops).toMatchObject({ hop: 'groups', judged: false, linked: 0 });
    expect(report.findings).toBe(4);
  });

  it('with several files, each one proxy, reports trace ids that reached one of them only', async () => {
    const gateway = [
      envoy('/orders', 'orders:8080', tp(1)),
      envoy('/orders', 'orders:8080', tp(2)),
      envoy('/orders', 'orders:8080', tp(3)),
    ];
    // The sidecar saw trace 1, and trace 3 twice (a retry is still one hop); trace 2 arrived under another id.
    const sidecar = [
      nginx('/orders', tp(1, '00f067aa0ba902b7')),
      nginx('/orders', tp(99)),
      nginx('/orders', tp(3)),
      nginx('/orders', tp(3)),
    ];
    const report = await scanLogs([
      { name: 'gateway.log', input: lines(gateway) },
      { name: 'orders.log', input: lines(sidecar) },
    ]);
    expect(report.files.map((f) => f.format)).toEqual(['envoy', 'nginx']);
    expect(report.hops).toMatchObject({ hop: 'files', judged: true, linked: 2, traceIds: 4, evicted: 0 });
    const g = report.groups.find((x) => x.name === 'orders:8080')!;
    expect(g.oneHop).toEqual({ count: 1, sample: { file: 'gateway.log', line: 2, text: gateway[1] } });
    const route = report.groups.find((x) => x.name === 'GET /orders')!;
    expect(route.oneHop).toEqual({ count: 1, sample: { file: 'orders.log', line: 2, text: sidecar[1] } });
    expect(report.findings).toBe(2);
  });

  it('keeps a few lines per upstream for the one-hop sample and names the place of the others', async () => {
    // Trace ids 1-8 take the lines kept for the upstream, then reach the sidecar; 9 arrived while they waited.
    const gateway = Array.from({ length: 9 }, (_, i) => envoy('/orders', 'orders:8080', tp(i + 1)));
    const sidecar = Array.from({ length: 8 }, (_, i) => nginx('/orders', tp(i + 1)));
    const report = await scanLogs([
      { name: 'gateway.log', input: lines(gateway) },
      { name: 'orders.log', input: lines(sidecar) },
    ]);
    expect(report.groups.find((g) => g.name === 'orders:8080')!.oneHop).toEqual({
      count: 1,
      sample: { file: 'gateway.log', line: 9, text: '' },
    });
  });

  it('in one file holding several proxies, a trace id on one line only is a finding', async () => {
    const log = [nginx('/a', tp(1)), nginx('/b', tp(1)), nginx('/a', tp(2))];
    const report = await scanLogs(lines(log), { format: 'nginx' });
    expect(report.hops).toMatchObject({ hop: 'groups', judged: true, linked: 1 });
    expect(report.groups.find((g) => g.name === 'GET /a')!.oneHop).toEqual({
      count: 1,
      sample: { file: '-', line: 3, text: log[2] },
    });
  });

  it('counts every line of an input whose format it cannot recognise, without failing', async () => {
    const noise = Array.from({ length: 30 }, (_, i) => `2024-05-14 09:12:${i} INFO worker started`);
    const report = await scanLogs(lines(noise));
    expect(report.files[0]).toMatchObject({ format: undefined, lines: 30, requests: 0, unparseable: 30 });
    expect(report.unparseable.reason).toBe('unknown-format');
  });

  it('reads a byte stream split anywhere, with CRLF endings, and cuts a runaway line', async () => {
    const text = `${nginx('/a', tp(1))}\r\n${'x'.repeat(MAX_LINE_LENGTH * 3)}\n${nginx('/b', '-')}`;
    const chunks = text.match(/[\s\S]{1,7000}/g)!.map((s) => Buffer.from(s));
    const got: { length: number; cut: boolean }[] = [];
    for await (const l of readLines(Readable.from(chunks))) got.push({ length: l.text.length, cut: l.cut });
    expect(got).toEqual([
      { length: nginx('/a', tp(1)).length, cut: false },
      { length: MAX_LINE_LENGTH, cut: true },
      { length: nginx('/b', '-').length, cut: false },
    ]);
    const report = await scanLogs(Readable.from(chunks));
    expect(report.files[0]).toMatchObject({ format: 'nginx', requests: 2, unparseable: 1 });
    expect(report.unparseable.reason).toBe('line-too-long');
  });

  it('keeps its tables within their caps over 200,000 lines and counts what it forgot', async () => {
    const N = 200_000;
    function* many(): Generator<string> {
      for (let i = 1; i <= N; i++) yield nginx(`/item/${i % 500}`, tp(i));
    }
    const report = await scanLogs(lines(many()), { format: 'nginx', maxTraces: 1_000, maxGroups: 50 });
    expect(report.requests).toBe(N);
    expect(report.hops).toMatchObject({ traceIds: 1_000, evicted: N - 1_000, maxTraces: 1_000 });
    expect(report.groups).toHaveLength(51);
    const other = report.groups.find((g) => g.kind === 'other')!;
    expect(other.requests).toBe(N - 50 * (N / 500));
  });
});

// Istio's JSON access log as a gateway and a sidecar print it, `"traceparent": "%REQ(TRACEPARENT)%"` added.
function istio(cluster: string, authority: string, traceparent: string | null, path = '/api/orders/42'): string {
  return JSON.stringify({
    start_time: '2024-05-14T09:12:03.512Z',
    method: 'GET',
    path,
    protocol: 'HTTP/1.1',
    response_code: 200,
    response_flags: '-',
    authority,
    upstream_host: '10.244.1.17:8080',
    upstream_cluster: cluster,
    x_forwarded_for: null,
    route_name: 'default',
    traceparent,
  });
}

describe('scanLogs on real mesh logs', () => {
  it('groups Istio lines by service, inbound apart from outbound, not in one inbound bucket', async () => {
    const log = [
      istio('inbound|8080||', 'orders.default.svc.cluster.local:8080', tp(1)),
      istio('inbound|8080||', 'payments.default.svc.cluster.local:8080', tp(2)),
      istio('outbound|8080||payments.default.svc.cluster.local', 'payments:8080', tp(1)),
      istio('outbound|8080||orders.default.svc.cluster.local', 'orders:8080', ''),
    ];
    const report = await scanLogs(lines(log));
    expect(report.groups.map((g) => `${g.kind} ${g.name}`).sort()).toEqual([
      'inbound orders.default.svc.cluster.local:8080',
      'inbound payments.default.svc.cluster.local:8080',
      'upstream orders.default.svc.cluster.local:8080',
      'upstream payments.default.svc.cluster.local:8080',
    ]);
    // An empty header is missing, not malformed.
    const orders = report.groups.find((g) => g.kind === 'upstream' && g.name.startsWith('orders'))!;
    expect(orders).toMatchObject({ missing: { count: 1 }, malformed: [] });
  });

  it('one file: a client retry is one hop and does not turn the one-hop check on', async () => {
    // One proxy; the client retried trace 1 (same header, or a new span of the same trace) on the same route.
    const log = [
      nginx('/orders', tp(1)),
      nginx('/orders', tp(1, '00f067aa0ba902b7')),
      nginx('/orders', tp(2)),
      nginx('/pay', tp(3)),
    ];
    const report = await scanLogs(lines(log));
    expect(report.hops).toMatchObject({ hop: 'groups', judged: false, linked: 0 });
    expect(report.groups.every((g) => g.oneHop === undefined)).toBe(true);
    expect(report.findings).toBe(0);
  });

  it('one sidecar log: inbound and its outbound call are two hops; a trace restarted on the way out is found', async () => {
    const log = [
      istio('inbound|8080||', 'orders:8080', tp(1)),
      istio('outbound|8080||payments.default.svc.cluster.local', 'payments:8080', tp(1, '00f067aa0ba902b7')),
      // The app lost the context: its call went out under a new trace id.
      istio('inbound|8080||', 'orders:8080', tp(2)),
      istio('outbound|8080||payments.default.svc.cluster.local', 'payments:8080', tp(3)),
      // A retry of the first call is not a second hop.
      istio('inbound|8080||', 'orders:8080', tp(1)),
    ];
    const report = await scanLogs(lines(log));
    expect(report.hops).toMatchObject({ hop: 'groups', judged: true, linked: 1 });
    expect(report.groups.find((g) => g.kind === 'inbound')!.oneHop).toEqual({
      count: 1,
      sample: { file: '-', line: 3, text: log[2] },
    });
    expect(report.groups.find((g) => g.kind === 'upstream')!.oneHop).toMatchObject({ count: 1, sample: { line: 4 } });
  });

  it('several files that share no trace id are not judged', async () => {
    const report = await scanLogs([
      { name: 'gateway.log', input: lines([envoy('/orders', 'orders:8080', tp(1))]) },
      { name: 'orders.log', input: lines([nginx('/orders', tp(2))]) },
    ]);
    expect(report.hops).toMatchObject({ hop: 'files', judged: false, linked: 0 });
    expect(report.findings).toBe(0);
  });

  it('reads Envoy lines with a positional "%REQ(TRACEPARENT)%" and nginx escape=json lines', async () => {
    const gateway = [
      `[2024-05-14T09:12:03.512Z] "GET /orders HTTP/1.1" 200 - 0 131 9 8 "-" "curl/8.5.0" "7f1a6c2e-3b0d-9c4f-a1e2-55d0c9e8b7a3" "orders:8080" "10.244.1.17:8080" "${tp(1)}"`,
      `[2024-05-14T09:12:04.001Z] "GET /orders HTTP/1.1" 200 - 0 131 9 8 "-" "curl/8.5.0" "0c1d6c2e-3b0d-9c4f-a1e2-55d0c9e8b7a3" "orders:8080" "10.244.1.17:8080" "-"`,
    ];
    const sidecar = [
      JSON.stringify({ request: 'GET /orders HTTP/1.1', status: '200', upstream_addr: '', http_traceparent: tp(1) }),
    ];
    const report = await scanLogs([
      { name: 'gateway.log', input: lines(gateway) },
      { name: 'orders.log', input: lines(sidecar) },
    ]);
    expect(report.files.map((f) => [f.format, f.requests, f.unparseable])).toEqual([
      ['envoy', 2, 0],
      ['nginx', 1, 0],
    ]);
    expect(report.groups.find((g) => g.name === 'orders:8080')).toMatchObject({ valid: 1, missing: { count: 1 } });
    expect(report.hops).toMatchObject({ judged: true, linked: 1 });
  });
});
