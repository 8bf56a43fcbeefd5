import { ATTR } from '../model';
import type { AttributeValue, Span, SpanKindName } from '../model';
import { rootsIn, tracesCarrying } from '../evidence';
import { badAnswer, baseUrl, getJson, otlpSpans, padId } from './source';
import type { JsonAnswer, SpanSource, TimeWindow } from './source';

/**
 * The requests waiting for each Jaeger, so that only one is in flight at a time. Jaeger 1.75's memory storage
 * hands each reader the stored trace itself, and the query service adjusts it in place: two reads of one trace at
 * once can corrupt it (a loaded test run read spans whose service name had become another resource attribute's
 * value). One request at a time keeps the probe from doing that to the Jaeger it reads.
 */
const lanes = new Map<string, Promise<void>>();

/** Runs `work` once every request to `base` made before it has settled. */
function inTurn<T>(base: string, work: () => Promise<T>): Promise<T> {
  const before = lanes.get(base) ?? Promise.resolve();
  const run = before.then(work);
  const done = run.then(
    () => undefined,
    () => undefined,
  );
  lanes.set(base, done);
  void done.then(() => {
    if (lanes.get(base) === done) lanes.delete(base);
  });
  return run;
}

/** Options of {@link jaegerSource}. */
export interface JaegerSourceOptions {
  /** Jaeger's query service, such as `http://jaeger:16686`. Required. */
  endpoint: string;
  /** How long one request may take. Default 5000 ms. */
  timeoutMs?: number;
}

/**
 * Reads spans from Jaeger's query service: API v3 (`/api/v3/traces/{id}`, OTLP JSON in `result`) and
 * its search; a Jaeger without API v3 is read over v1 (`/api/traces/{id}`, Jaeger's own model, and a
 * search per service). New roots around a probe, for suspects, come from v1's search per service.
 */
export function jaegerSource(options: JaegerSourceOptions): SpanSource {
  const base = baseUrl(options.endpoint, 'endpoint');
  const timeoutMs = options.timeoutMs ?? 5000;
  // Once one API has answered with a trace, only that one is asked.
  let api: 'v3' | 'v1' | undefined;

  const v3 = async (traceId: string): Promise<Span[] | undefined> => {
    const url = `${base}/api/v3/traces/${traceId}`;
    const answer = await inTurn(base, () => getJson(url, timeoutMs));
    if (answer.status === 404) return isGatewayError(answer) ? [] : undefined;
    if (answer.status !== 200) throw badAnswer(url, answer);
    return otlpSpans(url, resultOf(url, answer));
  };
  const v1 = async (traceId: string): Promise<Span[] | undefined> => {
    const url = `${base}/api/traces/${traceId}`;
    const answer = await inTurn(base, () => getJson(url, timeoutMs));
    if (answer.status === 404) return undefined;
    if (answer.status !== 200) throw badAnswer(url, answer);
    try {
      return spansFromJaegerModel(answer.body);
    } catch (err) {
      throw new Error(`GET ${url} answered 200 with a body that is not Jaeger's JSON model: ${(err as Error).message}`);
    }
  };

  return {
    description: `Jaeger at ${base}`,
    async trace(traceId) {
      if (api !== 'v1') {
        const spans = await v3(traceId);
        // A 404 in API v3's error shape is "no such trace (yet)"; any other 404 means there is no API v3.
        if (spans !== undefined) {
          if (spans.length > 0) api = 'v3';
          return spans;
        }
        if (api === 'v3') return [];
      }
      const spans = await v1(traceId);
      if (spans !== undefined && spans.length > 0) api = 'v1';
      return spans ?? [];
    },
    async probeTraces(probeId, window) {
      const found = api === 'v1' ? undefined : await search(base, timeoutMs, { [ATTR.probe]: probeId }, window);
      // Without API v3, v1's search, which needs a service name: each service's traces of the window.
      return tracesCarrying(found ?? (await searchV1(base, timeoutMs, window)), probeId);
    },
    // v1's search, which every Jaeger serves: the roots of each service's traces in the window.
    recentRoots: async (window) => rootsIn(await searchV1(base, timeoutMs, window), window),
    close: async () => undefined,
  };
}

