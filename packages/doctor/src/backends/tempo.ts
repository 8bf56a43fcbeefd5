import { ATTR } from '../model';
import type { Span } from '../model';
import { tracesCarrying } from '../evidence';
import { badAnswer, baseUrl, getJson, otlpSpans, padId } from './source';
import type { SpanSource } from './source';

/** Options of {@link tempoSource}. */
export interface TempoSourceOptions {
  /** Tempo's HTTP API (the query frontend), such as `http://tempo:3200`. Required. */
  endpoint: string;
  /** How long one request may take. Default 5000 ms. */
  timeoutMs?: number;
}

/** The trace-by-id endpoints, newest first, and where each keeps the OTLP JSON. */
const TRACE_APIS = [
  {
    path: 'api/v2/traces',
    otlp: (body: unknown) => (body as { trace?: unknown } | undefined)?.trace ?? { resourceSpans: [] },
  },
  { path: 'api/traces', otlp: (body: unknown) => body },
] as const;

/**
 * Reads spans from Grafana Tempo: `/api/v2/traces/{id}` (else `/api/traces/{id}`) and a TraceQL search for the probe
 * attribute.
 */
export function tempoSource(options: TempoSourceOptions): SpanSource {
  const base = baseUrl(options.endpoint, 'endpoint');
  const timeoutMs = options.timeoutMs ?? 5000;
  // Tempo answers 404 both for an unknown trace and (before 2.6) for the v2 path, so v1 is asked until one of them
  // finds a trace.
  let found: (typeof TRACE_APIS)[number] | undefined;

  const trace = async (traceId: string): Promise<Span[]> => {
    for (const api of found === undefined ? TRACE_APIS : [found]) {
      const url = `${base}/${api.path}/${traceId}`;
      const answer = await getJson(url, timeoutMs);
      if (answer.status === 404) continue;
      if (answer.status !== 200) throw badAnswer(url, answer);
      const spans = otlpSpans(url, api.otlp(answer.body));
      if (spans.length > 0) {
        found = api;
        return spans;
      }
    }
    return [];
  };

  return {
    description: `Tempo at ${base}`,
    trace: (traceId) => trace(traceId),
    async probeTraces(probeId, window) {
      // TraceQL string literals are double-quoted with backslash escapes, as JSON's are.
      const q = `{ span.${ATTR.probe} = ${JSON.stringify(probeId)} }`;
      const query = new URLSearchParams({
        q,
        start: String(Math.floor(window.startMs / 1000)),
        end: String(Math.ceil(window.endMs / 1000)),
        limit: '20',
      });
      const url = `${base}/api/search?${query}`;
      const answer = await getJson(url, timeoutMs);
      if (answer.status !== 200) throw badAnswer(url, answer);
      const traces = (answer.body as { traces?: unknown } | undefined)?.traces ?? [];
      if (!Array.isArray(traces))
        throw new Error(`GET ${url} answered 200 without the "traces" list of Tempo's search`);
      const ids = traces
        .map((t: { traceID?: unknown }) => t?.traceID)
        .filter((id): id is string => typeof id === 'string');
      const spans = await Promise.all(ids.map((id) => trace(padId(id, 32))));
      return tracesCarrying(spans.flat(), probeId);
    },
    close: async () => undefined,
  };
}
