import { context, propagation, trace } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import type { TestTracing } from './otel';

/** The caller's trace id in every continued case. */
export const TRACE_ID = '0af7651916cd43dd8448eb211c80319c';
/** The caller's span id (the server span's parent) in every continued case. */
export const PARENT_ID = 'b7ad6b7169203331';
const VALID = `00-${TRACE_ID}-${PARENT_ID}-01`;

/** One row of the header table every adapter and carrier runs. */
export interface HeaderCase {
  readonly name: string;
  /** Inbound headers; an array is sent as several header lines. */
  readonly headers: Readonly<Record<string, string | string[]>>;
  readonly outcome: 'continued' | 'missing' | 'malformed';
  readonly reason?: string;
  /** Outbound trace-flags byte (default: `01` when continued, `03` for a fresh, random, sampled root). */
  readonly flags?: string;
  /** Outbound `tracestate`, or undefined for none. */
  readonly tracestate?: string;
  /** Outbound `baggage`, or undefined for none. */
  readonly baggage?: string;
  /** `<header>:<reason>` drops counted, if any. */
  readonly dropped?: string;
}

const members = (n: number, prefix = 'k') => Array.from({ length: n }, (_, i) => `${prefix}${i}=v${i}`).join(',');
const big = (key: string, bytes: number) => `${key}=${'x'.repeat(bytes - key.length - 1)}`;

