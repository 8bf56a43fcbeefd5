import { InstalledTree, installApp, removeApp, tarballSpecs } from './npm';
import type { InstalledApp } from './npm';
import { packTarballs } from './pack';
import { caller, orderId, rawGet, settle, startApp, startDownstream } from './harness';
import type { Answer, Downstream, RunningApp, SpanRecord } from './harness';
import { FRAMEWORKS } from './versions';
import type { OtelLine } from './versions';

/** The outbound calls every app makes per order, named by the last segment of their path. */
const WAYS = ['meshFetch', 'fetch', 'http.request', 'injectHeaders'] as const;
type Way = (typeof WAYS)[number];

/** meshtrace packages an app on the official SDK installs. */
const APP_PACKAGES = [
  '@meshtrace/core',
  '@meshtrace/express',
  '@meshtrace/fastify',
  '@meshtrace/koa',
  '@meshtrace/http',
  '@meshtrace/node',
];

const FRAMEWORK_APPS = [
  { framework: 'express', file: 'express-app.js' },
  { framework: 'fastify', file: 'fastify-app.js' },
  { framework: 'koa', file: 'koa-app.js' },
] as const;

function nodeAtLeast(min: string): boolean {
  const have = process.versions.node.split('.').map(Number);
  const want = min.split('.').map(Number);
  for (let i = 0; i < 3; i++) if (have[i] !== want[i]) return have[i] > want[i];
  return true;
}

/** What the tests of a describe block share: the downstream service they call and the app installed for them. */
export interface AppSuite {
  downstream: Downstream;
  /** The app once npm has run, whether or not it installed; undefined before, or when `unusable`. */
  app: InstalledApp | undefined;
  /** Why the OpenTelemetry line's apps cannot run on this Node (its packages' engines), if they cannot. */
  unusable: Error | undefined;
  /** The installed app, or throws the reason there is none. */
  installed(): InstalledApp;
}

/**
 * Registers, in the describe block it is called in, what its tests share: the downstream service
 * and an app installed with npm from `dependencies` (given the packed tarballs) when `line` can run
 * on this Node. Both are set up before the block's tests and removed after them.
 */
export function appSuite(
  label: string,
  line: OtelLine,
  dependencies: (tarballs: ReadonlyMap<string, string>) => Record<string, string>,
): AppSuite {
  const suite: AppSuite = {
    downstream: undefined as unknown as Downstream,
    app: undefined,
    unusable: undefined,
    installed() {
      if (suite.unusable !== undefined) throw suite.unusable;
      const { app } = suite;
      if (app === undefined) throw new Error('the app was not installed');
      if (!app.ok)
        throw new Error(
          `the app did not install, so it cannot run (the install test shows npm's output): ${app.report.split('\n').find((l) => /npm error/.test(l)) ?? `npm exit ${app.install.code}`}`,
        );
      return app;
    },
  };
  beforeAll(async () => {
    suite.downstream = await startDownstream();
    if (!nodeAtLeast(line.minNode)) {
      suite.unusable = new Error(
        `the OpenTelemetry ${line.name} line needs Node >= ${line.minNode} (its engines); this is Node ${process.versions.node}`,
      );
      return;
    }
    suite.app = await installApp(label, dependencies(await packTarballs()));
  }, 300_000);
  afterAll(async () => {
    await suite.downstream?.close();
    removeApp(suite.app);
  });
  return suite;
}

/** Throws one error that lists every problem, so a failing test shows all of them at once. */
export function expectNone(problems: readonly string[], context: () => string): void {
  if (problems.length > 0) throw new Error(`${problems.map((p) => `- ${p}`).join('\n')}\n\n${context()}`);
}

/** The request path an HTTP SERVER span records, under the old or the stable semantic conventions. */
function pathOf(span: SpanRecord): string {
  for (const key of ['url.path', 'http.target', 'http.url', 'url.full']) {
    const value = span.attributes[key];
    if (typeof value === 'string') return value;
  }
  return '';
}

function describeSpan(s: SpanRecord): string {
  const a = s.attributes;
  const extra = ['meshtrace.propagation.outcome', 'meshtrace.propagation.reason', 'http.route']
    .filter((k) => a[k] !== undefined)
    .map((k) => `${k}=${String(a[k])}`)
    .join(' ');
  return `${s.kind} "${s.name}" trace=${s.traceId} span=${s.spanId} parent=${s.parentSpanId ?? '-'} scope=${s.scope ?? '?'} path=${pathOf(s) || '-'} ${extra}`.trim();
}

