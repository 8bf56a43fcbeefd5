import { DiagLogLevel, SpanKind, diag } from '@opentelemetry/api';
import { HttpInstrumentation } from '@opentelemetry/instrumentation-http';
import { UndiciInstrumentation } from '@opentelemetry/instrumentation-undici';
import { warner } from '@meshtrace/core/adapter';
import {
  PARENT_ID,
  SPELLINGS,
  TRACE_ID,
  callerHeaders,
  inServerSpan,
  setupTestTracing,
  startHeaderRecorder,
} from '@meshtrace/testkit';
import type { HeaderRecorder } from '@meshtrace/testkit';
import { injectHeaders, meshFetch, meshRequest } from '@meshtrace/http';
import { channel } from 'node:diagnostics_channel';
// The module objects, so `.request` is whatever instrumentation-http put there last.
import http from 'node:http';
import type { ClientRequest, IncomingMessage } from 'node:http';
import https from 'node:https';

const tracing = setupTestTracing();
type FinishedSpan = ReturnType<typeof tracing.spans>[number];

const warnings: string[] = [];
const ignore = () => undefined;
diag.setLogger(
  { error: ignore, warn: (message: string) => warnings.push(message), info: ignore, debug: ignore, verbose: ignore },
  DiagLogLevel.WARN,
);

