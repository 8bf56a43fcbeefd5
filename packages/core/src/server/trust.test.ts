import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { context, diag } from '@opentelemetry/api';
import { RoutePolicy, createServerTracing, warner } from '@meshtrace/core/adapter';
import type { MeshTraceOptions } from '@meshtrace/core';
import { captureWarnings, observe, setupTestTracing } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';
import { inboundPolicy, peerAddress } from './trust';

const T = '0af7651916cd43dd8448eb211c80319c';
const P = 'b7ad6b7169203331';
const VALID = `00-${T}-${P}-01`;
const tracing = setupTestTracing();
const servers: Server[] = [];
const warnings = captureWarnings();
afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  await tracing.shutdown();
  diag.disable();
});
beforeEach(() => {
  warnings.length = 0;
  warner.reset();
});

/** A request as the decider sees it: a socket peer and headers. */
function fakeRequest(remoteAddress: string | undefined, headers: Record<string, string> = {}): IncomingMessage {
  return { socket: { remoteAddress }, headers } as unknown as IncomingMessage;
}

const MESH = { trustedPeers: ['10.0.0.0/8', 'fd00::/8', '127.0.0.1'] };

describe('a declarative policy decides by the socket peer', () => {
  const decide = inboundPolicy<IncomingMessage>('@meshtrace/x', 'inbound', MESH);
  const cases: Array<[string, string | undefined, string]> = [
    ['IPv4 inside a /8', '10.20.30.40', 'continue'],
    ['IPv4 outside', '11.0.0.1', 'restart'],
    ['IPv4-mapped IPv6 inside an IPv4 range', '::ffff:10.20.30.40', 'continue'],
    ['IPv4-mapped IPv6 in hex inside an IPv4 range', '::ffff:a14:1e28', 'continue'],
    ['IPv4-mapped IPv6 outside', '::ffff:11.0.0.1', 'restart'],
    ['a single listed address', '127.0.0.1', 'continue'],
    ['the next address after it', '127.0.0.2', 'restart'],
    ['the listed address, IPv4-mapped', '::ffff:127.0.0.1', 'continue'],
    ['IPv6 inside fd00::/8', 'fd12:3456::1', 'continue'],
    ['IPv6 outside', 'fe80::1', 'restart'],
    ['IPv6 with a zone, outside', 'fe80::1%eth0', 'restart'],
    ['IPv6 loopback, not listed', '::1', 'restart'],
    ['IPv4-compatible (not mapped) IPv6 is not IPv4', '::10.20.30.40', 'restart'],
    ['no peer address (socket gone)', undefined, 'restart'],
    ['not an address', 'localhost', 'restart'],
  ];
  test.each(cases)('%s (%s): %s', (_name, peer, action) => {
    const d = decide(fakeRequest(peer), fakeRequest(peer));
    expect([d.action, d.reason]).toEqual([action, action === 'continue' ? undefined : 'untrusted-peer']);
  });

  test("IPv6 ranges hold IPv4-mapped peers too: '::ffff:10.0.0.0/104' trusts 10.x written either way", () => {
    const mapped = inboundPolicy<IncomingMessage>('@meshtrace/x', 'inbound', { trustedPeers: ['::ffff:10.0.0.0/104'] });
    expect([
      mapped(fakeRequest('10.1.2.3'), fakeRequest('')).action,
      mapped(fakeRequest('::ffff:10.1.2.3'), fakeRequest('')).action,
      mapped(fakeRequest('11.1.2.3'), fakeRequest('')).action,
    ]).toEqual(['continue', 'continue', 'restart']);
  });
});

describe('a declarative policy trusts a header the sidecar sets after mTLS', () => {
  const decide = inboundPolicy<IncomingMessage>('@meshtrace/x', 'inbound', {
    trustedWhen: 'X-Forwarded-Client-Cert',
    otherwise: 'ignore',
  });
  const cases: Array<[string, Record<string, string>, string, string | undefined]> = [
    ['present', { 'x-forwarded-client-cert': 'By=spiffe://cluster.local/ns/a/sa/b;Hash=abc' }, 'continue', undefined],
    ['absent', {}, 'ignore', 'untrusted-peer'],
    ['empty', { 'x-forwarded-client-cert': '' }, 'ignore', 'untrusted-peer'],
    ['another header', { 'x-client-cert': 'x' }, 'ignore', 'untrusted-peer'],
  ];
  test.each(cases)('%s', (_name, headers, action, reason) => {
    const d = decide(fakeRequest('203.0.113.7', headers), fakeRequest(''));
    expect([d.action, d.reason]).toEqual([action, reason]);
  });

  test('several header names: any one of them', () => {
    const either = inboundPolicy<IncomingMessage>('@meshtrace/x', 'inbound', {
      trustedWhen: ['x-forwarded-client-cert', 'l5d-client-id'],
    });
    expect(
      either(
        fakeRequest('203.0.113.7', { 'l5d-client-id': 'web.default.serviceaccount.identity.linkerd.cluster.local' }),
        fakeRequest(''),
      ).action,
    ).toBe('continue');
  });
});