/** Inbound header cases with the outcome and the outbound headers each must give. */
export const HEADER_CASES: readonly HeaderCase[] = [
  { name: 'valid', headers: { traceparent: VALID }, outcome: 'continued' },
  {
    name: 'valid, not sampled',
    headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-00` },
    outcome: 'continued',
    flags: '00',
  },
  {
    name: 'valid with the random flag',
    headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-03` },
    outcome: 'continued',
    flags: '03',
  },
  {
    name: 'valid with unknown flags',
    headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-09` },
    outcome: 'continued',
    flags: '01',
  },
  {
    name: 'future version with extra fields',
    headers: { traceparent: `cc-${TRACE_ID}-${PARENT_ID}-01-what-the-future-will-be-like` },
    outcome: 'continued',
  },
  {
    name: 'future version without extra fields',
    headers: { traceparent: `cc-${TRACE_ID}-${PARENT_ID}-01` },
    outcome: 'continued',
  },
  {
    name: 'future version joined by other than -',
    headers: { traceparent: `cc-${TRACE_ID}-${PARENT_ID}-01.extra` },
    outcome: 'malformed',
    reason: 'bad-format',
  },
  {
    name: 'version 00 with extra fields',
    headers: { traceparent: `${VALID}-extra` },
    outcome: 'malformed',
    reason: 'bad-format',
  },
  {
    name: 'uppercase trace id',
    headers: { traceparent: `00-${TRACE_ID.toUpperCase()}-${PARENT_ID}-01` },
    outcome: 'malformed',
    reason: 'bad-trace-id',
  },
  {
    name: 'uppercase version',
    headers: { traceparent: `0A-${TRACE_ID}-${PARENT_ID}-01` },
    outcome: 'malformed',
    reason: 'bad-version',
  },
  {
    name: 'all-zero trace id',
    headers: { traceparent: `00-${'0'.repeat(32)}-${PARENT_ID}-01` },
    outcome: 'malformed',
    reason: 'zero-trace-id',
  },
  {
    name: 'all-zero parent id',
    headers: { traceparent: `00-${TRACE_ID}-${'0'.repeat(16)}-01` },
    outcome: 'malformed',
    reason: 'zero-parent-id',
  },
  {
    name: 'version ff',
    headers: { traceparent: `ff-${TRACE_ID}-${PARENT_ID}-01` },
    outcome: 'malformed',
    reason: 'bad-version',
  },
  {
    name: 'short',
    headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-1` },
    outcome: 'malformed',
    reason: 'bad-format',
  },
  { name: 'long', headers: { traceparent: `${VALID}0` }, outcome: 'malformed', reason: 'bad-format' },
  {
    name: 'non-hex trace id',
    headers: { traceparent: `00-${TRACE_ID.slice(0, 31)}g-${PARENT_ID}-01` },
    outcome: 'malformed',
    reason: 'bad-trace-id',
  },
  {
    name: 'non-hex parent id',
    headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID.slice(0, 15)}z-01` },
    outcome: 'malformed',
    reason: 'bad-parent-id',
  },
  {
    name: 'non-hex flags',
    headers: { traceparent: `00-${TRACE_ID}-${PARENT_ID}-0x` },
    outcome: 'malformed',
    reason: 'bad-flags',
  },
  { name: 'empty', headers: { traceparent: '' }, outcome: 'missing' },
  { name: 'absent', headers: {}, outcome: 'missing' },
  {
    name: 'two traceparent headers',
    headers: { traceparent: [VALID, `00-${'1'.repeat(32)}-${PARENT_ID}-01`] },
    outcome: 'malformed',
    reason: 'multiple',
  },
  {
    name: 'tracestate valid',
    headers: { traceparent: VALID, tracestate: 'congo=t61rcWkgMzE, rojo=00f067aa0ba902b7' },
    outcome: 'continued',
    tracestate: 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7',
  },
  {
    name: 'tracestate multi-tenant and digit-first keys',
    headers: { traceparent: VALID, tracestate: 'fw529a3039@dt=x,1ab=y' },
    outcome: 'continued',
    tracestate: 'fw529a3039@dt=x,1ab=y',
  },
  {
    name: 'tracestate empty members skipped',
    headers: { traceparent: VALID, tracestate: ',, a=1 ,\t,b=2,' },
    outcome: 'continued',
    tracestate: 'a=1,b=2',
  },
  {
    name: 'tracestate invalid key',
    headers: { traceparent: VALID, tracestate: 'Congo=x,rojo=1' },
    outcome: 'continued',
    dropped: 'tracestate:bad-member',
  },
  {
    name: 'tracestate invalid value',
    headers: { traceparent: VALID, tracestate: 'congo=a=b' },
    outcome: 'continued',
    dropped: 'tracestate:bad-member',
  },
  {
    name: 'tracestate 32 members',
    headers: { traceparent: VALID, tracestate: members(32) },
    outcome: 'continued',
    tracestate: members(32),
  },
  {
    name: 'tracestate 33 members',
    headers: { traceparent: VALID, tracestate: members(33) },
    outcome: 'continued',
    dropped: 'tracestate:too-many-members',
  },
  // W3C trace-context-2: only one entry per key; the leftmost is the latest position, a later repeat is dropped alone.
  {
    name: 'tracestate duplicate key',
    headers: { traceparent: VALID, tracestate: 'a=1,b=2,a=3' },
    outcome: 'continued',
    tracestate: 'a=1,b=2',
    dropped: 'tracestate:duplicate-key',
  },
  {
    name: 'tracestate duplicate key across header lines',
    headers: { traceparent: VALID, tracestate: ['a=1,b=2', 'a=3,c=4'] },
    outcome: 'continued',
    tracestate: 'a=1,b=2,c=4',
    dropped: 'tracestate:duplicate-key',
  },
  {
    name: 'tracestate over 512 characters is cut on inject',
    headers: {
      traceparent: VALID,
      tracestate: `a=${'x'.repeat(200)},b=1,c=${'y'.repeat(250)},d=2,e=${'z'.repeat(100)}`,
    },
    outcome: 'continued',
    tracestate: `a=${'x'.repeat(200)},b=1,d=2,e=${'z'.repeat(100)}`,
  },
  { name: 'tracestate without traceparent', headers: { tracestate: 'congo=t61rcWkgMzE' }, outcome: 'missing' },
  {
    name: 'tracestate with malformed traceparent',
    headers: { traceparent: `ff-${TRACE_ID}-${PARENT_ID}-01`, tracestate: 'congo=t61rcWkgMzE' },
    outcome: 'malformed',
    reason: 'bad-version',
  },
  {
    name: 'baggage valid with properties',
    headers: { traceparent: VALID, baggage: 'userId=alice, isProduction=false;prop=1' },
    outcome: 'continued',
    baggage: 'userId=alice,isProduction=false;prop=1',
  },
  {
    name: 'baggage percent-encoded',
    headers: { traceparent: VALID, baggage: 'name=J%C3%BCrgen%20M' },
    outcome: 'continued',
    baggage: 'name=J%C3%BCrgen%20M',
  },
  {
    name: 'baggage broken percent-encoding',
    headers: { traceparent: VALID, baggage: 'a=%E0%A4%A,b=2' },
    outcome: 'continued',
    baggage: 'b=2',
    dropped: 'baggage:bad-member',
  },
  {
    name: 'baggage without traceparent',
    headers: { baggage: 'tenant=acme' },
    outcome: 'missing',
    baggage: 'tenant=acme',
  },
  {
    name: 'baggage at 8192 bytes',
    headers: { traceparent: VALID, baggage: `${big('a', 4096)},${big('b', 4095)}` },
    outcome: 'continued',
    baggage: `${big('a', 4096)},${big('b', 4095)}`,
  },
  {
    name: 'baggage over 8192 bytes',
    headers: { traceparent: VALID, baggage: `${big('a', 4096)},${big('b', 4096)}` },
    outcome: 'continued',
    dropped: 'baggage:too-large',
  },
  {
    name: 'baggage member at 4096 bytes',
    headers: { traceparent: VALID, baggage: `${big('a', 4096)},c=1` },
    outcome: 'continued',
    baggage: `${big('a', 4096)},c=1`,
  },
  {
    name: 'baggage member over 4096 bytes',
    headers: { traceparent: VALID, baggage: `${big('a', 4097)},c=1` },
    outcome: 'continued',
    baggage: 'c=1',
    dropped: 'baggage:member-too-large',
  },
  {
    name: 'baggage 180 members',
    headers: { traceparent: VALID, baggage: members(180) },
    outcome: 'continued',
    baggage: members(180),
  },
  {
    name: 'baggage 181 members',
    headers: { traceparent: VALID, baggage: members(181) },
    outcome: 'continued',
    baggage: members(180),
    dropped: 'baggage:too-many-members',
  },
];

/** What a handler saw: its active span context, what an outbound call would carry, its baggage. */
export interface Observed {
  readonly traceId: string;
  readonly spanId: string;
  readonly outbound: Record<string, string>;
  readonly baggage: Record<string, string>;
}

/** Reads the active context the way a handler's outbound call would. Call it inside the handler. */
export function observe(): Observed {
  const ctx = context.active();
  const sc = trace.getSpanContext(ctx);
  const outbound: Record<string, string> = {};
  propagation.inject(ctx, outbound);
  const baggage: Record<string, string> = {};
  for (const [k, v] of propagation.getBaggage(ctx)?.getAllEntries() ?? []) baggage[k] = v.value;
  return { traceId: sc?.traceId ?? '', spanId: sc?.spanId ?? '', outbound, baggage };
}

function label(c: HeaderCase): string {
  return c.reason ? `${c.outcome}:${c.reason}` : c.outcome;
}

/**
 * Checks one case end to end and returns what is wrong, each line naming the case:
 * the handler's span context, the server span and its parent, what inject writes, the outcome counted.
 * `spans` are the finished spans; `counts` the outcome (and drop) counts added by this one request;
 * `kind` the receiving span's kind (SERVER for HTTP and gRPC, CONSUMER for messages).
 */
export function checkCase(
  c: HeaderCase,
  seen: Observed,
  spans: readonly ReadableSpan[],
  counts: Record<string, number>,
  dropped: Record<string, number> = {},
  kind: number = 1 /* SERVER */,
): string[] {
  const problems: string[] = [];
  const fail = (what: string, got: unknown, want: unknown) => {
    if (JSON.stringify(got) !== JSON.stringify(want))
      problems.push(`[${c.name}] ${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  };
  const continued = c.outcome === 'continued';
  if (continued) fail('handler trace id', seen.traceId, TRACE_ID);
  else if (seen.traceId === TRACE_ID || !/^[0-9a-f]{32}$/.test(seen.traceId))
    problems.push(`[${c.name}] handler trace id: got ${seen.traceId}, want a fresh one`);
  const flags = c.flags ?? (continued ? '01' : '03');
  // An unsampled trace records nothing: there is no span to look at, only what goes out.
  const sampled = (parseInt(flags, 16) & 1) === 1;
  const server = spans.filter((s) => s.spanContext().traceId === seen.traceId && s.kind === kind);
  fail('receiving spans in the trace', server.length, sampled ? 1 : 0);
  const span = server[0];
  if (span) {
    fail('handler span is the server span', seen.spanId, span.spanContext().spanId);
    fail('server span parent', span.parentSpanContext?.spanId, continued ? PARENT_ID : undefined);
    fail('server span outcome attribute', span.attributes['meshtrace.propagation.outcome'], c.outcome);
    fail('server span reason attribute', span.attributes['meshtrace.propagation.reason'], c.reason);
  }
  fail('outbound traceparent', seen.outbound.traceparent, `00-${seen.traceId}-${seen.spanId}-${flags}`);
  fail('outbound tracestate', seen.outbound.tracestate, c.tracestate);
  fail('outbound baggage', seen.outbound.baggage, c.baggage);
  fail('outcome counted', counts, { [label(c)]: 1 });
  fail(
    'drops counted',
    Object.keys(dropped).filter((k) => dropped[k] > 0),
    c.dropped ? [c.dropped] : [],
  );
  return problems;
}