/** How many traces one search returns: newest first, so the probe's own are among them. */
const SEARCH_DEPTH = 20;

/**
 * API v3 `FindTraces` over HTTP: every span of the traces with a span having `attributes`; undefined without API v3.
 */
async function search(
  base: string,
  timeoutMs: number,
  attributes: Record<string, string>,
  window: TimeWindow,
): Promise<Span[] | undefined> {
  const min = new Date(window.startMs).toISOString();
  const max = new Date(window.endMs).toISOString();
  // Current Jaeger reads the camelCase names and takes attributes as a JSON object; older v2 releases (Jaeger
  // 1.75 / 2.x) read the snake_case ones, take the depth as `num_traces` (500 "search depth must be greater than 0"
  // without it) and ignore the attributes, so the traces are filtered here (tracesCarrying).
  const query = new URLSearchParams({
    'query.attributes': JSON.stringify(attributes),
    'query.startTimeMin': min,
    'query.startTimeMax': max,
    'query.start_time_min': min,
    'query.start_time_max': max,
    'query.searchDepth': String(SEARCH_DEPTH),
    'query.num_traces': String(SEARCH_DEPTH),
  });
  const url = `${base}/api/v3/traces?${query}`;
  const answer = await inTurn(base, () => getJson(url, timeoutMs));
  if (answer.status === 404) return isGatewayError(answer) ? [] : undefined;
  if (answer.status !== 200) throw badAnswer(url, answer);
  return otlpSpans(url, resultOf(url, answer));
}

/**
 * API v1 search (`/api/traces?service=`, times in microseconds): the traces of the window of every service
 * `/api/services` lists, each once; v1 has no search without a service name.
 */
async function searchV1(base: string, timeoutMs: number, window: TimeWindow): Promise<Span[]> {
  const listUrl = `${base}/api/services`;
  const list = await inTurn(base, () => getJson(listUrl, timeoutMs));
  const services = (list.body as { data?: unknown } | undefined)?.data;
  if (list.status !== 200 || !(services === null || Array.isArray(services))) throw badAnswer(listUrl, list);
  const spans = new Map<string, Span>();
  for (const service of (services ?? []).filter((x): x is string => typeof x === 'string')) {
    const query = new URLSearchParams({
      service,
      start: String(Math.floor(window.startMs * 1000)),
      end: String(Math.ceil(window.endMs * 1000)),
      limit: String(SEARCH_DEPTH),
    });
    const url = `${base}/api/traces?${query}`;
    const answer = await inTurn(base, () => getJson(url, timeoutMs));
    if (answer.status !== 200) throw badAnswer(url, answer);
    try {
      for (const span of spansFromJaegerModel(answer.body)) spans.set(`${span.traceId}/${span.spanId}`, span);
    } catch (err) {
      throw new Error(`GET ${url} answered 200 with a body that is not Jaeger's JSON model: ${(err as Error).message}`);
    }
  }
  return [...spans.values()];
}

/** API v3 wraps its answers as grpc-gateway does: `{result: TracesData}`, errors as `{error: {httpCode, message}}`. */
function resultOf(url: string, answer: JsonAnswer): unknown {
  const result = (answer.body as { result?: unknown } | undefined)?.result;
  if (typeof result !== 'object' || result === null)
    throw new Error(`GET ${url} answered 200 without the "result" object of Jaeger's API v3`);
  return result;
}

function isGatewayError(answer: JsonAnswer): boolean {
  return typeof (answer.body as { error?: unknown } | undefined)?.error === 'object';
}

interface JaegerTag {
  key: string;
  type?: string;
  value: unknown;
}

