import { diag } from '@opentelemetry/api';
import { fastify } from 'fastify';
import type { FastifyInstance } from 'fastify';
import { fastify as fastify4 } from 'fastify4';
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
import { meshTrace } from '@meshtrace/fastify';

const tracing = setupTestTracing();
const warnings = captureWarnings();
afterAll(async () => {
  await tracing.shutdown();
  diag.disable();
});

// Both majors run every test; Fastify 4's types differ, its behaviour is what is under test.
const MAJORS = [
  ['fastify 5', fastify],
  ['fastify 4', fastify4 as unknown as typeof fastify],
] as const;

const VALID = `00-${TRACE_ID}-${PARENT_ID}-01`;

/** This adapter's own rows, after the ones every adapter shares. */
const ROWS: readonly TrustRow[] = [
  ...SHARED_TRUST_ROWS,
  ['config.meshTrace restart', 'GET', '/public/7', 'restarted:route-policy', false],
  ['config.meshTrace ignore', 'POST', '/webhooks', 'ignored:route-policy', false],
  ['a route of an encapsulated, prefixed plugin', 'GET', '/child/items', 'restarted:route-policy', false],
  ['a route added before the plugin, checked on its first request', 'GET', '/early', 'restarted:route-policy', false],
];

describe.each(MAJORS)('%s: route config.meshTrace decides before the one SERVER span starts', (_major, Fastify) => {
  let app: FastifyInstance;
  let base: string;

  beforeAll(async () => {
    app = Fastify();
    app.get('/early', { config: { meshTrace: { inbound: 'restart' } } }, async () => observe());
    app.get('/early-bad', { config: { meshTrace: { inbound: 'trust' as never } } }, async () => observe());
    await app.register(meshTrace, TRUST_SERVICE);
    app.get('/internal', async () => observe());
    app.get('/public/:id', { config: { meshTrace: { inbound: 'restart' } } }, async () => observe());
    app.post('/webhooks', { config: { meshTrace: { inbound: 'ignore' } } }, async () => observe());
    app.get(
      '/fn',
      {
        config: {
          meshTrace: {
            inbound: (request) => ((request.query as { trust?: string }).trust === 'yes' ? 'continue' : 'ignore'),
          },
        },
      },
      async () => observe(),
    );
    app.get('/mesh-only', { config: { meshTrace: { inbound: { trustedPeers: ['10.0.0.0/8'] } } } }, async () =>
      observe(),
    );
    await app.register(
      async (child) => {
        child.get('/items', { config: { meshTrace: { inbound: 'restart' } } }, async () => observe());
      },
      { prefix: '/child' },
    );
    base = await app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterAll(() => app.close());

  test.each(ROWS)('%s: %s %s is %s', async (name, method, path, outcome, continued) => {
    const { got, want } = await runTrustRow(tracing, name, `${base}${path}`, method, outcome, continued);
    expect(got).toEqual(want);
  });

  test('a bad config.meshTrace on a route added before the plugin: reported once, the service policy applies', async () => {
    warner.reset();
    warnings.length = 0;
    const seen = await Promise.all(
      [1, 2].map(
        async () => (await (await fetch(`${base}/early-bad`, { headers: { traceparent: VALID } })).json()) as Observed,
      ),
    );
    expect(seen.map((s) => s.traceId)).toEqual([TRACE_ID, TRACE_ID]);
    expect(
      warnings.filter((w) => w.startsWith('@meshtrace/fastify: option "config.meshTrace.inbound" must be')),
    ).toHaveLength(1);
  });

  test.each([
    ['an unknown action', { inbound: 'trust' }, 'config.meshTrace.inbound'],
    [
      'an unparsable CIDR',
      { inbound: { trustedPeers: ['10.0.0.0/8', '10.0.0.0/99'] } },
      'config.meshTrace.inbound.trustedPeers',
    ],
    ['another option', { inbound: 'restart', traceResponse: true }, 'config.meshTrace.traceResponse'],
    ['not an object', 'restart', 'config.meshTrace'],
  ])('a route with %s fails at setup', async (_name, meshTraceConfig, option) => {
    const bad = Fastify();
    await bad.register(meshTrace);
    const added = (async () => {
      bad.get('/bad', { config: { meshTrace: meshTraceConfig as never } }, async () => 'never');
      await bad.ready();
    })();
    try {
      await expect(added).rejects.toThrow(TypeError);
      await expect(added).rejects.toThrow(new RegExp(`^@meshtrace/fastify: option "${option.replace(/\./g, '\\.')}"`));
    } finally {
      await bad.close();
    }
  });
});
