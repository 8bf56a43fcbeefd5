import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind, context, trace } from '@opentelemetry/api';
import type { Span } from '@opentelemetry/api';
import { extractRequestContext } from '@meshtrace/core';
import { PARENT_ID, TRACE_ID } from './cases';
import type { Observed } from './cases';
import type { TestTracing } from './otel';

/** A letter-case style for a caller's own header names, and how it spells one. */
export type Spelling = readonly [name: string, spell: (name: string) => string];

/** The styles every outbound client is tested with: whatever case the caller used, its trace headers are replaced. */
export const SPELLINGS: readonly Spelling[] = [
  [
    'Capitalized (Traceparent, Tracestate, Baggage, X-B3-TraceId, B3)',
    (n) => n.replace(/(^|-)([a-z])/g, (_m, dash: string, c: string) => dash + c.toUpperCase()),
  ],
  ['UPPER CASE (TRACEPARENT, TRACESTATE, BAGGAGE, X-B3-TRACEID, B3)', (n) => n.toUpperCase()],
  ['lower case, as the context writes them', (n) => n],
];

/** The caller's baggage in {@link callerHeaders}: `tenant` overrides the context's, `caller` is new. */
export const CALLER_BAGGAGE = 'tenant=override,caller=1';

/**
 * The header entries of a caller that copied another trace's state (W3C and both B3 forms) and added
 * baggage of its own, spelled one way, beside an unrelated `x-custom: kept`.
 */
export function callerHeaders(spell: (name: string) => string): Array<[string, string]> {
  return [
    [spell('traceparent'), `00-${'1'.repeat(32)}-${'2'.repeat(16)}-01`],
    [spell('tracestate'), 'stale=1'],
    [spell('baggage'), CALLER_BAGGAGE],
    [spell('b3'), `${'3'.repeat(32)}-${'4'.repeat(16)}-1`],
    [spell('x-b3-traceid'), '5'.repeat(32)],
    [spell('x-b3-spanid'), '6'.repeat(16)],
    ['x-custom', 'kept'],
  ];
}

/**
 * Runs `fn` as a request handler would: inside a SERVER span continuing the `inbound` request headers.
 * Resolves with that span once `fn` has settled and the span ended.
 */
export async function inServerSpan(
  inbound: Readonly<Record<string, string>>,
  fn: () => Promise<unknown>,
): Promise<Span> {
  const { context: ctx } = extractRequestContext(inbound);
  const span = trace.getTracer('test').startSpan('GET /front', { kind: SpanKind.SERVER }, ctx);
  try {
    await context.with(trace.setSpan(ctx, span), fn);
    return span;
  } finally {
    span.end();
  }
}

/** An HTTP server on 127.0.0.1 answering `ok`, that keeps the raw header lines of each request by path. */
export interface HeaderRecorder {
  readonly base: string;
  /**
   * Every value of `header` the request to `path` carried, whatever letter case its lines used: a duplicate shows as
   * two.
   */
  values(path: string, header: string): string[];
  close(): Promise<void>;
}

/** Starts a {@link HeaderRecorder}: what a client put on the wire, line by line. */
export async function startHeaderRecorder(): Promise<HeaderRecorder> {
  const received = new Map<string, string[]>();
  const server = createServer((req, res) => {
    received.set(req.url ?? '', req.rawHeaders);
    res.end('ok');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    values(path, header) {
      const raw = received.get(path) ?? [];
      const values: string[] = [];
      for (let i = 0; i < raw.length; i += 2) if (raw[i].toLowerCase() === header) values.push(raw[i + 1]);
      return values;
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * The options every adapter's route-policy table runs under: loopback peers trusted, only `tenant` baggage kept
 * otherwise.
 */
export const TRUST_SERVICE = Object.freeze({
  inbound: Object.freeze({ trustedPeers: ['127.0.0.1', '::ffff:127.0.0.1'] }),
  baggageAllowList: ['tenant'],
});

/**
 * One row of a route-policy table: name, method, path, the outcome counted (`outcome:reason`), whether the caller's
 * trace is continued.
 */
export type TrustRow = readonly [name: string, method: string, path: string, outcome: string, continued: boolean];

/**
 * The rows every adapter's route-policy table shares, served by each at these paths: `/internal`
 * (no route policy), `/fn` (a route policy function: `continue` when the query says `trust=yes`, else
 * `ignore`) and `/mesh-only` (a declarative route policy trusting only `10.0.0.0/8`).
 */
export const SHARED_TRUST_ROWS: readonly TrustRow[] = [
  ['a route without a policy: the service policy trusts the loopback peer', 'GET', '/internal', 'continued', true],
  ['a route policy function, answering continue', 'GET', '/fn?trust=yes', 'continued', true],
  ['a route policy function, answering ignore', 'GET', '/fn', 'ignored:policy', false],
  ['a declarative route policy, the loopback peer not in it', 'GET', '/mesh-only', 'restarted:untrusted-peer', false],
];

/**
 * Requests `url` with a valid `traceparent` and `baggage: tenant=acme,session=secret`, the handler answering
 * with {@link observe}'s JSON, and returns what the request gave beside what a row of a trust table wants:
 * the outcome counted (`outcome` or `outcome:reason`), exactly one SERVER span that the handler runs in,
 * the caller's trace continued or not, a link to the caller when restarted, and only the allow-listed
 * `tenant` baggage when not continued. Compare the two with `toEqual`.
 */
export async function runTrustRow(
  tracing: TestTracing,
  name: string,
  url: string,
  method: string,
  outcome: string,
  continued: boolean,
): Promise<{ got: object; want: object }> {
  tracing.reset();
  const before = await tracing.outcomeCounts();
  const seen = (await (
    await fetch(url, {
      method,
      headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`, baggage: 'tenant=acme,session=secret' },
    })
  ).json()) as Observed;
  // Let 'finish' listeners end the span before it is looked for.
  await new Promise((r) => setTimeout(r, 10));
  const after = await tracing.outcomeCounts();
  const servers = tracing.spans().filter((s) => s.kind === 1 /* SERVER */);
  const [label, reason] = outcome.split(':');
  return {
    got: {
      name,
      counted: Object.keys(after).filter((k) => after[k] !== (before[k] ?? 0)),
      serverSpans: servers.length,
      handlerInSpan: servers[0]?.spanContext().spanId === seen.spanId,
      inCallersTrace: seen.traceId === TRACE_ID,
      attributes: [
        servers[0]?.attributes['meshtrace.propagation.outcome'],
        servers[0]?.attributes['meshtrace.propagation.reason'],
      ],
      links: servers[0]?.links.map((l) => l.context.spanId),
      baggage: seen.baggage,
    },
    want: {
      name,
      counted: [outcome],
      serverSpans: 1,
      handlerInSpan: true,
      inCallersTrace: continued,
      attributes: [label, reason],
      // restart keeps a link to the caller's context; restart and ignore keep only the allow-listed baggage.
      links: label === 'restarted' ? [PARENT_ID] : [],
      baggage: continued ? { tenant: 'acme', session: 'secret' } : { tenant: 'acme' },
    },
  };
}