const INBOUND = {
  traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`,
  tracestate: 'congo=t61rcWkgMzE',
  baggage: 'tenant=acme',
};
const UNDICI_SCOPE = '@opentelemetry/instrumentation-undici';
const HTTP_SCOPE = '@opentelemetry/instrumentation-http';

// Constructed enabled, as an SDK does, then switched per case: instrumentation-undici skips every request
// while its config says `enabled: false`, even once enable() has subscribed it.
const undici = new UndiciInstrumentation();
const httpInstrumentation = new HttpInstrumentation();
undici.setTracerProvider(tracing.provider);
httpInstrumentation.setTracerProvider(tracing.provider);
undici.disable();
httpInstrumentation.disable();

/** What each request carried on the wire, line by line: duplicates stay visible. */
let recorder: HeaderRecorder;
let base: string;

beforeAll(async () => {
  recorder = await startHeaderRecorder();
  base = recorder.base;
});

afterAll(async () => {
  // http and diagnostics_channel are the process's own: nothing may stay patched or subscribed for other test files.
  undici.disable();
  httpInstrumentation.disable();
  await recorder.close();
  await tracing.shutdown();
});

function wrapped(fn: unknown): boolean {
  return (fn as { __wrapped?: unknown }).__wrapped === true;
}

/** Turns the real instrumentations on or off and proves they took, so no case passes vacuously. */
function instrument(withUndici: boolean, withHttp: boolean): void {
  if (withUndici) undici.enable();
  else undici.disable();
  if (withHttp) {
    httpInstrumentation.enable();
    // Jest's module registry does not go through Module.prototype.require, so require-in-the-middle never
    // sees http loaded; process.getBuiltinModule, which it hooks as well, hands it the real modules.
    process.getBuiltinModule('node:http');
    process.getBuiltinModule('node:https');
  } else {
    httpInstrumentation.disable();
  }
  expect({
    fetchSubscribed: channel('undici:request:create').hasSubscribers,
    httpWrapped: wrapped(http.request),
    httpsWrapped: wrapped(https.request),
  }).toEqual({ fetchSubscribed: withUndici, httpWrapped: withHttp, httpsWrapped: withHttp });
}

function drain(send: (callback: (res: IncomingMessage) => void) => ClientRequest): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = send((res) => {
      res.on('end', resolve);
      res.on('error', reject);
      res.resume();
    });
    req.on('error', reject);
    req.end();
  });
}

/** Waits until Node has run what is queued behind a response: the instrumentations end their spans there. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 10));

type ClientName = 'meshFetch' | 'fetch + injectHeaders' | 'meshRequest' | 'http.request + injectHeaders';
const CLIENTS: ReadonlyArray<readonly [ClientName, (url: string) => Promise<void>]> = [
  ['meshFetch', async (url) => void (await (await meshFetch(url)).text())],
  [
    'fetch + injectHeaders',
    async (url) => void (await (await fetch(url, { headers: injectHeaders({ accept: 'text/plain' }) })).text()),
  ],
  ['meshRequest', (url) => drain((callback) => meshRequest(url, callback))],
  [
    'http.request + injectHeaders',
    (url) => drain((callback) => http.request(url, { headers: injectHeaders({ accept: 'text/plain' }) }, callback)),
  ],
];

const ACTIVE = 'active span';
const NOBODY = 'nobody';

/** Who makes the CLIENT span and the traceparent: an instrumentation scope name, {@link ACTIVE} or {@link NOBODY}. */
function expectedMaker(client: ClientName, withUndici: boolean, withHttp: boolean): string {
  switch (client) {
    case 'meshFetch':
      return withUndici ? UNDICI_SCOPE : '@meshtrace/http';
    case 'fetch + injectHeaders':
      return withUndici ? UNDICI_SCOPE : ACTIVE;
    case 'meshRequest':
      return withHttp ? HTTP_SCOPE : '@meshtrace/http';
    case 'http.request + injectHeaders':
      // injectHeaders leaves the fields to instrumentation-undici: it cannot know these headers go to http.request.
      return withHttp ? HTTP_SCOPE : withUndici ? NOBODY : ACTIVE;
  }
}

const COMBINATIONS: ReadonlyArray<readonly [string, boolean, boolean]> = [
  ['none', false, false],
  ['undici only', true, false],
  ['http only', false, true],
  ['both', true, true],
  ['none again, after disable()', false, false],
];

let calls = 0;

describe.each(COMBINATIONS)('instrumentations: %s', (combination, withUndici, withHttp) => {
  beforeAll(() => instrument(withUndici, withHttp));
  beforeEach(() => tracing.reset());

  const cases = CLIENTS.map(([client, call]) => {
    const maker = expectedMaker(client, withUndici, withHttp);
    const expectation =
      maker === NOBODY
        ? 'no traceparent, left to the fetch instrumentation (warned)'
        : maker === ACTIVE
          ? 'one traceparent, no CLIENT span, the active span its parent'
          : `one traceparent, from the one CLIENT span, by ${maker}`;
    return [client, expectation, maker, call] as const;
  });
  test.each(cases)('%s: %s', async (client, _expectation, maker, call) => {
    const name = `${combination} / ${client}`;
    const path = `/call/${++calls}`;
    const parent = await inServerSpan(INBOUND, () => call(`${base}${path}`));
    await settle();

    const clientSpans = tracing.spans().filter((s) => s.kind === SpanKind.CLIENT);
    const traceparents = recorder.values(path, 'traceparent');
    const [, traceId, parentId] = (traceparents[0] ?? '').split('-');
    const span: FinishedSpan | undefined = clientSpans[0];

    expect({
      name,
      traceparents: traceparents.length,
      clientSpans: clientSpans.map((s) => s.instrumentationScope.name),
    }).toEqual({
      name,
      traceparents: maker === NOBODY ? 0 : 1,
      clientSpans: maker.startsWith('@') ? [maker] : [],
    });
    if (maker === NOBODY) return;
    expect({ name, traceId, parentId, clientParent: span?.parentSpanContext?.spanId }).toEqual({
      name,
      traceId: TRACE_ID,
      parentId: (span ?? parent).spanContext().spanId,
      clientParent: span === undefined ? undefined : parent.spanContext().spanId,
    });
  });
});

describe('caller headers that already carry a trace context, beside the instrumentations', () => {
  const STALE = `00-${'1'.repeat(32)}-${'2'.repeat(16)}-01`;
  beforeAll(() => instrument(true, true));
  beforeEach(() => tracing.reset());

  test.each<readonly [string, (url: string) => Promise<void>]>([
    [
      'meshFetch, plain object with Traceparent',
      async (url) =>
        void (await (await meshFetch(url, { headers: { Traceparent: STALE, accept: 'text/plain' } })).text()),
    ],
    [
      'meshFetch, Headers',
      async (url) => void (await (await meshFetch(url, { headers: new Headers({ traceparent: STALE }) })).text()),
    ],
    [
      'meshFetch, Request',
      async (url) => void (await (await meshFetch(new Request(url, { headers: { traceparent: STALE } }))).text()),
    ],
    [
      'fetch + injectHeaders with TraceParent',
      async (url) => void (await (await fetch(url, { headers: injectHeaders({ TraceParent: STALE }) })).text()),
    ],
    [
      'meshRequest, options with Traceparent',
      (url) => drain((callback) => meshRequest(url, { headers: { Traceparent: STALE } }, callback)),
    ],
    [
      'http.request + injectHeaders with Traceparent',
      (url) => drain((callback) => http.request(url, { headers: injectHeaders({ Traceparent: STALE }) }, callback)),
    ],
  ])('%s: the stale value is dropped, the instrumentation’s is the only one', async (name, call) => {
    const path = `/call/${++calls}`;
    const parent = await inServerSpan(INBOUND, () => call(`${base}${path}`));
    await settle();
    const clientSpans = tracing.spans().filter((s) => s.kind === SpanKind.CLIENT);
    const traceparents = recorder.values(path, 'traceparent');
    expect({ name, traceparents, clientSpans: clientSpans.length }).toEqual({
      name,
      traceparents: [`00-${TRACE_ID}-${clientSpans[0]?.spanContext().spanId}-01`],
      clientSpans: 1,
    });
    expect({ name, clientParent: clientSpans[0]?.parentSpanContext?.spanId }).toEqual({
      name,
      clientParent: parent.spanContext().spanId,
    });
  });
});

describe('beside the instrumentations, the caller’s trace headers in any letter case and form give way to the instrumentation’s, one each on the wire', () => {
  // meshFetch and meshRequest run the call in a context holding the merged baggage; injectHeaders cannot, so the
  // instrumentation writes the context's baggage and the caller's header gives way to it.
  const CALLS: ReadonlyArray<
    readonly [string, (url: string, entries: Array<[string, string]>) => Promise<void>, string]
  > = [
    [
      'meshFetch, array of pairs',
      async (url, entries) => void (await (await meshFetch(url, { headers: entries })).text()),
      'tenant=override,caller=1',
    ],
    [
      'meshFetch, Headers',
      async (url, entries) => void (await (await meshFetch(url, { headers: new Headers(entries) })).text()),
      'tenant=override,caller=1',
    ],
    [
      'meshRequest, plain object',
      (url, entries) => drain((callback) => meshRequest(url, { headers: Object.fromEntries(entries) }, callback)),
      'tenant=override,caller=1',
    ],
    [
      'meshRequest, flat raw array',
      (url, entries) =>
        drain((callback) => meshRequest(url, { headers: [['host', new URL(url).host], ...entries].flat() }, callback)),
      'tenant=override,caller=1',
    ],
    [
      'fetch + injectHeaders, Headers',
      async (url, entries) => void (await (await fetch(url, { headers: injectHeaders(new Headers(entries)) })).text()),
      INBOUND.baggage,
    ],
    [
      'http.request + injectHeaders, plain object',
      (url, entries) =>
        drain((callback) => http.request(url, { headers: injectHeaders(Object.fromEntries(entries)) }, callback)),
      INBOUND.baggage,
    ],
  ];
  beforeAll(() => instrument(true, true));
  beforeEach(() => tracing.reset());

  test.each(
    CALLS.flatMap(([name, call, baggage]) =>
      SPELLINGS.slice(0, 2).map(([spelling, spell]) => [name, spelling, spell, call, baggage] as const),
    ),
  )('%s, %s', async (name, spelling, spell, call, baggage) => {
    const path = `/call/${++calls}`;
    await inServerSpan(INBOUND, () => call(`${base}${path}`, callerHeaders(spell)));
    await settle();
    const [clientSpan] = tracing.spans().filter((s) => s.kind === SpanKind.CLIENT);
    expect({
      name,
      spelling,
      traceparent: recorder.values(path, 'traceparent'),
      tracestate: recorder.values(path, 'tracestate'),
      baggage: recorder.values(path, 'baggage'),
      b3: [
        ...recorder.values(path, 'b3'),
        ...recorder.values(path, 'x-b3-traceid'),
        ...recorder.values(path, 'x-b3-spanid'),
      ],
    }).toEqual({
      name,
      spelling,
      traceparent: [`00-${TRACE_ID}-${clientSpan?.spanContext().spanId}-01`],
      tracestate: [INBOUND.tracestate],
      baggage: [baggage],
      b3: [],
    });
  });

  test('with no active trace, meshFetch runs the call in the trace the caller’s own traceparent names: the instrumentation continues it', async () => {
    const path = `/call/${++calls}`;
    await (
      await meshFetch(`${base}${path}`, {
        headers: { Traceparent: `00-${'7'.repeat(32)}-${'8'.repeat(16)}-01`, tracestate: 'mine=1' },
      })
    ).text();
    await settle();
    const [clientSpan] = tracing.spans().filter((s) => s.kind === SpanKind.CLIENT);
    expect([
      clientSpan?.instrumentationScope.name,
      clientSpan?.parentSpanContext?.spanId,
      recorder.values(path, 'traceparent'),
      recorder.values(path, 'tracestate'),
    ]).toEqual([
      UNDICI_SCOPE,
      '8'.repeat(16),
      [`00-${'7'.repeat(32)}-${clientSpan?.spanContext().spanId}-01`],
      ['mine=1'],
    ]);
  });
});

describe('injectHeaders warns when it leaves http.request clients without trace headers', () => {
  const SAID = /injectHeaders\(\) leaves the trace headers to it/;
  test.each<readonly [string, number, boolean, boolean]>([
    ['undici only', 1, true, false],
    ['both', 0, true, true],
    ['http only', 0, false, true],
    ['none', 0, false, false],
  ])('%s: %i warning(s) for three calls', async (name, expected, withUndici, withHttp) => {
    instrument(withUndici, withHttp);
    warner.reset();
    warnings.length = 0;
    await inServerSpan(INBOUND, async () => {
      for (let i = 0; i < 3; i++) injectHeaders({ accept: 'text/plain' });
    });
    const said = warnings.filter((w) => SAID.test(w));
    expect({ name, warnings: said.length }).toEqual({ name, warnings: expected });
    if (expected > 0) expect(said[0]).toMatch(/meshRequest.*@opentelemetry\/instrumentation-http/);
  });
});
