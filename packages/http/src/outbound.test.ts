import { SpanKind, context, propagation } from '@opentelemetry/api';
import { MeshPropagator, extractRequestContext } from '@meshtrace/core';
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
import http from 'node:http';
import type { IncomingMessage } from 'node:http';

const tracing = setupTestTracing();

/** What the caller's service received: the context every outbound header must come from. */
const INBOUND = {
  traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`,
  tracestate: 'congo=t61rcWkgMzE',
  baggage: 'tenant=acme,region=eu',
};
/**
 * The merged baggage: the context's entries in their order, the caller's value winning for its key (`tenant`), the
 * caller's new keys after.
 */
const MERGED = 'tenant=override,region=eu,caller=1';

let recorder: HeaderRecorder;
let base: string;
beforeAll(async () => {
  recorder = await startHeaderRecorder();
  base = recorder.base;
});
afterAll(async () => {
  await recorder.close();
  await tracing.shutdown();
});
beforeEach(() => tracing.reset());

const wire = (path: string, header: string) => recorder.values(path, header);

/** The trace headers as the wire carried them: each a list, so two values show as two. */
function traceOnWire(path: string): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const name of [
    'traceparent',
    'tracestate',
    'baggage',
    'b3',
    'x-b3-traceid',
    'x-b3-spanid',
    'x-b3-sampled',
    'x-custom',
  ])
    out[name] = wire(path, name);
  return out;
}

type Form = 'plain object' | 'array of pairs' | 'Headers' | 'Request' | 'flat raw array';
function inForm(form: Form, entries: Array<[string, string]>, url: string): unknown {
  switch (form) {
    case 'plain object':
      return Object.fromEntries(entries);
    case 'array of pairs':
      return entries;
    case 'Headers':
      return new Headers(entries);
    case 'Request':
      return new Request(url, { headers: entries });
    case 'flat raw array':
      // Node adds no Host line to raw headers by itself.
      return [['host', new URL(url).host], ...entries].flat();
  }
}

function drain(req: http.ClientRequest): Promise<void> {
  return new Promise((resolve, reject) => {
    req.on('response', (res: IncomingMessage) => {
      res.on('end', resolve);
      res.resume();
    });
    req.on('error', reject);
    req.end();
  });
}

type ClientName = 'meshFetch' | 'meshRequest' | 'fetch + injectHeaders' | 'http.request + injectHeaders';
const CLIENTS: ReadonlyArray<readonly [ClientName, readonly Form[], (url: string, headers: unknown) => Promise<void>]> =
  [
    [
      'meshFetch',
      ['plain object', 'array of pairs', 'Headers', 'Request'],
      async (url, headers) =>
        void (await (
          await (headers instanceof Request
            ? meshFetch(headers)
            : meshFetch(url, { headers: headers as RequestInit['headers'] }))
        ).text()),
    ],
    [
      'meshRequest',
      ['plain object', 'flat raw array'],
      (url, headers) => drain(meshRequest(url, { headers: headers as http.OutgoingHttpHeaders })),
    ],
    [
      'fetch + injectHeaders',
      ['plain object', 'array of pairs', 'Headers'],
      async (url, headers) =>
        void (await (
          await fetch(url, { headers: injectHeaders(headers as Record<string, string>) as RequestInit['headers'] })
        ).text()),
    ],
    [
      'http.request + injectHeaders',
      ['plain object', 'flat raw array'],
      (url, headers) =>
        drain(
          http.request(url, { headers: injectHeaders(headers as Record<string, string>) as http.OutgoingHttpHeaders }),
        ),
    ],
  ];

let calls = 0;
const rows = CLIENTS.flatMap(([client, forms, call]) =>
  forms.flatMap((form) => SPELLINGS.map(([spelling, spell]) => [client, form, spelling, spell, call] as const)),
);

describe("inside a trace, the caller's trace headers are replaced by the context's, on the wire exactly once each", () => {
  test.each(rows)('%s, %s, %s', async (client, form, spelling, spell, call) => {
    const path = `/in-trace/${++calls}`;
    const url = `${base}${path}`;
    const server = await inServerSpan(INBOUND, () => call(url, inForm(form, callerHeaders(spell), url)));
    await new Promise((r) => setImmediate(r));
    const clientSpan = tracing.spans().find((s) => s.kind === SpanKind.CLIENT);
    // meshFetch and meshRequest make a CLIENT span; injectHeaders has none, so the active span is the parent.
    const parent = client.startsWith('mesh') ? clientSpan?.spanContext().spanId : server.spanContext().spanId;
    expect({ client, form, spelling, ...traceOnWire(path) }).toEqual({
      client,
      form,
      spelling,
      traceparent: [`00-${TRACE_ID}-${parent}-01`],
      tracestate: [INBOUND.tracestate],
      baggage: [MERGED],
      b3: [],
      'x-b3-traceid': [],
      'x-b3-spanid': [],
      'x-b3-sampled': [],
      'x-custom': ['kept'],
    });
  });
});

describe('with no active trace, a traceparent the caller set on purpose is left as it is', () => {
  const OWN = { traceparent: `00-${'7'.repeat(32)}-${'8'.repeat(16)}-01`, tracestate: 'mine=1' };
  const keptRows = CLIENTS.flatMap(([client, forms, call]) => forms.map((form) => [client, form, call] as const));
  test.each(keptRows)('%s, %s', async (client, form, call) => {
    const path = `/no-trace/${++calls}`;
    const url = `${base}${path}`;
    const entries: Array<[string, string]> = [
      ['Traceparent', OWN.traceparent],
      ['Tracestate', OWN.tracestate],
      ['Baggage', 'caller=1'],
      ['x-custom', 'kept'],
    ];
    await call(url, inForm(form, entries, url));
    await new Promise((r) => setImmediate(r));
    expect({ client, form, ...traceOnWire(path) }).toEqual({
      client,
      form,
      traceparent: [OWN.traceparent],
      tracestate: [OWN.tracestate],
      baggage: ['caller=1'],
      b3: [],
      'x-b3-traceid': [],
      'x-b3-spanid': [],
      'x-b3-sampled': [],
      'x-custom': ['kept'],
    });
    // The call's own CLIENT span joins the trace the caller named, under the caller's span.
    const clientSpans = tracing.spans().filter((s) => s.kind === SpanKind.CLIENT);
    expect({ client, spans: clientSpans.map((s) => [s.spanContext().traceId, s.parentSpanContext?.spanId]) }).toEqual({
      client,
      spans: client.startsWith('mesh') ? [['7'.repeat(32), '8'.repeat(16)]] : [],
    });
  });

  test('without any trace header of the caller, a fresh root goes out', async () => {
    const path = `/no-trace/${++calls}`;
    await (await meshFetch(`${base}${path}`, { headers: { Baggage: 'caller=1' } })).text();
    const [span] = tracing.spans().filter((s) => s.kind === SpanKind.CLIENT);
    expect(traceOnWire(path)).toMatchObject({
      traceparent: [`00-${span.spanContext().traceId}-${span.spanContext().spanId}-01`],
      baggage: ['caller=1'],
      tracestate: [],
    });
  });
});

describe('B3 written by the propagator: the caller’s B3 headers are replaced, never doubled', () => {
  afterAll(() => {
    propagation.disable();
    propagation.setGlobalPropagator(new MeshPropagator());
  });
  test.each(['single', 'multi'] as const)("b3: '%s'", async (mode) => {
    propagation.disable();
    propagation.setGlobalPropagator(new MeshPropagator({ b3: mode }));
    const path = `/b3/${++calls}`;
    const server = await inServerSpan(
      INBOUND,
      async () =>
        void (await (
          await meshFetch(`${base}${path}`, { headers: Object.fromEntries(callerHeaders((n) => n.toUpperCase())) })
        ).text()),
    );
    const spanId = tracing
      .spans()
      .find((s) => s.kind === SpanKind.CLIENT)!
      .spanContext().spanId;
    const onWire = traceOnWire(path);
    expect(server.spanContext().traceId).toBe(TRACE_ID);
    expect({
      mode,
      b3: onWire.b3,
      traceId: onWire['x-b3-traceid'],
      spanId: onWire['x-b3-spanid'],
      sampled: onWire['x-b3-sampled'],
    }).toEqual(
      mode === 'single'
        ? { mode, b3: [`${TRACE_ID}-${spanId}-1`], traceId: [], spanId: [], sampled: [] }
        : { mode, b3: [], traceId: [TRACE_ID], spanId: [spanId], sampled: ['1'] },
    );
    expect(onWire.traceparent).toEqual([`00-${TRACE_ID}-${spanId}-01`]);
  });
});

describe('the baggage merge rule', () => {
  const cases: Array<[string, string | undefined, string | undefined, string[]]> = [
    [
      "the caller's entry wins for its key; the context's order is kept, the caller's new keys follow",
      'a=1,b=2,c=3',
      'b=caller,d=4',
      ['a=1,b=caller,c=3,d=4'],
    ],
    ['only the context has baggage', 'a=1', undefined, ['a=1']],
    ['only the caller has baggage', undefined, 'd=4', ['d=4']],
    ['properties travel with their entry', 'a=1', 'a=2;ttl=30', ['a=2;ttl=30']],
    ["an invalid member of the caller's is dropped, the rest merged", 'a=1', 'bad member,d=4', ['a=1,d=4']],
    ['nothing at all', undefined, undefined, []],
  ];
  test.each(cases)('%s', async (_name, inContext, fromCaller, wireBaggage) => {
    const path = `/baggage/${++calls}`;
    const { context: ctx } = extractRequestContext({
      traceparent: INBOUND.traceparent,
      ...(inContext === undefined ? {} : { baggage: inContext }),
    });
    await context.with(
      ctx,
      async () =>
        void (await (
          await meshFetch(`${base}${path}`, { headers: fromCaller === undefined ? {} : { baggage: fromCaller } })
        ).text()),
    );
    expect(wire(path, 'baggage')).toEqual(wireBaggage);
  });
});