/** What a failure message shows: the answer, the spans of the traces involved and what the downstream got. */
function observed(
  app: RunningApp,
  downstream: Downstream,
  id: string,
  answer: Answer,
  traceIds: readonly string[],
): string {
  const traces = new Set(traceIds);
  for (const s of app.spans)
    if (pathOf(s).includes(`/orders/${id}`) || pathOf(s).includes(`/stock/${id}`)) traces.add(s.traceId);
  for (const r of downstream.requestsWith(`/stock/${id}/`))
    for (const tp of r.traceparents) traces.add(tp.split('-')[1] ?? '');
  const spans = app.spans.filter((s) => traces.has(s.traceId));
  const calls = downstream
    .requestsWith(`/stock/${id}/`)
    .map(
      (r) =>
        `  ${r.url}: traceparent ${r.traceparents.length === 0 ? '(none)' : r.traceparents.map((t) => JSON.stringify(t)).join(', ')}`,
    );
  return [
    `answer: ${answer.status} ${answer.body.slice(0, 300)}`,
    // None at all points at the app's SDK set-up (the harness), not at meshtrace.
    `spans the app exported so far, all requests: ${app.spans.length}`,
    `spans of the traces involved (${spans.length}):`,
    ...spans.map((s) => `  ${describeSpan(s)}`),
    'downstream calls:',
    ...(calls.length > 0 ? calls : ['  (none)']),
    `app stderr (last 1500 chars): ${app.stderr().slice(-1500) || '(empty)'}`,
  ].join('\n');
}

function serverSpansOf(spans: readonly SpanRecord[], id: string, traceId?: string): SpanRecord[] {
  return spans.filter((s) => s.kind === 'SERVER' && (pathOf(s).includes(`/orders/${id}`) || s.traceId === traceId));
}

const parse = (tp: string) => {
  const [, traceId = '', parentId = ''] = tp.split('-');
  return { traceId, parentId };
};

/** Checks the downstream calls of order `id` against the trace they should be in; returns what is wrong. */
function checkOutbound(
  app: RunningApp,
  downstream: Downstream,
  id: string,
  ways: readonly Way[],
  traceId: string | undefined,
  forbidden: readonly string[],
): string[] {
  const problems: string[] = [];
  for (const way of ways) {
    const calls = downstream.requestsWith(`/stock/${id}/${way}`);
    if (calls.length !== 1) {
      problems.push(`${way}: expected one call at the downstream, got ${calls.length}`);
      continue;
    }
    const { traceparents } = calls[0];
    if (traceparents.length !== 1)
      problems.push(
        `${way}: expected exactly one traceparent header line, got ${traceparents.length}: ${JSON.stringify(traceparents)}`,
      );
    for (const value of traceparents) {
      if (
        forbidden.some(
          (f) =>
            f.toLowerCase() === value.toLowerCase() || value.toLowerCase().includes(parse(f).traceId.toLowerCase()),
        )
      ) {
        problems.push(`${way}: the downstream received the inbound malformed context: ${JSON.stringify(value)}`);
      }
      const tp = parse(value);
      if (traceId !== undefined && tp.traceId !== traceId)
        problems.push(`${way}: traceparent ${JSON.stringify(value)} is not in trace ${traceId}`);
      if (!app.spans.some((s) => s.traceId === tp.traceId && s.spanId === tp.parentId))
        problems.push(
          `${way}: traceparent ${JSON.stringify(value)} names parent ${tp.parentId}, which is no span of its trace`,
        );
    }
  }
  return problems;
}

/** Ready when the request's SERVER span and the parents of the downstream calls have been exported. */
function exported(downstream: Downstream, id: string, traceId?: string) {
  return (spans: readonly SpanRecord[]) =>
    serverSpansOf(spans, id, traceId).length > 0 &&
    downstream
      .requestsWith(`/stock/${id}/`)
      .every((r) => r.traceparents.every((tp) => spans.some((s) => s.spanId === parse(tp).parentId)));
}

export interface Expect {
  /** Whether meshtrace runs in the app, so its attributes are expected on the SERVER span. */
  readonly meshtrace: boolean;
  /** The outbound calls whose traceparent is checked. */
  readonly ways: readonly Way[];
}

