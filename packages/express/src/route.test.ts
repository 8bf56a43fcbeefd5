import { createServer } from 'node:http';
import type { RequestListener, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { PARENT_ID, setupTestTracing } from '@meshtrace/testkit';
import { meshTrace, meshTraceErrors } from '@meshtrace/express';
import type { NextFunction, Request, Response } from 'express';

type Express = typeof import('express');

const tracing = setupTestTracing();
type ReadableSpan = ReturnType<typeof tracing.spans>[number];
const servers: Server[] = [];

async function listen(listener: RequestListener): Promise<string> {
  const server = createServer(listener);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

afterAll(async () => {
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  await tracing.shutdown();
});

function newTraceId(): string {
  return randomBytes(16).toString('hex');
}

/** The SERVER span of a trace, once the response has finished and the span ended. */
async function serverSpan(traceId: string): Promise<ReadableSpan> {
  for (let i = 0; i < 400; i++) {
    const span = tracing.spans().find((s) => s.spanContext().traceId === traceId && s.kind === SpanKind.SERVER);
    if (span !== undefined) return span;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`no server span for trace ${traceId}`);
}

const ok = (req: Request, res: Response) => void res.json({ params: req.params });

function routedApp(express: Express) {
  const app = express();
  app.use(meshTrace());
  app.get('/plain', ok);
  app.get('/users/:id', ok);
  app.get('/gone/:id', (_req, res) => void res.sendStatus(404));
  // Matches the first segment of every path below, has no route there and falls through.
  const tenant = express.Router();
  tenant.get('/dashboard', ok);
  app.use('/:tenant', tenant);
  const teams = express.Router({ mergeParams: true });
  teams.get('/:teamId', ok);
  const orgs = express.Router({ mergeParams: true });
  orgs.use('/teams', teams);
  const api = express.Router();
  // A second meshTrace() on the way (a router that also works standalone) must not add a span.
  api.use(meshTrace());
  api.get('/', ok);
  api.get('/users/:id', ok);
  api.use('/orgs/:orgId', orgs);
  app.use('/api', api);
  const root = express.Router();
  root.get('/about', ok);
  app.use(root);
  // Sub-applications (their own express()), under a parameter, with a router and another sub-application inside.
  const admin = express();
  admin.get('/stats/:day', ok);
  const reports = express.Router();
  reports.get('/:reportId', ok);
  admin.use('/reports', reports);
  const deep = express();
  deep.get('/:x', ok);
  admin.use('/deep', deep);
  app.use('/admin/:site', admin);
  return app;
}

const ROUTES = [
  { name: 'plain', method: 'GET', path: '/plain', span: 'GET /plain', route: '/plain', status: 200 },
  {
    name: 'path parameter',
    method: 'GET',
    path: '/users/42',
    span: 'GET /users/:id',
    route: '/users/:id',
    status: 200,
  },
  {
    name: 'router under a prefix',
    method: 'GET',
    path: '/api/users/7?full=1',
    span: 'GET /api/users/:id',
    route: '/api/users/:id',
    status: 200,
  },
  {
    name: 'root route of a prefixed router',
    method: 'GET',
    path: '/api',
    span: 'GET /api',
    route: '/api',
    status: 200,
  },
  {
    name: 'nested routers with parameters',
    method: 'GET',
    path: '/api/orgs/acme/teams/9',
    span: 'GET /api/orgs/:orgId/teams/:teamId',
    route: '/api/orgs/:orgId/teams/:teamId',
    status: 200,
  },
  {
    name: 'router under a parameter',
    method: 'GET',
    path: '/t1/dashboard',
    span: 'GET /:tenant/dashboard',
    route: '/:tenant/dashboard',
    status: 200,
  },
  { name: 'router mounted at /', method: 'GET', path: '/about', span: 'GET /about', route: '/about', status: 200 },
  {
    name: 'sub-application under a parameter',
    method: 'GET',
    path: '/admin/s1/stats/mon',
    span: 'GET /admin/:site/stats/:day',
    route: '/admin/:site/stats/:day',
    status: 200,
  },
  {
    name: 'router inside a sub-application',
    method: 'GET',
    path: '/admin/s1/reports/5',
    span: 'GET /admin/:site/reports/:reportId',
    route: '/admin/:site/reports/:reportId',
    status: 200,
  },
  {
    name: 'sub-application inside a sub-application',
    method: 'GET',
    path: '/admin/s1/deep/z',
    span: 'GET /admin/:site/deep/:x',
    route: '/admin/:site/deep/:x',
    status: 200,
  },
  {
    name: 'route answering 404 itself',
    method: 'GET',
    path: '/gone/3',
    span: 'GET /gone/:id',
    route: '/gone/:id',
    status: 404,
  },
  { name: 'no route (404)', method: 'GET', path: '/no/such/page', span: 'GET', route: undefined, status: 404 },
  { name: 'method without a route (404)', method: 'POST', path: '/plain', span: 'POST', route: undefined, status: 404 },
] as const;

describe.each([
  ['express 4', require('express4') as Express],
  ['express 5', require('express5') as Express],
])('%s route templates', (_major, express) => {
  let base: string;
  beforeAll(async () => {
    base = await listen(routedApp(express));
  });

  test.each(ROUTES.map((r) => [r.name, r] as const))('%s', async (name, r) => {
    const traceId = newTraceId();
    const res = await fetch(base + r.path, {
      method: r.method,
      headers: { traceparent: `00-${traceId}-${PARENT_ID}-01` },
    });
    await res.arrayBuffer();
    const span = await serverSpan(traceId);
    const spans = tracing.spans().filter((s) => s.spanContext().traceId === traceId).length;
    expect({
      name,
      status: res.status,
      spans,
      span: span.name,
      route: span.attributes['http.route'],
      code: span.attributes['http.response.status_code'],
    }).toEqual({
      name,
      status: r.status,
      spans: 1,
      span: r.span,
      route: r.route,
      code: r.status,
    });
  });
});

interface ErrorCase {
  readonly name: string;
  readonly path: string;
  readonly status: number;
  /** The span status: ERROR for server errors, unset for errors that answer 4xx (HTTP semconv). */
  readonly error: boolean;
  readonly exception: { readonly type: string; readonly message: string };
  readonly route: string;
  /** Rejected promises are routed by Express 5 only. */
  readonly express5Only?: boolean;
}

const ERRORS: readonly ErrorCase[] = [
  {
    name: 'synchronous throw',
    path: '/throw',
    status: 500,
    error: true,
    exception: { type: 'Error', message: 'thrown' },
    route: '/throw',
  },
  {
    name: 'next(err)',
    path: '/next/1',
    status: 500,
    error: true,
    exception: { type: 'TypeError', message: 'passed to next' },
    route: '/next/:id',
  },
  {
    name: 'throw in a nested router',
    path: '/api/throw',
    status: 500,
    error: true,
    exception: { type: 'Error', message: 'thrown in router' },
    route: '/api/throw',
  },
  {
    name: 'error carrying a 4xx status',
    path: '/missing',
    status: 404,
    error: false,
    exception: { type: 'Error', message: 'not here' },
    route: '/missing',
  },
  {
    name: 'error carrying a 503 status',
    path: '/unavailable',
    status: 503,
    error: true,
    exception: { type: 'Error', message: 'busy' },
    route: '/unavailable',
  },
  {
    name: 'rejected promise',
    path: '/async',
    status: 500,
    error: true,
    exception: { type: 'RangeError', message: 'rejected' },
    route: '/async',
    express5Only: true,
  },
];

function failingApp(express: Express, major: number, withErrorMiddleware: boolean) {
  const app = express();
  app.use(meshTrace());
  app.get('/throw', () => {
    throw new Error('thrown');
  });
  app.get('/next/:id', (_req: Request, _res: Response, next: NextFunction) => next(new TypeError('passed to next')));
  app.get('/missing', (_req: Request, _res: Response, next: NextFunction) =>
    next(Object.assign(new Error('not here'), { status: 404 })),
  );
  app.get('/unavailable', () => {
    throw Object.assign(new Error('busy'), { statusCode: 503 });
  });
  if (major === 5) {
    app.get('/async', async () => {
      await new Promise((r) => setTimeout(r, 2));
      throw new RangeError('rejected');
    });
  }
  const api = express.Router();
  api.get('/throw', () => {
    throw new Error('thrown in router');
  });
  app.use('/api', api);
  if (withErrorMiddleware) app.use(meshTraceErrors());
  // The application's own error handler answers as Express's default would, so the status comes from the error.
  app.use((err: { status?: number; statusCode?: number }, _req: Request, res: Response, _next: NextFunction) => {
    res.status(err.status ?? err.statusCode ?? 500).json({ failed: true });
  });
  return app;
}

describe.each([
  ['express 4 with meshTraceErrors()', require('express4') as Express, 4, true],
  ['express 5 through its router channel', require('express5') as Express, 5, false],
  ['express 5 with meshTraceErrors() as well', require('express5') as Express, 5, true],
])('%s: errors', (_label, express, major, withErrorMiddleware) => {
  let base: string;
  beforeAll(async () => {
    base = await listen(failingApp(express, major, withErrorMiddleware));
  });

  const cases = ERRORS.filter((c) => major === 5 || !c.express5Only);
  test.each(cases.map((c) => [c.name, c] as const))('%s', async (name, c) => {
    const traceId = newTraceId();
    const res = await fetch(base + c.path, { headers: { traceparent: `00-${traceId}-${PARENT_ID}-01` } });
    await res.arrayBuffer();
    const span = await serverSpan(traceId);
    const exceptions = span.events
      .filter((e) => e.name === 'exception')
      .map((e) => ({ type: e.attributes?.['exception.type'], message: e.attributes?.['exception.message'] }));
    expect({
      name,
      status: res.status,
      code: span.attributes['http.response.status_code'],
      route: span.attributes['http.route'],
      error: span.status.code === SpanStatusCode.ERROR,
      exceptions,
    }).toEqual({ name, status: c.status, code: c.status, route: c.route, error: c.error, exceptions: [c.exception] });
  });
});