interface JaegerSpan {
  traceID: string;
  spanID: string;
  operationName: string;
  references?: Array<{ refType: string; traceID: string; spanID: string }>;
  /** Microseconds since the epoch. */
  startTime: number;
  /** Microseconds. */
  duration: number;
  tags?: JaegerTag[];
  processID: string;
}

interface JaegerTrace {
  spans: JaegerSpan[];
  processes: Record<string, { serviceName: string; tags?: JaegerTag[] }>;
}

const KINDS: Readonly<Record<string, SpanKindName>> = {
  server: 'server',
  client: 'client',
  producer: 'producer',
  consumer: 'consumer',
  internal: 'internal',
};
// Tags Jaeger makes from OTLP fields rather than from attributes (OpenTelemetry's Jaeger translation).
const FIELD_TAGS = new Set(['span.kind', 'otel.status_code', 'otel.status_description', 'error']);

/**
 * The spans of Jaeger's v1 JSON model (`{data: [{spans, processes}]}`, times in microseconds),
 * as the doctor's {@link Span}; throws on a body of another shape.
 */
export function spansFromJaegerModel(body: unknown): Span[] {
  const data = (body as { data?: unknown } | undefined)?.data;
  if (!Array.isArray(data)) throw new Error('the answer is not Jaeger\'s JSON model: it has no "data" list');
  return (data as JaegerTrace[]).flatMap((trace) => {
    if (!Array.isArray(trace?.spans) || typeof trace.processes !== 'object' || trace.processes === null)
      throw new Error('a trace in Jaeger\'s answer has no "spans" list or "processes" map');
    return trace.spans.map((s) => jaegerSpan(s, trace.processes));
  });
}

function jaegerSpan(s: JaegerSpan, processes: JaegerTrace['processes']): Span {
  const tags = new Map((s.tags ?? []).map((t) => [t.key, t.value]));
  const process = processes[s.processID];
  const parent = s.references?.find((r) => r.refType === 'CHILD_OF' && padId(r.traceID, 32) === padId(s.traceID, 32));
  const statusCode = String(tags.get('otel.status_code') ?? '').toLowerCase();
  const message = tags.get('otel.status_description');
  const attributes: Record<string, AttributeValue> = {};
  for (const t of s.tags ?? []) if (!FIELD_TAGS.has(t.key)) attributes[t.key] = tagValue(t);
  const resource: Record<string, AttributeValue> = { 'service.name': process?.serviceName ?? 'unknown' };
  for (const t of process?.tags ?? []) resource[t.key] = tagValue(t);
  return {
    traceId: padId(s.traceID, 32),
    spanId: padId(s.spanID, 16),
    parentSpanId: parent === undefined ? undefined : padId(parent.spanID, 16),
    name: s.operationName,
    kind: KINDS[String(tags.get('span.kind'))] ?? 'unspecified',
    service: process?.serviceName ?? 'unknown',
    startMs: s.startTime / 1000,
    endMs: (s.startTime + s.duration) / 1000,
    attributes,
    resource,
    status:
      statusCode === 'error' || tags.get('error') === true
        ? { code: 'error', ...(typeof message === 'string' ? { message } : {}) }
        : { code: statusCode === 'ok' ? 'ok' : 'unset' },
  };
}

/**
 * A tag's value; OpenTelemetry's Jaeger translation writes array attributes as JSON text, which is read back as the
 * array.
 */
function tagValue(tag: JaegerTag): AttributeValue {
  const v = tag.value;
  if (typeof v === 'string' && v.startsWith('[')) {
    try {
      const parsed: unknown = JSON.parse(v);
      if (Array.isArray(parsed) && parsed.every((x) => ['string', 'number', 'boolean'].includes(typeof x)))
        return parsed as Array<string | number | boolean>;
    } catch {
      // Plain text that starts with a bracket.
    }
  }
  return typeof v === 'number' || typeof v === 'boolean' ? v : String(v);
}