/** Sends a valid traceparent and checks the SERVER span(s), the outbound calls or both; throws with everything wrong. */
export async function continued(
  app: RunningApp,
  downstream: Downstream,
  expect: Expect,
  part: 'server' | 'outbound' | 'both',
): Promise<void> {
  const id = orderId();
  const from = caller();
  const answer = await rawGet(app.port, `/orders/${id}`, [['traceparent', from.traceparent]]);
  await settle(app, exported(downstream, id, from.traceId));
  const problems: string[] = [];
  if (answer.status !== 200) problems.push(`expected status 200, got ${answer.status}`);
  if (part !== 'outbound') {
    const server = serverSpansOf(app.spans, id, from.traceId);
    if (server.length !== 1) problems.push(`expected exactly one SERVER span for the request, got ${server.length}`);
    for (const s of server) {
      const which = `SERVER span ${s.spanId} (${s.scope})`;
      if (s.traceId !== from.traceId)
        problems.push(`${which}: trace ${s.traceId}, expected the caller's ${from.traceId}`);
      if (s.parentSpanId !== from.spanId)
        problems.push(`${which}: parent ${s.parentSpanId ?? '(none)'}, expected the caller's span ${from.spanId}`);
      if (expect.meshtrace) {
        if (s.attributes['meshtrace.propagation.outcome'] !== 'continued')
          problems.push(
            `${which}: meshtrace.propagation.outcome=${String(s.attributes['meshtrace.propagation.outcome'])}, expected continued`,
          );
        if (s.attributes['http.route'] !== '/orders/:id')
          problems.push(`${which}: http.route=${String(s.attributes['http.route'])}, expected /orders/:id`);
      }
    }
  }
  if (part !== 'server') problems.push(...checkOutbound(app, downstream, id, expect.ways, from.traceId, []));
  expectNone(
    problems,
    () => `sent traceparent ${from.traceparent}\n${observed(app, downstream, id, answer, [from.traceId])}`,
  );
}

/** Sends malformed traceparent header lines and checks for a fresh root recorded as malformed that does not pass the bad value on; throws with everything wrong. */
export async function freshRoot(
  app: RunningApp,
  downstream: Downstream,
  expect: Expect,
  lines: readonly string[],
): Promise<void> {
  const id = orderId();
  const answer = await rawGet(
    app.port,
    `/orders/${id}`,
    lines.map((v) => ['traceparent', v] as const),
  );
  const inbound = parse(lines[0]).traceId.toLowerCase();
  await settle(app, exported(downstream, id));
  const problems: string[] = [];
  if (answer.status !== 200) problems.push(`expected status 200, got ${answer.status}`);
  const server = serverSpansOf(app.spans, id, inbound);
  if (server.length !== 1) problems.push(`expected exactly one SERVER span for the request, got ${server.length}`);
  for (const s of server) {
    const which = `SERVER span ${s.spanId} (${s.scope})`;
    if (s.traceId === inbound) problems.push(`${which}: continued the malformed inbound trace ${inbound}`);
    if (s.parentSpanId !== undefined) problems.push(`${which}: has parent ${s.parentSpanId}, expected a root`);
    if (expect.meshtrace) {
      if (s.attributes['meshtrace.propagation.outcome'] !== 'malformed')
        problems.push(
          `${which}: meshtrace.propagation.outcome=${String(s.attributes['meshtrace.propagation.outcome'])}, expected malformed`,
        );
      const reason = s.attributes['meshtrace.propagation.reason'];
      if (typeof reason !== 'string' || reason.length === 0) problems.push(`${which}: no meshtrace.propagation.reason`);
    }
  }
  const root = server.length === 1 ? server[0].traceId : undefined;
  problems.push(...checkOutbound(app, downstream, id, expect.ways, root, lines));
  expectNone(
    problems,
    () =>
      `sent ${lines.map((l) => `traceparent: ${l}`).join(' / ')}\n${observed(app, downstream, id, answer, [inbound])}`,
  );
}

/** A valid traceparent with its hex digits in upper case: W3C trace-context §3.2.2 allows lower case only. */
export function uppercaseTraceparent(): string {
  const from = caller();
  return `00-${from.traceId.toUpperCase()}-${from.spanId.toUpperCase()}-01`;
}

/**
 * The end-to-end suite of one OpenTelemetry line: meshtrace's tarballs installed with npm beside
 * that line's sdk-node and auto-instrumentations, then one app per framework started the way a
 * user starts it, and the same app without meshtrace as the baseline that shows the harness right.
 */