/** The counts added between two snapshots of cumulative counters. */
export function delta(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) if (v - (before[k] ?? 0) !== 0) out[k] = v - (before[k] ?? 0);
  return out;
}

/**
 * Delivers one case through `deliver` (which returns what the receiving handler observed) and checks
 * it end to end with {@link checkCase}, counting only what this one delivery added.
 */
export async function runCase(
  tracing: TestTracing,
  c: HeaderCase,
  deliver: (c: HeaderCase) => Promise<Observed>,
  kind: number = 1,
): Promise<string[]> {
  tracing.reset();
  const before = await tracing.outcomeCounts();
  const droppedBefore = await tracing.droppedCounts();
  const seen = await deliver(c);
  // Let 'finish' listeners end the span before it is looked for.
  await new Promise((r) => setImmediate(r));
  return checkCase(
    c,
    seen,
    tracing.spans(),
    delta(before, await tracing.outcomeCounts()),
    delta(droppedBefore, await tracing.droppedCounts()),
    kind,
  );
}

/** Runs one case against an HTTP server whose handler at `url` answers with {@link observe}'s JSON. */
export function runHttpCase(tracing: TestTracing, c: HeaderCase, url: string): Promise<string[]> {
  return runCase(tracing, c, async () => {
    const headers = new Headers();
    // An array is several header lines, as a proxy that does not fold them would send.
    for (const [k, v] of Object.entries(c.headers))
      for (const one of Array.isArray(v) ? v : [v]) headers.append(k, one);
    return (await (await fetch(url, { headers })).json()) as Observed;
  });
}
