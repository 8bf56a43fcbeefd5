import type { Span } from '../model';
import { startReceiver } from '../receive/receiver';
import type { Receiver } from '../receive/receiver';
import { rootsIn, tracesCarrying } from '../evidence';
import { SPAN_QUERY_PATH } from '../receive/query';
import { numbers } from '../options';
import { badAnswer, baseUrl, getJson } from './source';
import type { SpanSource } from './source';

/** What {@link receivedSpanSource} needs of a receiver: the spans it has received so far. */
export interface ReceivedSpans {
  readonly url: string;
  spans(): readonly Span[];
}

/** Options of {@link receiverSource}; all optional. */
export interface ReceiverSourceOptions {
  /** A receiver already running (`meshtrace receive`) to ask over HTTP. Default: start one in this process. */
  endpoint?: string;
  /** The interface of the receiver started in this process. Default `127.0.0.1`. */
  host?: string;
  /** The port of the receiver started in this process, where the services export OTLP/HTTP to. Default 4318. */
  port?: number;
  /** How long one request to a running receiver may take. Default 5000 ms. */
  timeoutMs?: number;
}

/** Reads the spans a receiver in this process holds; closing the source leaves the receiver to its owner. */
export function receivedSpanSource(receiver: ReceivedSpans): SpanSource {
  return {
    description: `the receiver at ${receiver.url}`,
    trace: async (traceId) => receiver.spans().filter((s) => s.traceId === traceId),
    probeTraces: async (probeId) => tracesCarrying(receiver.spans(), probeId),
    recentRoots: async (window) => rootsIn(receiver.spans(), window),
    close: async () => undefined,
  };
}

/**
 * A receiver to read from: one started here on `options.port` (closed with the source), or a running one at
 * `options.endpoint`.
 */
export async function receiverSource(options: ReceiverSourceOptions = {}): Promise<SpanSource> {
  const timeoutMs = options.timeoutMs ?? 5000;
  if (options.endpoint === undefined) {
    const { port } = numbers(options, { port: ['port', 4318] });
    let receiver: Receiver;
    try {
      receiver = await startReceiver({ port, ...(options.host === undefined ? {} : { host: options.host }) });
    } catch (err) {
      if ((err as { code?: string }).code !== 'EADDRINUSE') throw err;
      const at = `${options.host ?? '127.0.0.1'}:${port}`;
      const elsewhere = `read from a running meshtrace receiver with --endpoint http://${at}`;
      throw Object.assign(
        new Error(
          `port ${at} is in use (a collector, or another receiver?): ${elsewhere}, or start this one on another --port`,
        ),
        { errno: 'EADDRINUSE' },
      );
    }
    return { ...receivedSpanSource(receiver), close: () => receiver.close() };
  }
  const base = baseUrl(options.endpoint, 'endpoint');
  const ask = async (query: string): Promise<Span[]> => {
    const url = `${base}${SPAN_QUERY_PATH}?${query}`;
    const answer = await getJson(url, timeoutMs);
    if (answer.status === 404)
      throw new Error(`${base} has no span query (${SPAN_QUERY_PATH} answered 404): is it a meshtrace receiver?`);
    if (answer.status !== 200) throw badAnswer(url, answer);
    const spans = (answer.body as { spans?: unknown } | undefined)?.spans;
    if (!Array.isArray(spans) || !spans.every(isSpan))
      throw new Error(`GET ${url} answered 200 without a "spans" list of spans`);
    return spans;
  };
  return {
    description: `the receiver at ${base}`,
    trace: (traceId) => ask(`trace=${encodeURIComponent(traceId)}`),
    probeTraces: (probeId) => ask(`probe=${encodeURIComponent(probeId)}`),
    recentRoots: (window) => ask(`rootsFrom=${Math.floor(window.startMs)}&rootsTo=${Math.ceil(window.endMs)}`),
    close: async () => undefined,
  };
}

function isSpan(x: unknown): x is Span {
  const s = x as Partial<Span> | null;
  return (
    typeof s === 'object' &&
    s !== null &&
    typeof s.traceId === 'string' &&
    typeof s.spanId === 'string' &&
    typeof s.service === 'string' &&
    typeof s.attributes === 'object' &&
    s.attributes !== null
  );
}
