import type { Attributes, Span, SpanKindName } from '../model';
import type { SentProbe } from './send';
import { judge } from './verdict';
import type { JudgeOptions } from './verdict';

const T0 = 1_750_000_000_000;
const PROBE_TRACE = 'a'.repeat(32);
const PROBE_PARENT = 'f'.repeat(16);
const SENT: SentProbe = {
  url: 'http://127.0.0.1:8000/checkout',
  probeId: 'p-1',
  traceId: PROBE_TRACE,
  parentSpanId: PROBE_PARENT,
  traceparent: `00-${PROBE_TRACE}-${PROBE_PARENT}-03`,
  startMs: T0,
  endMs: T0 + 100,
  status: 200,
  error: undefined,
};
const SETTLED: JudgeOptions = { settled: true, asked: 'the receiver' };

let next = 0;
/** A span; `at` is [start, end] in ms after the probe was sent, on the service's own clock. */
function span(
  service: string,
  kind: SpanKindName,
  trace: string,
  parent: Span | string | undefined,
  at: [number, number],
  attributes: Attributes = {},
): Span {
  next++;
  return {
    traceId: trace,
    spanId: next.toString(16).padStart(16, '0'),
    parentSpanId: typeof parent === 'string' ? parent : parent?.spanId,
    name: kind === 'server' ? 'GET /route' : 'GET',
    kind,
    service,
    startMs: T0 + at[0],
    endMs: T0 + at[1],
    attributes,
    resource: { 'service.name': service },
    status: { code: 'unset' },
  };
}
const at = (port: number, path: string, extra: Attributes = {}): Attributes => ({
  'server.address': '127.0.0.1',
  'server.port': port,
  'url.path': path,
  ...extra,
});
const call = (port: number, path: string, host = '127.0.0.1'): Attributes => ({
  'server.address': host,
  'server.port': port,
  'url.full': `http://${host}:${port}${path}`,
});
const CONTINUED = { 'meshtrace.propagation.outcome': 'continued', 'meshtrace.probe': 'p-1' };
const MISSING = { 'meshtrace.propagation.outcome': 'missing' };
const NEW_TRACE = 'b'.repeat(32);

/** gateway (8000) → orders (9001) → inventory (9002); `lose` makes orders start a new trace; `skew` shifts orders' clock. */
function chain(options: { lose?: boolean; skew?: number; requestId?: boolean } = {}): Span[] {
  const s = options.skew ?? 0;
  const g = span('gateway', 'server', PROBE_TRACE, PROBE_PARENT, [1, 90], at(8000, '/checkout', CONTINUED));
  const gc = span('gateway', 'client', PROBE_TRACE, g, [5, 80], call(9001, '/orders'));
  const trace = options.lose ? NEW_TRACE : PROBE_TRACE;
  const extra: Attributes = options.requestId ? { 'http.request.header.x-request-id': ['p-1'] } : {};
  const o = span(
    'orders',
    'server',
    trace,
    options.lose ? undefined : gc,
    [10 + s, 70 + s],
    at(9001, '/orders', options.lose ? { ...MISSING, ...extra } : CONTINUED),
  );
  const oc = span('orders', 'client', trace, o, [20 + s, 60 + s], call(9002, '/stock'));
  const i = span(
    'inventory',
    'server',
    trace,
    oc,
    [25, 55],
    at(9002, '/stock', { 'meshtrace.propagation.outcome': 'continued' }),
  );
  return [g, gc, o, oc, i];
}

test('whole: one trace, every SERVER span continued its caller by a parent link', () => {
  const v = judge(SENT, chain(), SETTLED);
  expect(v.verdict).toBe('whole');
  expect(v.traces).toEqual([PROBE_TRACE]);
  expect(v.hops.map((h) => [h.from, h.to, h.evidence, h.state])).toEqual([
    ['probe', 'gateway', 'parent-link', 'continued'],
    ['gateway', 'orders', 'parent-link', 'continued'],
    ['orders', 'inventory', 'parent-link', 'continued'],
  ]);
});

