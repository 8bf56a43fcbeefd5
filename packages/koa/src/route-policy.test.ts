import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { diag } from '@opentelemetry/api';
import Router from '@koa/router';
import Koa from 'koa';
import type { Context } from 'koa';
import { warner } from '@meshtrace/core/adapter';
import {
  captureWarnings,
  observe,
  PARENT_ID,
  runTrustRow,
  setupTestTracing,
  SHARED_TRUST_ROWS,
  TRACE_ID,
  TRUST_SERVICE,
} from '@meshtrace/testkit';
import type { TrustRow } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';
import { meshTrace, meshTraceRoute } from '@meshtrace/koa';

// Koa 2 has no types of its own; its API is the one @types/koa describes.
const Koa2 = require('koa2') as typeof Koa;
const MAJORS = [
  ['koa 2', Koa2],
  ['koa 3', Koa],
] as const;

const tracing = setupTestTracing();
const warnings = captureWarnings();
afterAll(async () => {
  await tracing.shutdown();
  diag.disable();
});

const VALID = `00-${TRACE_ID}-${PARENT_ID}-01`;
const answer = (ctx: Context) => {
  ctx.body = observe();
};

/** This adapter's own rows, after the ones every adapter shares. */
const ROWS: readonly TrustRow[] = [
  ...SHARED_TRUST_ROWS,
  ['router.use(meshTraceRoute) on a prefixed router', 'GET', '/public/items/7', 'restarted:route-policy', false],
  ['meshTraceRoute in a route, for its method', 'POST', '/webhooks/github', 'ignored:route-policy', false],
  ['the same path, another method without a policy', 'GET', '/webhooks/github', 'continued', true],
  [
    'a policy in a nested router (router.use(path, nested.routes()))',
    'GET',
    '/mid/deep',
    'restarted:route-policy',
    false,
  ],
];

describe.each(MAJORS)('%s: meshTraceRoute decides before the one SERVER span starts', (_major, KoaApp) => {
  let server: Server;
  let base: string;

  beforeAll(async () => {
    const app = new KoaApp();
    app.use(meshTrace(TRUST_SERVICE));
    const router = new Router();
    router.get('/internal', answer);
    router.post('/webhooks/:source', meshTraceRoute({ inbound: 'ignore' }), answer);
    router.get('/webhooks/:source', answer);
    router.get(
      '/fn',
      meshTraceRoute({ inbound: (ctx) => (ctx.query.trust === 'yes' ? 'continue' : 'ignore') }),
      answer,
    );
    router.get('/mesh-only', meshTraceRoute({ inbound: { trustedPeers: ['10.0.0.0/8'] } }), answer);
    const nested = new Router();
    nested.use(meshTraceRoute({ inbound: 'restart' }));
    nested.get('/deep', answer);
    router.use('/mid', nested.routes());
    const publicRouter = new Router({ prefix: '/public' });
    publicRouter.use(meshTraceRoute({ inbound: 'restart' }));
    publicRouter.get('/items/:id', answer);
    app.use(router.routes());
    app.use(publicRouter.routes());
    // A router reached through a middleware of its own, not app.use(router.routes()): not looked into.
    const hidden = new Router();
    hidden.get('/hidden', meshTraceRoute({ inbound: 'restart' }), answer);
    const dispatch = hidden.routes();
    app.use((ctx, next) => dispatch(ctx as Parameters<typeof dispatch>[0], next));
    server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  test.each(ROWS)('%s: %s %s is %s', async (name, method, path, outcome, continued) => {
    const { got, want } = await runTrustRow(tracing, name, `${base}${path}`, method, outcome, continued);
    expect(got).toEqual(want);
  });

  test('a policy in a router the application does not hold directly: the service policy applies, and a warning says so', async () => {
    warner.reset();
    warnings.length = 0;
    const seen = (await (await fetch(`${base}/hidden`, { headers: { traceparent: VALID } })).json()) as Observed;
    expect(seen.traceId).toBe(TRACE_ID);
    expect(
      warnings.filter((w) =>
        w.startsWith('@meshtrace/koa: meshTraceRoute() ran on a request for which meshTrace() had not found it'),
      ),
    ).toHaveLength(1);
  });
});

test('meshTraceRoute without meshTrace: a warning, and the request goes on', async () => {
  warner.reset();
  warnings.length = 0;
  const app = new Koa();
  const router = new Router();
  router.get('/x', meshTraceRoute({ inbound: 'restart' }), (ctx) => {
    ctx.body = 'ok';
  });
  app.use(router.routes());
  const server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  try {
    const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/x`);
    expect([res.status, await res.text()]).toEqual([200, 'ok']);
    expect(warnings.filter((w) => w.includes('add app.use(meshTrace()) before the routers'))).toHaveLength(1);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

test.each([
  ['no options', undefined, 'meshTraceRoute'],
  ['an unknown action', { inbound: 'trust' }, 'meshTraceRoute.inbound'],
  ['an unparsable CIDR', { inbound: { trustedPeers: ['fd00::/200'] } }, 'meshTraceRoute.inbound.trustedPeers'],
])('meshTraceRoute with %s fails at setup', (_name, options, option) => {
  expect(() => meshTraceRoute(options as never)).toThrow(TypeError);
  expect(() => meshTraceRoute(options as never)).toThrow(
    new RegExp(`^@meshtrace/koa: option "${option.replace(/\./g, '\\.')}"`),
  );
});
