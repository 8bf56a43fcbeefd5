import { findOrphans } from '../analyze';
import type { Attributes, Span, SpanKindName } from '../model';
import { buildMap, splitCandidates } from './graph';
import type { MapEdge, MeshMap } from './graph';
import { layOut } from './layout';
import { waterfall } from './waterfall';

const T = 1_700_000_000_000;
let ids = 0;
const hex = (n: number, len: number): string => n.toString(16).padStart(len, '0');

/** A span; ids are fresh unless given, times in ms after T. */
function span(
  service: string,
  kind: SpanKindName,
  trace: string,
  o: {
    id?: string;
    parent?: Span;
    parentId?: string;
    name?: string;
    at?: number;
    attrs?: Attributes;
    res?: Attributes;
  } = {},
): Span {
  return {
    traceId: trace.padStart(32, '0'),
    spanId: o.id ?? hex(++ids, 16),
    parentSpanId: o.parent?.spanId ?? o.parentId,
    name: o.name ?? `${kind} ${service}`,
    kind,
    service,
    startMs: T + (o.at ?? 0),
    endMs: T + (o.at ?? 0) + 5,
    attributes: o.attrs ?? {},
    resource: { 'service.name': service, ...o.res },
    status: { code: 'unset' },
  };
}
const outcome = (o: string, reason?: string): Attributes =>
  reason === undefined
    ? { 'meshtrace.propagation.outcome': o }
    : { 'meshtrace.propagation.outcome': o, 'meshtrace.propagation.reason': reason };
const at = (host: string, port: number, path: string, more: Attributes = {}): Attributes => ({
  'server.address': host,
  'server.port': port,
  'url.path': path,
  ...more,
});

/** gateway → orders in one trace (parent link), or broken at orders (a new root at the address gateway called). */
function call(trace: string, how: 'whole' | 'missing' | 'malformed', n = 0, res: Attributes = {}): Span[] {
  const entry = span('gateway', 'server', trace, { at: n, attrs: outcome('continued'), parentId: 'f'.repeat(16), res });
  const client = span('gateway', 'client', trace, {
    parent: entry,
    at: n + 1,
    attrs: at('orders', 8080, '/orders/1'),
    res,
  });
  if (how === 'whole')
    return [
      entry,
      client,
      span('orders', 'server', trace, {
        parent: client,
        at: n + 2,
        attrs: { ...at('orders', 8080, '/orders/1'), ...outcome('continued') },
        res,
      }),
    ];
  const o = how === 'missing' ? outcome('missing') : outcome('malformed', 'bad-trace-id');
  return [
    entry,
    client,
    span('orders', 'server', `${trace}b`, { at: n + 2, attrs: { ...at('orders', 8080, '/orders/1'), ...o }, res }),
  ];
}

const node = (map: MeshMap, label: string, group = ''): string => {
  const n = map.nodes.find((x) => x.label === label && x.group === group);
  if (n === undefined) throw new Error(`no node ${label} (${group}) among ${map.nodes.map((x) => x.label).join(', ')}`);
  return n.id;
};
const edge = (map: MeshMap, from: string, to: string, group = ''): MapEdge => {
  const e = map.edges.find((x) => x.from === node(map, from, group) && x.to === node(map, to, group));
  if (e === undefined) throw new Error(`no edge ${from} → ${to}`);
  return e;
};
const shares = (e: MapEdge): Record<string, number> =>
  Object.fromEntries(Object.entries(e.states).filter(([, n]) => n > 0));