test("broken: the callee's new root is tied to the call by the address it was called at, not by time", () => {
  // The new trace is tied to the probe by the CLIENT span's peer, with or without x-request-id; so is the hop.
  for (const [skew, requestId] of [
    [0, false],
    [5, true],
    [-5, false],
    [2000, true],
    [-2000, false],
  ] as const) {
    const v = judge(SENT, chain({ lose: true, skew, requestId }), SETTLED);
    expect([skew, v.verdict, v.traces.length, v.breaks.map((b) => [b.hop.from, b.hop.to, b.evidence])]).toEqual([
      skew,
      'broken',
      2,
      [['gateway', 'orders', 'peer']],
    ]);
    expect(v.breaks[0].detail).toMatch(/orders recorded outcome missing.*tied to gateway's call by the address/);
    expect(v.breaks[0].lastCarrier).toMatchObject({ service: 'gateway', kind: 'client' });
  }
});

test('a root tied only by x-request-id, with no recorded call to it, names no caller', () => {
  const spans = chain({ lose: true, requestId: true }).filter((s) => !(s.service === 'gateway' && s.kind === 'client'));
  const v = judge(SENT, spans, SETTLED);
  expect(v.verdict).toBe('broken');
  expect(v.breaks.map((b) => [b.hop.from, b.hop.to, b.evidence])).toEqual([[null, 'orders', 'request-id']]);
});

test('a call leaving the mesh is an untraced peer, not a break, unless --mesh names it or --strict', () => {
  const spans = chain();
  const gateway = spans[0];
  spans.push(span('gateway', 'client', PROBE_TRACE, gateway, [2, 4], call(443, '/v1/charges', 'api.example.com')));
  const v = judge(SENT, spans, SETTLED);
  expect(v.verdict).toBe('whole');
  expect(v.untracedPeers).toEqual([
    { address: 'api.example.com:443', caller: 'gateway', path: '/v1/charges', declared: false },
  ]);
  for (const mesh of [['api.example.com'], ['api.example.com:443']]) {
    const m = judge(SENT, spans, { ...SETTLED, mesh });
    expect([mesh, m.verdict, m.breaks.map((b) => [b.hop.from, b.hop.to])]).toEqual([
      mesh,
      'broken',
      [['gateway', 'api.example.com:443']],
    ]);
  }
  expect(judge(SENT, spans, { ...SETTLED, strict: true }).verdict).toBe('broken');
});

test('an untraced peer after which a new root started is a suspect: cannot tell, and health checks never count', () => {
  const spans = chain();
  const inventoryCall = spans[3];
  // orders calls an untraced service at 7777 instead of inventory; inventory's new root is a suspect.
  spans.splice(3, 2, { ...inventoryCall, attributes: call(7777, '/stock') });
  const health = span('inventory', 'server', 'c'.repeat(32), undefined, [30, 31], at(9002, '/healthz', MISSING));
  const whole = judge(SENT, spans, { ...SETTLED, recentRoots: [health] });
  expect(whole.verdict).toBe('whole');
  expect(whole.untracedPeers.map((p) => p.address)).toEqual(['127.0.0.1:7777']);

  const suspect = span('inventory', 'server', 'd'.repeat(32), undefined, [40, 50], at(9002, '/stock', MISSING));
  const v = judge(SENT, spans, { ...SETTLED, recentRoots: [health, suspect] });
  expect(v.verdict).toBe('unknown');
  expect(v.suspects.map((s) => [s.service, s.traceId, s.outcome])).toEqual([['inventory', 'd'.repeat(32), 'missing']]);
  expect(v.reason).toMatch(/--mesh/);
  // A suspect never names a hop.
  expect(v.breaks).toEqual([]);
});

test('a proxy that records its own spans sits between two application services', () => {
  const g = span('gateway', 'server', PROBE_TRACE, PROBE_PARENT, [1, 90], at(8000, '/checkout', CONTINUED));
  const gc = span('gateway', 'client', PROBE_TRACE, g, [5, 80], call(9001, '/orders'));
  const proxy = span('caddy-orders', 'server', PROBE_TRACE, gc, [6, 79], at(9001, '/orders'));
  const o = span('orders', 'server', PROBE_TRACE, proxy, [10, 70], at(9001, '/orders', CONTINUED));
  const v = judge(SENT, [g, gc, proxy, o], SETTLED);
  expect(v.verdict).toBe('whole');
  expect(v.hops.map((h) => [h.from, h.to, h.proxies])).toEqual([
    ['probe', 'gateway', []],
    ['gateway', 'orders', ['caddy-orders']],
  ]);

  // The proxy got the trace but orders did not: the break is named by the services, with the proxy between.
  const other = span('orders', 'server', 'e'.repeat(32), undefined, [10, 70], at(9001, '/orders', MISSING));
  const proxy2 = span('caddy-orders', 'server', PROBE_TRACE, gc, [6, 79], at(9001, '/orders'));
  // Only the address and path the proxy and the new root share tie them: caddy-orders passed the call on.
  const broken = judge(SENT, [g, gc, proxy2, other], { ...SETTLED, recentRoots: [] });
  expect(broken.verdict).toBe('broken');
  expect(broken.breaks.map((b) => [b.hop.from, b.hop.to, b.proxies, b.evidence])).toEqual([
    ['gateway', 'orders', ['caddy-orders'], 'peer'],
  ]);
  expect(broken.breaks[0].detail).toMatch(/caddy-orders received the trace/);
});

test('tracing sidecars in front of every service: the hops of a trace started at a break come after the break', () => {
  // The probe's trace is deeper than the new one (two sidecar spans before the break, one after).
  const gs = span('gateway-sidecar', 'server', PROBE_TRACE, PROBE_PARENT, [0, 95], at(8000, '/checkout'));
  const g = span('gateway', 'server', PROBE_TRACE, gs, [1, 90], at(8000, '/checkout', CONTINUED));
  const gc = span('gateway', 'client', PROBE_TRACE, g, [5, 80], call(9001, '/orders'));
  const os = span('orders-sidecar', 'server', PROBE_TRACE, gc, [6, 75], at(9001, '/orders'));
  const o = span('orders', 'server', NEW_TRACE, undefined, [10, 70], at(9001, '/orders', MISSING));
  const oc = span('orders', 'client', NEW_TRACE, o, [20, 60], call(9002, '/stock'));
  const is = span('inventory-sidecar', 'server', NEW_TRACE, oc, [22, 58], at(9002, '/stock'));
  const i = span('inventory', 'server', NEW_TRACE, is, [25, 55], at(9002, '/stock', CONTINUED));
  // Met in any order, the trail is the same.
  for (const spans of [
    [gs, g, gc, os, o, oc, is, i],
    [i, is, oc, o, os, gc, g, gs],
  ]) {
    const v = judge(SENT, spans, SETTLED);
    expect(v.verdict).toBe('broken');
    expect(v.hops.map((h) => [h.from, h.to, h.proxies, h.state])).toEqual([
      ['probe', 'gateway', ['gateway-sidecar'], 'continued'],
      ['gateway', 'orders', ['orders-sidecar'], 'broken'],
      ['orders', 'inventory', ['inventory-sidecar'], 'continued'],
    ]);
  }
});

test('a tracing sidecar that started the trace, nothing having reached it: the sidecar started it, the service continued it', () => {
  // gateway called orders with a client that sends no traceparent (plain fetch): orders' sidecar started a trace.
  const g = span('gateway', 'server', PROBE_TRACE, PROBE_PARENT, [1, 90], at(8000, '/checkout', CONTINUED));
  const os = span('orders-sidecar', 'server', NEW_TRACE, undefined, [6, 75], at(9001, '/orders'));
  const o = span('orders', 'server', NEW_TRACE, os, [10, 70], {
    ...at(9001, '/orders', { 'meshtrace.propagation.outcome': 'continued' }),
    'http.request.header.x-request-id': ['p-1'],
  });
  const v = judge(SENT, [g, os, o], SETTLED);
  expect(v.verdict).toBe('broken');
  expect(v.breaks).toEqual([
    expect.objectContaining({ hop: { from: null, to: 'orders' }, proxies: ['orders-sidecar'], evidence: 'request-id' }),
  ]);
  expect(v.breaks[0].detail).toBe(
    `orders-sidecar, a proxy that records spans, started trace ${NEW_TRACE} (no trace context reached it), and orders continued it (outcome continued); tied to the probe by x-request-id; no recorded call names its caller`,
  );
});

test('the entry lost the trace: a root where the probe went, tied by the probe id', () => {
  const g = span(
    'gateway',
    'server',
    NEW_TRACE,
    undefined,
    [1, 90],
    at(8000, '/checkout', { ...MISSING, 'meshtrace.probe': 'p-1' }),
  );
  const v = judge(SENT, [g], SETTLED);
  expect(v.verdict).toBe('broken');
  expect(v.breaks.map((b) => [b.hop.from, b.hop.to, b.evidence])).toEqual([['probe', 'gateway', 'peer']]);
});

test("incomplete while the entry's span has not arrived or spans still change; unknown when a caller never exports", () => {
  const [, ...downstream] = chain();
  expect(judge(SENT, downstream, SETTLED).verdict).toBe('incomplete');
  expect(judge(SENT, chain(), { ...SETTLED, settled: false }).verdict).toBe('incomplete');
  const spans = chain().filter((s) => !(s.service === 'orders' && s.kind === 'client'));
  const v = judge(SENT, spans, SETTLED);
  expect(v.verdict).toBe('unknown');
  expect(v.reason).toMatch(/inventory's caller span .* never arrived/);
});

test('more than one trace tied to the probe is broken even when no root of it arrived', () => {
  const spans = chain();
  spans.push(span('inventory', 'internal', NEW_TRACE, '1'.repeat(16), [30, 31], { 'meshtrace.probe': 'p-1' }));
  const v = judge(SENT, spans, SETTLED);
  expect(v.verdict).toBe('broken');
  expect(v.traces).toHaveLength(2);
});

test('fan-out: only the branch that lost the trace is named', () => {
  const [g, gc, o, oc, i] = chain();
  const gc2 = span('gateway', 'client', PROBE_TRACE, g, [5, 80], call(9003, '/prices'));
  const p = span(
    'prices',
    'server',
    NEW_TRACE,
    undefined,
    [10, 70],
    at(9003, '/prices', { ...MISSING, 'meshtrace.probe': 'p-1' }),
  );
  const v = judge(SENT, [g, gc, o, oc, i, gc2, p], SETTLED);
  expect(v.verdict).toBe('broken');
  expect(v.breaks.map((b) => [b.hop.from, b.hop.to])).toEqual([['gateway', 'prices']]);
  expect(v.hops.filter((h) => h.state === 'continued').map((h) => h.to)).toEqual(['gateway', 'orders', 'inventory']);
});

test('a service that recorded no call while a new root started elsewhere is a suspect: cannot tell, not whole', () => {
  // orders calls inventory with plain fetch: no CLIENT span, nothing forwarded.
  const [g, gc, o] = chain();
  const lost = span('inventory', 'server', NEW_TRACE, undefined, [30, 40], at(9002, '/stock', MISSING));
  const v = judge(SENT, [g, gc, o], { ...SETTLED, recentRoots: [lost] });
  expect(v.verdict).toBe('unknown');
  expect(v.suspects.map((s) => [s.service, s.traceId])).toEqual([['inventory', NEW_TRACE]]);
  expect(v.breaks).toEqual([]);
  // Other traffic at the entry, at a service already in the trail, or a health check is no suspect.
  const other = [
    span('gateway', 'server', 'c'.repeat(32), undefined, [30, 40], at(8000, '/checkout', MISSING)),
    span('orders', 'server', 'd'.repeat(32), undefined, [30, 40], at(9001, '/orders', MISSING)),
    span('inventory', 'server', 'e'.repeat(32), undefined, [30, 40], at(9002, '/healthz', MISSING)),
  ];
  expect(judge(SENT, [g, gc, o], { ...SETTLED, recentRoots: other }).verdict).toBe('whole');
});

test("older conventions: a SERVER span's http.host without a port takes net.host.port (OpenTelemetry Python's aiohttp)", () => {
  const [g, gc] = chain();
  const py = span('python', 'server', NEW_TRACE, undefined, [10, 70], {
    'http.host': '127.0.0.1',
    'net.host.port': 9001,
    'http.target': '/orders?x=1',
    'http.scheme': 'http',
  });
  const v = judge(SENT, [g, gc], { ...SETTLED, recentRoots: [py] });
  expect(v.breaks.map((b) => [b.hop.from, b.hop.to, b.evidence])).toEqual([['gateway', 'python', 'peer']]);
});
