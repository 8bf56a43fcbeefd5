import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { diag } from '@opentelemetry/api';
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
import { meshTrace, meshTraceRoute } from '@meshtrace/express';
import type { RequestHandler } from 'express';

type Express = typeof import('express');

const tracing = setupTestTracing();
const warnings = captureWarnings();
const servers: Server[] = [];
afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  await tracing.shutdown();
  diag.disable();
});

const VALID = `00-${TRACE_ID}-${PARENT_ID}-01`;
const answer: RequestHandler = (_req, res) => void res.json(observe());

/** This adapter's own rows, after the ones every adapter shares. */
const ROWS: readonly TrustRow[] = [
  ...SHARED_TRUST_ROWS,
  ['router.use(meshTraceRoute) on a mounted router', 'GET', '/public/items/7', 'restarted:route-policy', false],
  [
    'a router-level policy also covers a path below it that no route answers (404)',
    'GET',
    '/public/nothing-here',
    'restarted:route-policy',
    false,
  ],
  ['meshTraceRoute as a route handler, for its method', 'POST', '/webhooks/github', 'ignored:route-policy', false],
  ['the same path, another method without a policy', 'GET', '/webhooks/github', 'continued', true],
  ['a policy on a router above the route', 'GET', '/mid/n/deep', 'restarted:route-policy', false],
  ['the innermost policy on the way wins', 'GET', '/outer/inner/x', 'continued', true],
  ['the outer policy where the inner router is not on the way', 'GET', '/outer/y', 'restarted:route-policy', false],
];

const MAJORS: ReadonlyArray<readonly [string, Express]> = [
  ['express 4', require('express4') as Express],
  ['express 5', require('express5') as Express],
];

describe.each(MAJORS)('%s: meshTraceRoute decides before the one SERVER span starts', (_major, express) => {
  let base: string;

  beforeAll(async () => {
    const app = express();
    app.use(meshTrace(TRUST_SERVICE));
    app.get('/internal', answer);

    const publicRouter = express.Router();
    publicRouter.use(meshTraceRoute({ inbound: 'restart' }));
    publicRouter.get('/items/:id', answer);
    publicRouter.use((_req, res) => void res.status(404).json(observe()));
    app.use('/public', publicRouter);

    app.post('/webhooks/:source', meshTraceRoute({ inbound: 'ignore' }), answer);
    app.get('/webhooks/:source', answer);

    const nested = express.Router();
    nested.get('/deep', answer);
    const mid = express.Router();
    mid.use(meshTraceRoute({ inbound: 'restart' }));
    mid.use('/n', nested);
    app.use('/mid', mid);

    const inner = express.Router();
    inner.use(meshTraceRoute({ inbound: 'continue' }));
    inner.get('/x', answer);
    const outer = express.Router();
    outer.use(meshTraceRoute({ inbound: 'restart' }));
    outer.use('/inner', inner);
    outer.get('/y', answer);
    app.use('/outer', outer);

    app.get('/fn', meshTraceRoute({ inbound: (req) => (req.query.trust === 'yes' ? 'continue' : 'ignore') }), answer);
    app.get('/mesh-only', meshTraceRoute({ inbound: { trustedPeers: ['10.0.0.0/8'] } }), answer);

    // Express gives no way from an application to the sub-applications mounted on it.
    const sub = express();
    sub.use(meshTraceRoute({ inbound: 'restart' }));
    sub.get('/s', answer);
    app.use('/sub', sub);

    const server = createServer(app);
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  test.each(ROWS)('%s: %s %s is %s', async (name, method, path, outcome, continued) => {
    const { got, want } = await runTrustRow(tracing, name, `${base}${path}`, method, outcome, continued);
    expect(got).toEqual(want);
  });

  test('a policy on a sub-application cannot be found before routing: the service policy applies, and a warning says so', async () => {
    warner.reset();
    warnings.length = 0;
    const seen = (await (await fetch(`${base}/sub/s`, { headers: { traceparent: VALID } })).json()) as Observed;
    expect(seen.traceId).toBe(TRACE_ID);
    expect(
      warnings.filter((w) =>
        w.startsWith('@meshtrace/express: meshTraceRoute() ran on a request for which meshTrace() had not found it'),
      ),
    ).toHaveLength(1);
  });
});

test('meshTraceRoute without meshTrace: a warning, and the request goes on', async () => {
  const express = require('express5') as Express;
  warner.reset();
  warnings.length = 0;
  const app = express();
  app.get('/x', meshTraceRoute({ inbound: 'restart' }), (_req, res) => void res.send('ok'));
  const server = createServer(app);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/x`);
  expect([res.status, await res.text()]).toEqual([200, 'ok']);
  expect(warnings.filter((w) => w.includes('add app.use(meshTrace()) before the routers'))).toHaveLength(1);
});

test.each([
  ['no options', undefined, 'meshTraceRoute'],
  ['an unknown action', { inbound: 'trust' }, 'meshTraceRoute.inbound'],
  [
    'an unparsable CIDR',
    { inbound: { trustedPeers: ['10.0.0.0/8', '300.0.0.0/8'] } },
    'meshTraceRoute.inbound.trustedPeers',
  ],
])('meshTraceRoute with %s fails at setup', (_name, options, option) => {
  expect(() => meshTraceRoute(options as never)).toThrow(TypeError);
  expect(() => meshTraceRoute(options as never)).toThrow(
    new RegExp(`^@meshtrace/express: option "${option.replace(/\./g, '\\.')}"`),
  );
});
