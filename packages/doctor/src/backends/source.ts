import { httpUrl } from '../options';
import { fetchFailure } from '../output';
import type { Span } from '../model';
import { spansFromOtlpJson } from '../otlp/decode';

/** The time range a probe's spans fall in, in milliseconds since the epoch; backends that index by time need it. */
export interface TimeWindow {
  readonly startMs: number;
  readonly endMs: number;
}

/**
 * Where the probe reads spans from. Methods reject with an Error whose message says what went wrong
 * (unreachable, an answer that is not what the backend documents); "nothing found" is an empty list.
 */
export interface SpanSource {
  /** What is asked, for messages: "Jaeger at http://jaeger:16686". */
  readonly description: string;
  /** The spans of one trace (lower-case hex id) the backend has so far. */
  trace(traceId: string, window: TimeWindow): Promise<Span[]>;
  /** Every span of every trace in which a span carries `probeId` (as `meshtrace.probe` or `x-request-id`). */
  probeTraces(probeId: string, window: TimeWindow): Promise<Span[]>;
  /**
   * Root spans that started in `window`, to find suspects (new roots during an unanswered call). A source
   * that cannot list spans by time alone leaves it out, and the probe looks for no suspects there.
   */
  recentRoots?(window: TimeWindow): Promise<Span[]>;
  /** Stops what the source started (an in-process receiver); a no-op for the others. */
  close(): Promise<void>;
}

/** A JSON answer: its status, and the parsed body (`undefined` for an empty one). */
export interface JsonAnswer {
  readonly status: number;
  readonly body: unknown;
}

/**
 * GETs `url` and parses a JSON body. Rejects with a readable message when the server cannot be
 * reached, does not answer within `timeoutMs`, or answers 2xx with something that is not JSON.
 * A non-2xx answer resolves with its status (and its body, when that is JSON) for the caller to judge.
 */
export async function getJson(url: string, timeoutMs: number): Promise<JsonAnswer> {
  let res: Response;
  let text: string;
  try {
    res = await fetch(url, { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(timeoutMs) });
    text = await res.text();
  } catch (err) {
    throw new Error(`GET ${url} failed: ${fetchFailure(err)}`);
  }
  if (text.trim() === '') return { status: res.status, body: undefined };
  try {
    return { status: res.status, body: JSON.parse(text) as unknown };
  } catch {
    if (res.ok)
      throw new Error(
        `GET ${url} answered ${res.status} with a body that is not JSON: ${JSON.stringify(text.slice(0, 80))}`,
      );
    return { status: res.status, body: text };
  }
}

/** Why an answer is unusable: "answered 500: <start of the body>". */
export function badAnswer(url: string, answer: JsonAnswer): Error {
  const body = typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body ?? '');
  return new Error(`GET ${url} answered ${answer.status}${body ? `: ${body.slice(0, 120)}` : ''}`);
}

/** `endpoint` without trailing slashes, checked to be an http(s) URL; `option` names the option in the TypeError. */
export function baseUrl(endpoint: unknown, option: string): string {
  httpUrl(endpoint, option);
  return String(endpoint).replace(/\/+$/, '');
}

/** A hex id left-padded to `length`: Tempo's search and Jaeger's v1 model drop leading zeros. */
export function padId(id: string, length: number): string {
  return id.toLowerCase().padStart(length, '0');
}

/** The spans of an OTLP JSON document `url` answered with; a document of another shape is an Error naming the URL. */
export function otlpSpans(url: string, doc: unknown): Span[] {
  try {
    return spansFromOtlpJson(doc);
  } catch (err) {
    throw new Error(`GET ${url} answered 200 with a body that is not OTLP JSON: ${(err as Error).message}`);
  }
}