describe('X-Forwarded-For counts only with proxyHops', () => {
  // The sidecar connects from 127.0.0.1 and appends the address it saw.
  const cases: Array<[string, number, string, string]> = [
    ['never read without proxyHops: the socket peer decides', 0, '10.0.0.5', '203.0.113.9'],
    ['one hop: the address the sidecar appended', 1, '10.0.0.5', '10.0.0.5'],
    ['one hop: a client cannot spoof by writing to the left', 1, '10.0.0.5, 203.0.113.9', '203.0.113.9'],
    ['two hops: the address the second proxy appended', 2, '10.0.0.5, 198.51.100.1, 10.0.0.9', '198.51.100.1'],
    ['IPv6 with brackets and a port', 1, '[fd00::5]:443', 'fd00::5'],
    ['IPv4 with a port', 1, '10.0.0.5:31000', '10.0.0.5'],
    ['a chain shorter than the hops: its furthest address', 3, '10.0.0.5', '10.0.0.5'],
    ['no header at all: the socket peer', 1, '', '203.0.113.9'],
  ];
  test.each(cases)('%s', (_name, hops, xff, peer) => {
    const req = fakeRequest('203.0.113.9', xff === '' ? {} : { 'x-forwarded-for': xff });
    expect(peerAddress(req, hops)).toBe(peer);
  });

  test('the decision follows the hops', () => {
    const req = fakeRequest('127.0.0.9', { 'x-forwarded-for': '203.0.113.1, 10.1.1.1' });
    const without = inboundPolicy<IncomingMessage>('@meshtrace/x', 'inbound', { trustedPeers: ['10.0.0.0/8'] });
    const withHop = inboundPolicy<IncomingMessage>('@meshtrace/x', 'inbound', {
      trustedPeers: ['10.0.0.0/8'],
      proxyHops: 1,
    });
    const twoHops = inboundPolicy<IncomingMessage>('@meshtrace/x', 'inbound', {
      trustedPeers: ['10.0.0.0/8'],
      proxyHops: 2,
    });
    expect([without(req, req).action, withHop(req, req).action, twoHops(req, req).action]).toEqual([
      'restart',
      'continue',
      'restart',
    ]);
  });
});

describe('bad policies fail at setup with a TypeError naming the option', () => {
  const bad: Array<[string, unknown, string]> = [
    ['an unknown action', 'trust', 'inbound'],
    ['a number', 1, 'inbound'],
    ['an array', ['10.0.0.0/8'], 'inbound'],
    ['a policy with neither peers nor header', {}, 'inbound'],
    ['an unknown key', { trustedPeer: ['10.0.0.0/8'] }, 'inbound.trustedPeer'],
    ['a prefix past 32', { trustedPeers: ['10.0.0.0/33'] }, 'inbound.trustedPeers'],
    ['a prefix past 128', { trustedPeers: ['fd00::/129'] }, 'inbound.trustedPeers'],
    ['an empty prefix', { trustedPeers: ['10.0.0.0/'] }, 'inbound.trustedPeers'],
    ['a prefix that is no number', { trustedPeers: ['10.0.0.0/8a'] }, 'inbound.trustedPeers'],
    ['a host name', { trustedPeers: ['mesh.local'] }, 'inbound.trustedPeers'],
    ['an address out of range', { trustedPeers: ['10.0.0.256'] }, 'inbound.trustedPeers'],
    ['an address with a zone', { trustedPeers: ['fe80::1%eth0'] }, 'inbound.trustedPeers'],
    ['not a list', { trustedPeers: '10.0.0.0/8' }, 'inbound.trustedPeers'],
    ['a header name with a space', { trustedWhen: 'x client cert' }, 'inbound.trustedWhen'],
    ['an empty header list', { trustedWhen: [] }, 'inbound.trustedWhen'],
    ['otherwise: continue', { trustedPeers: ['10.0.0.0/8'], otherwise: 'continue' }, 'inbound.otherwise'],
    ['otherwise: an unknown action', { trustedPeers: ['10.0.0.0/8'], otherwise: 'drop' }, 'inbound.otherwise'],
    ['negative proxyHops', { trustedPeers: ['10.0.0.0/8'], proxyHops: -1 }, 'inbound.proxyHops'],
    ['fractional proxyHops', { trustedPeers: ['10.0.0.0/8'], proxyHops: 1.5 }, 'inbound.proxyHops'],
  ];
  test.each(bad)('%s', (_name, inbound, option) => {
    const make = () => createServerTracing({ inbound } as never, { name: '@meshtrace/x' });
    expect(make).toThrow(TypeError);
    expect(make).toThrow(new RegExp(`^@meshtrace/x: option "${option.replace('.', '\\.')}"`));
  });

  test.each([
    ['no options', undefined, 'meshTraceRoute'],
    ['no inbound', {}, 'meshTraceRoute.inbound'],
    ['another option', { inbound: 'restart', ignore: ['/x'] }, 'meshTraceRoute.ignore'],
    ['an unknown action', { inbound: 'trust' }, 'meshTraceRoute.inbound'],
    ['an unparsable CIDR', { inbound: { trustedPeers: ['10.0.0.0/40'] } }, 'meshTraceRoute.inbound.trustedPeers'],
  ])('route options, %s', (_name, options, option) => {
    const make = () => new RoutePolicy('@meshtrace/x', options as never, 'meshTraceRoute');
    expect(make).toThrow(TypeError);
    expect(make).toThrow(new RegExp(`^@meshtrace/x: option "${option.replace(/\./g, '\\.')}"`));
  });
});