describe('buildMap', () => {
  test('a parent link makes a continued edge, with the parent as evidence', () => {
    const map = buildMap([...call('1', 'whole'), ...call('2', 'whole', 10)]);
    const e = edge(map, 'gateway', 'orders');
    expect({ calls: e.calls, lost: e.lost, states: shares(e), evidence: e.evidence }).toEqual({
      calls: 2,
      lost: 0,
      states: { continued: 2 },
      evidence: { 'parent-link': 2 },
    });
    expect(e.broken).toBeNull();
    expect(e.whole?.detail).toMatch(/^orders's SERVER span \w+ has as parent gateway's CLIENT span \w+/);
    // The latest of the two.
    expect(e.whole?.traces).toEqual(['2'.padStart(32, '0')]);
    // The gateway's own request came from outside the map: counted on the node, not an edge.
    expect(map.nodes.find((n) => n.label === 'gateway')?.entries).toEqual({ continued: 2 });
  });

  test("a new root at the address a call went to is tied by the caller's peer, with its outcome and reason", () => {
    const map = buildMap([...call('1', 'whole'), ...call('2', 'missing', 10), ...call('3', 'malformed', 20)]);
    const e = edge(map, 'gateway', 'orders');
    expect({ calls: e.calls, lost: e.lost, states: shares(e), evidence: e.evidence, reasons: e.reasons }).toEqual({
      calls: 3,
      lost: 2,
      states: { continued: 1, missing: 1, malformed: 1 },
      evidence: { 'parent-link': 1, peer: 2 },
      reasons: { 'malformed: bad-trace-id': 1 },
    });
    expect(e.broken).toMatchObject({ state: 'malformed', outcome: 'malformed: bad-trace-id', evidence: 'peer' });
    expect(e.broken?.traces).toEqual(['3'.padStart(32, '0'), '3b'.padStart(32, '0')]);
    expect(e.broken?.detail).toContain('called orders:8080/orders/1');
  });

  test('peer ties agree with findOrphans', () => {
    const spans = [...call('1', 'missing'), ...call('2', 'missing', 10), ...call('3', 'whole', 20)];
    const orphans = findOrphans(spans).filter((o) => o.via === 'peer');
    const e = edge(buildMap(spans), 'gateway', 'orders');
    expect(e.evidence.peer).toBe(orphans.length);
    expect(orphans.map((o) => `${o.hop.from} → ${o.hop.to}`)).toEqual(['gateway → orders', 'gateway → orders']);
  });

  test('a proxy that records spans is a node of its own, between the two services', () => {
    const entry = span('gateway', 'server', '1', { attrs: outcome('missing') });
    const client = span('gateway', 'client', '1', { parent: entry, attrs: at('orders', 80, '/o') });
    const sidecar = span('sidecar', 'server', '1', {
      parent: client,
      attrs: { ...at('orders', 80, '/o'), component: 'proxy' },
    });
    const orders = span('orders', 'server', '1', {
      parent: sidecar,
      attrs: { ...at('orders', 80, '/o'), ...outcome('continued') },
    });
    // The same sidecar stripping the trace on another request: orders starts a new root at the address it passed the call to.
    const entry2 = span('gateway', 'server', '2', { attrs: outcome('missing') });
    const client2 = span('gateway', 'client', '2', { parent: entry2, attrs: at('orders', 80, '/o') });
    const sidecar2 = span('sidecar', 'server', '2', {
      parent: client2,
      attrs: { ...at('orders', 80, '/o'), component: 'proxy' },
    });
    const orders2 = span('orders', 'server', '3', { attrs: { ...at('orders', 80, '/o'), ...outcome('missing') } });
    const map = buildMap([entry, client, sidecar, orders, entry2, client2, sidecar2, orders2]);
    expect(map.nodes.map((n) => `${n.label}:${n.kind}`)).toEqual([
      'gateway:service',
      'orders:service',
      'sidecar:proxy',
    ]);
    expect(shares(edge(map, 'gateway', 'sidecar'))).toEqual({ continued: 2 });
    const lost = edge(map, 'sidecar', 'orders');
    expect({ states: shares(lost), evidence: lost.evidence }).toEqual({
      states: { continued: 1, missing: 1 },
      evidence: { 'parent-link': 1, peer: 1 },
    });
    expect(map.edges).toHaveLength(2);
  });

  test('a tracing sidecar that nothing reached starts a new trace: the call that went to it is the loss', () => {
    const entry = span('gateway', 'server', '1', { attrs: outcome('continued'), parentId: 'f'.repeat(16) });
    const client = span('gateway', 'client', '1', { parent: entry, attrs: at('orders', 80, '/o') });
    const sidecar = span('sidecar', 'server', '2', { attrs: { ...at('orders', 80, '/o'), component: 'proxy' } });
    const orders = span('orders', 'server', '2', {
      parent: sidecar,
      attrs: { ...at('orders', 80, '/o'), ...outcome('continued') },
    });
    const map = buildMap([entry, client, sidecar, orders]);
    const lost = edge(map, 'gateway', 'sidecar');
    expect({ states: shares(lost), evidence: lost.evidence }).toEqual({
      states: { 'new-trace': 1 },
      evidence: { peer: 1 },
    });
    expect(shares(edge(map, 'sidecar', 'orders'))).toEqual({ continued: 1 });
    expect(map.nodes.find((n) => n.label === 'sidecar')?.entries).toEqual({});
  });

  test('health checks are left out', () => {
    const probes = Array.from({ length: 5 }, (_, i) =>
      span('orders', 'server', `9${i}`, {
        attrs: { 'url.path': '/healthz', 'user_agent.original': 'kube-probe/1.30' },
      }),
    );
    const map = buildMap([...call('1', 'whole'), ...probes]);
    expect(map.healthChecks).toBe(5);
    expect(map.nodes.find((n) => n.label === 'orders')?.received).toBe(1);
    expect(map.nodes.find((n) => n.label === 'orders')?.entries).toEqual({});
  });

  test('a call to a peer that exports nothing is an untraced peer, not a loss', () => {
    const entry = span('orders', 'server', '1', { attrs: outcome('continued'), parentId: 'a'.repeat(16) });
    const pay = span('orders', 'client', '1', {
      parent: entry,
      attrs: { 'url.full': 'https://payments.example/charge' },
    });
    const map = buildMap([entry, pay]);
    const peer = map.nodes.find((n) => n.kind === 'peer');
    expect(peer?.label).toBe('payments.example:443');
    const e = edge(map, 'orders', 'payments.example:443');
    expect({ states: shares(e), lost: e.lost, evidence: e.evidence }).toEqual({
      states: { untraced: 1 },
      lost: 0,
      evidence: { none: 1 },
    });
    expect(e.broken?.detail).toContain('the peer exports no spans');
  });

  test('a call to a service that records spans, but none for this call, is unanswered', () => {
    const [entry, client] = call('1', 'whole');
    const other = call('2', 'whole', 10);
    const map = buildMap([entry, client, ...other]);
    const e = edge(map, 'gateway', 'orders');
    expect({ states: shares(e), lost: e.lost }).toEqual({ states: { continued: 1, unanswered: 1 }, lost: 1 });
  });

  test('a root tied only by x-request-id to a trace that entered at an entry service hangs off "caller not recorded"', () => {
    // The plain-fetch copy of the demo: no CLIENT spans, every service a root, all sharing the request id.
    const rid = { 'http.request.header.x-request-id': ['req-1'] };
    const spans = [
      span('gateway', 'server', '1', { attrs: { ...rid, ...outcome('missing') } }),
      span('orders', 'server', '2', { attrs: { ...rid, ...outcome('missing') } }),
      span('inventory', 'server', '3', { attrs: { ...rid, ...outcome('missing') } }),
    ];
    const map = buildMap(spans, { entryServices: ['gateway'] });
    for (const to of ['orders', 'inventory']) {
      const e = edge(map, 'caller not recorded', to);
      expect({ to, states: shares(e), evidence: e.evidence, lost: e.lost }).toEqual({
        to,
        states: { missing: 1 },
        evidence: { 'request-id': 1 },
        lost: 1,
      });
      expect(e.broken?.detail).toContain('no recorded call names its caller');
    }
    // Without an entry service nothing says which trace came first: no edge, only roots on the nodes.
    const untied = buildMap(spans);
    expect(untied.edges).toEqual([]);
    expect(untied.nodes.map((n) => n.entries)).toEqual([{ missing: 1 }, { missing: 1 }, { missing: 1 }]);
  });

  test('split by a resource attribute, two copies of the same services are apart', () => {
    const spans = [
      ...call('1', 'whole', 0, { 'meshtrace.demo.run': 'with-meshtrace' }),
      ...call('2', 'missing', 0, { 'meshtrace.demo.run': 'plain-fetch' }),
    ];
    expect(splitCandidates(spans)).toEqual(['meshtrace.demo.run']);
    const merged = buildMap(spans);
    expect(shares(edge(merged, 'gateway', 'orders'))).toEqual({ continued: 1, missing: 1 });
    const split = buildMap(spans, { by: 'meshtrace.demo.run' });
    expect(shares(edge(split, 'gateway', 'orders', 'with-meshtrace'))).toEqual({ continued: 1 });
    expect(shares(edge(split, 'gateway', 'orders', 'plain-fetch'))).toEqual({ missing: 1 });
  });

  test('bounded: however many peers and calls, at most maxNodes nodes, two examples an edge', () => {
    const spans: Span[] = [];
    for (let i = 0; i < 3000; i++) {
      const entry = span('orders', 'server', `${i}`, { attrs: outcome('continued'), parentId: 'a'.repeat(16) });
      spans.push(entry, span('orders', 'client', `${i}`, { parent: entry, attrs: at(`peer-${i % 1000}`, 80, '/') }));
    }
    const started = performance.now();
    const map = buildMap(spans, { maxNodes: 50 });
    expect(performance.now() - started).toBeLessThan(5000);
    expect(map.nodes).toHaveLength(50);
    expect(map.omitted).toEqual({ nodes: 951, edges: 951 });
    expect(map.edges).toHaveLength(49);
    expect(map.edges.every((e) => e.calls === 3 && e.whole === null && e.broken !== null)).toBe(true);
    expect(() => buildMap(spans, { maxNodes: 0 })).toThrow(
      '@meshtrace/doctor: option "maxNodes" must be a positive integer, got 0',
    );
  });
});