export function describeOtelLine(line: OtelLine): void {
  const label = `OTel ${line.name}`;
  const mesh: Expect = { meshtrace: true, ways: WAYS };
  const baseline: Expect = { meshtrace: false, ways: WAYS };

  describe(label, () => {
    let missing: string[] = [];
    const suite = appSuite(`otel${line.name.replace(/\W/g, '')}`, line, (tarballs) => {
      missing = APP_PACKAGES.filter((name) => !tarballs.has(name));
      const present = APP_PACKAGES.filter((name) => tarballs.has(name));
      return { ...tarballSpecs(tarballs, present), ...line.dependencies, ...FRAMEWORKS };
    });
    const { installed } = suite;

    function appEnv(extra: Readonly<Record<string, string>> = {}): Record<string, string> {
      return { DOWNSTREAM_URL: suite.downstream.url, SDK_TRACE_PACKAGE: line.sdkTracePackage, ...extra };
    }

    test(`${label}: meshtrace's tarballs (${APP_PACKAGES.join(', ')}) install beside sdk-node and auto-instrumentations with a plain npm install`, () => {
      if (suite.unusable !== undefined) throw suite.unusable;
      const problems: string[] = [];
      if (missing.length > 0)
        problems.push(
          `no publishable package in packages/ for ${missing.join(', ')}, so the app was installed without it`,
        );
      if (!suite.app?.ok) problems.push(`npm install failed or reported ERESOLVE`);
      expectNone(problems, () => suite.app?.report ?? '');
    });

    test(`${label}: exactly one @opentelemetry/api is installed in the app's tree`, () => {
      const copies = new InstalledTree(installed().dir).copiesOf('@opentelemetry/api');
      expectNone(copies.length === 1 ? [] : [`expected one @opentelemetry/api, found ${copies.length}`], () =>
        copies.map((c) => `${c.path} ${c.version}: ${c.via}`).join('\n'),
      );
    });

    describe.each(FRAMEWORK_APPS)(`${label} $framework`, ({ framework, file }) => {
      const name = `${label} ${framework}`;
      let withMesh: RunningApp | undefined;
      let without: RunningApp | undefined;
      let failed: unknown;

      beforeAll(async () => {
        try {
          const dir = installed().dir;
          [withMesh, without] = await Promise.all([
            startApp(dir, file, appEnv()),
            startApp(dir, file, appEnv({ MESHTRACE: 'off' })),
          ]);
        } catch (err) {
          failed = err;
        }
      }, 60_000);

      afterAll(async () => {
        await Promise.all([withMesh?.stop(), without?.stop()]);
      });

      const running = (which: RunningApp | undefined): RunningApp => {
        if (failed !== undefined) throw failed;
        return which as RunningApp;
      };

      test(`${name} without meshtrace (harness check): a valid traceparent is continued by one SERVER span and each outbound call carries one traceparent`, async () => {
        await continued(running(without), suite.downstream, baseline, 'both');
      });

      test(`${name} without meshtrace (harness check): an uppercase and a repeated traceparent each start a fresh root that does not reach the downstream`, async () => {
        await freshRoot(running(without), suite.downstream, baseline, [uppercaseTraceparent()]);
        const repeated = caller().traceparent;
        await freshRoot(running(without), suite.downstream, baseline, [repeated, repeated]);
      });

      test(`${name}: a valid traceparent gives exactly one SERVER span, in the caller's trace, with meshtrace's attributes`, async () => {
        await continued(running(withMesh), suite.downstream, mesh, 'server');
      });

      test(`${name}: each outbound call (meshFetch, fetch, http.request, fetch + injectHeaders) carries exactly one traceparent in the caller's trace`, async () => {
        await continued(running(withMesh), suite.downstream, mesh, 'outbound');
      });

      test(`${name}: an uppercase traceparent starts a fresh root recorded as malformed and does not reach the downstream`, async () => {
        await freshRoot(running(withMesh), suite.downstream, mesh, [uppercaseTraceparent()]);
      });

      test(`${name}: a traceparent sent as two header lines starts a fresh root recorded as malformed and does not reach the downstream`, async () => {
        const repeated = caller().traceparent;
        await freshRoot(running(withMesh), suite.downstream, mesh, [repeated, repeated]);
      });
    });

    describe(`${label} setupMeshTracing`, () => {
      let started: RunningApp | undefined;
      let failed: unknown;

      beforeAll(async () => {
        try {
          const dir = installed().dir;
          if (missing.includes('@meshtrace/node'))
            throw new Error('pending: there is no packages/node yet, so @meshtrace/node was not packed');
          // The batch processor's 5 s default delay would outlast the wait for spans.
          started = await startApp(dir, 'express-setup-app.js', appEnv({ OTEL_BSP_SCHEDULE_DELAY: '50' }));
        } catch (err) {
          failed = err;
        }
      }, 60_000);

      afterAll(async () => {
        await started?.stop();
      });

      test(`${label} setupMeshTracing + express: a valid traceparent gives one SERVER span in the caller's trace, and meshFetch and injectHeaders carry it on`, async () => {
        if (failed !== undefined) throw failed;
        // Without auto-instrumentations, plain fetch and http.request carry no context at all.
        await continued(
          started as RunningApp,
          suite.downstream,
          { meshtrace: true, ways: ['meshFetch', 'injectHeaders'] },
          'both',
        );
      });
    });
  });
}