/**
 * A node:http server traced with `options` on `host`, answering with what its handler observed; `route` decides per
 * request.
 */
async function serve(
  options: MeshTraceOptions,
  host = '127.0.0.1',
  route?: (req: IncomingMessage) => RoutePolicy<IncomingMessage> | undefined,
): Promise<number> {
  const t = createServerTracing<IncomingMessage, ServerResponse>(options, { name: '@meshtrace/trust-test' });
  const server = createServer((req, res) => {
    const rt = t.start(req, res, route?.(req));
    context.with(rt.context, () => res.end(JSON.stringify(observe())));
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, host, r));
  return (server.address() as AddressInfo).port;
}

async function call(url: string, headers: Record<string, string>) {
  tracing.reset();
  const before = await tracing.outcomeCounts();
  const seen = (await (await fetch(url, { headers })).json()) as Observed;
  await new Promise((r) => setImmediate(r));
  const span = tracing.spans().find((s) => s.spanContext().spanId === seen.spanId);
  const after = await tracing.outcomeCounts();
  return { seen, span, counted: Object.keys(after).filter((k) => after[k] !== (before[k] ?? 0)) };
}

describe('on a real socket', () => {
  // A dual-stack listener reports an IPv4 client as IPv4-mapped IPv6, a single-stack one as IPv4.
  const cases: Array<[string, string, string, string[], string, string]> = [
    ['IPv4 listener, 127.0.0.1 trusted', '127.0.0.1', '127.0.0.1', ['127.0.0.1'], 'continued', T],
    [
      'dual-stack listener, 127.0.0.1 trusted (peer ::ffff:127.0.0.1)',
      '::',
      '127.0.0.1',
      ['127.0.0.0/8'],
      'continued',
      T,
    ],
    [
      'dual-stack listener, only ::1 trusted (peer ::ffff:127.0.0.1)',
      '::',
      '127.0.0.1',
      ['::1'],
      'restarted:untrusted-peer',
      '',
    ],
    ['IPv6 listener, ::1 trusted', '::1', '[::1]', ['::1/128'], 'continued', T],
    ['IPv6 listener, only 10/8 trusted', '::1', '[::1]', ['10.0.0.0/8'], 'restarted:untrusted-peer', ''],
  ];
  test.each(cases)('%s: %s', async (_name, listen, connect, trustedPeers, outcome, traceId) => {
    const port = await serve({ inbound: { trustedPeers } }, listen);
    const { seen, span, counted } = await call(`http://${connect}:${port}/`, { traceparent: VALID });
    const [name, reason] = outcome.split(':');
    expect({
      counted,
      outcome: span?.attributes['meshtrace.propagation.outcome'],
      reason: span?.attributes['meshtrace.propagation.reason'],
    }).toEqual({ counted: [outcome], outcome: name, reason });
    if (traceId) expect(seen.traceId).toBe(traceId);
    else expect(seen.traceId).not.toBe(T);
  });

  test("'restart' for an untrusted peer: a new trace linked to the caller's, only allow-listed baggage, counted with its reason", async () => {
    const port = await serve({ inbound: { trustedPeers: ['10.0.0.0/8'] }, baggageAllowList: ['tenant'] });
    const { seen, span, counted } = await call(`http://127.0.0.1:${port}/`, {
      traceparent: VALID,
      baggage: 'tenant=acme,session=secret',
    });
    expect(seen.traceId).not.toBe(T);
    expect(span?.parentSpanContext).toBeUndefined();
    expect(
      span?.links.map((l) => [l.context.traceId, l.context.spanId, l.attributes?.['meshtrace.link.reason']]),
    ).toEqual([[T, P, 'restarted']]);
    expect(seen.baggage).toEqual({ tenant: 'acme' });
    expect(counted).toEqual(['restarted:untrusted-peer']);
  });

  test("'ignore' for an untrusted peer: no link, no baggage but the allow-list", async () => {
    const port = await serve({
      inbound: { trustedPeers: ['10.0.0.0/8'], otherwise: 'ignore' },
      baggageAllowList: ['tenant'],
    });
    const { seen, span, counted } = await call(`http://127.0.0.1:${port}/`, {
      traceparent: VALID,
      baggage: 'tenant=acme,session=secret',
    });
    expect([span?.links, seen.baggage, counted]).toEqual([[], { tenant: 'acme' }, ['ignored:untrusted-peer']]);
  });

  test('the header the sidecar sets decides even for an untrusted peer', async () => {
    const port = await serve({ inbound: { trustedPeers: ['10.0.0.0/8'], trustedWhen: 'x-forwarded-client-cert' } });
    const trusted = await call(`http://127.0.0.1:${port}/`, {
      traceparent: VALID,
      'x-forwarded-client-cert': 'By=spiffe://cluster.local/ns/a/sa/b',
    });
    const untrusted = await call(`http://127.0.0.1:${port}/`, { traceparent: VALID });
    expect([trusted.seen.traceId, trusted.counted, untrusted.counted]).toEqual([
      T,
      ['continued'],
      ['restarted:untrusted-peer'],
    ]);
  });

  test('X-Forwarded-For is not trusted without proxyHops, and is with it', async () => {
    const xff = { traceparent: VALID, 'x-forwarded-for': '10.1.2.3' };
    const ignored = await call(`http://127.0.0.1:${await serve({ inbound: { trustedPeers: ['10.0.0.0/8'] } })}/`, xff);
    const hops = await call(
      `http://127.0.0.1:${await serve({ inbound: { trustedPeers: ['10.0.0.0/8'], proxyHops: 1 } })}/`,
      xff,
    );
    expect([ignored.counted, hops.counted]).toEqual([['restarted:untrusted-peer'], ['continued']]);
  });

  test('a policy function: its answer, with the reason policy', async () => {
    const port = await serve({
      inbound: (req) => (req.url === '/public' ? 'restart' : req.url === '/blind' ? 'ignore' : 'continue'),
    });
    const results = [];
    for (const path of ['/internal', '/public', '/blind'])
      results.push((await call(`http://127.0.0.1:${port}${path}`, { traceparent: VALID })).counted);
    expect(results).toEqual([['continued'], ['restarted:policy'], ['ignored:policy']]);
  });

  test.each([
    [
      'throws',
      () => {
        throw new Error('lookup failed');
      },
      'threw',
    ],
    ['answers something else', () => 'trust', 'answered "trust"'],
  ])(
    'a policy function that %s counts as the fallback (restart) and is reported once per interval',
    async (_name, inbound, said) => {
      const port = await serve({ inbound: inbound as never });
      const results = [];
      for (let i = 0; i < 3; i++) results.push(await call(`http://127.0.0.1:${port}/`, { traceparent: VALID }));
      expect(results.map((r) => [r.counted, r.seen.traceId === T, r.span?.links.length])).toEqual(
        Array(3).fill([['restarted:policy-error'], false, 1]),
      );
      expect(warnings.filter((w) => w.includes('inbound policy'))).toHaveLength(1);
      expect(warnings.find((w) => w.includes('inbound policy'))).toContain(said);
    },
  );

  test("a route's policy replaces the service's: fixed actions are recorded with the reason route-policy", async () => {
    const restart = new RoutePolicy<IncomingMessage>('@meshtrace/x', { inbound: 'restart' });
    const trustAll = new RoutePolicy<IncomingMessage>('@meshtrace/x', { inbound: 'continue' });
    const port = await serve({ inbound: { trustedPeers: ['127.0.0.1'] } }, '127.0.0.1', (req) =>
      req.url === '/public' ? restart : req.url === '/open' ? trustAll : undefined,
    );
    const results = [];
    for (const path of ['/internal', '/public', '/open'])
      results.push((await call(`http://127.0.0.1:${port}${path}`, { traceparent: VALID })).counted);
    expect(results).toEqual([['continued'], ['restarted:route-policy'], ['continued']]);
  });
});