describe('waterfall', () => {
  test("the terminal waterfall's content: headline, indented rows, outcomes and callees, bars on one axis", () => {
    const spans = call('1', 'missing');
    const orphan = spans[2];
    const traces = waterfall(spans, new Set([orphan.spanId]));
    expect(traces.map((t) => [t.headline, t.text])).toEqual([
      ['continues', `continues the caller's span ${'f'.repeat(16)}`],
      ['orphan', 'ORPHANED ROOT: orders started a new trace (missing)'],
    ]);
    expect(traces[0].rows.map((r) => [r.depth, r.service, r.kind, r.note])).toEqual([
      [0, 'gateway', 'server', 'continued'],
      [1, 'gateway', 'client', '→ orders:8080'],
    ]);
    expect(traces[1].rows[0]).toMatchObject({ orphan: true, warn: true, offset: 28.57, width: 71.43, durationMs: 5 });
  });
});

describe('layOut', () => {
  test('30 services: no two nodes or edge labels overlap, callers left of callees', () => {
    const spans: Span[] = [];
    // A gateway fanning out to 29 services, a third of which call the next one.
    for (let i = 0; i < 29; i++) {
      const entry = span('gateway', 'server', `${i}`, { attrs: outcome('continued') });
      const client = span('gateway', 'client', `${i}`, { parent: entry, attrs: at(`svc-${i}`, 80, '/') });
      const callee = span(`svc-${i}`, 'server', `${i}`, { parent: client, attrs: outcome('continued') });
      spans.push(entry, client, callee);
      if (i % 3 === 0 && i + 1 < 29) {
        const next = span(`svc-${i}`, 'client', `${i}`, { parent: callee, attrs: at(`svc-${i + 1}`, 80, '/') });
        spans.push(next, span(`svc-${i + 1}`, 'server', `${i}`, { parent: next, attrs: outcome('continued') }));
      }
    }
    const map = buildMap(spans);
    expect(map.nodes).toHaveLength(30);
    const layout = layOut(map);
    const boxes = [
      ...Object.values(layout.nodes),
      ...Object.values(layout.edges).map((e) => ({ x: e.x, y: e.y, width: e.width, height: e.height })),
    ];
    for (let a = 0; a < boxes.length; a++)
      for (let b = a + 1; b < boxes.length; b++) {
        const [p, q] = [boxes[a], boxes[b]];
        const apart =
          Math.abs(p.x - q.x) >= (p.width + q.width) / 2 - 0.5 ||
          Math.abs(p.y - q.y) >= (p.height + q.height) / 2 - 0.5;
        expect({ a, b, apart }).toEqual({ a, b, apart: true });
      }
    for (const e of map.edges) {
      expect(layout.nodes[e.from].x).toBeLessThan(layout.nodes[e.to].x);
      expect(layout.edges[e.id].points.length).toBeGreaterThanOrEqual(2);
    }
  });
});
