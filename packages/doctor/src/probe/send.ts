import { randomBytes, randomUUID } from 'node:crypto';
import { FLAG_RANDOM, FLAG_SAMPLED, formatTraceparent } from '@meshtrace/core';
import { PROBE_BAGGAGE_KEY } from '../model';
import { fetchFailure } from '../output';

/** One request the probe sent, and how it went. */
export interface SentProbe {
  /** The entry URL the request went to. */
  readonly url: string;
  /** Rides in `baggage` as `meshtrace.probe` and as `x-request-id`. */
  readonly probeId: string;
  readonly traceId: string;
  /**
   * The span id in the `traceparent` sent: the probe plays a caller that records no span, so the entry's SERVER span
   * has it as parent.
   */
  readonly parentSpanId: string;
  readonly traceparent: string;
  readonly startMs: number;
  readonly endMs: number;
  /** The HTTP status, when an answer came. */
  readonly status: number | undefined;
  /** Why no answer came (refused, timed out). */
  readonly error: string | undefined;
}

/** `bytes` random bytes as lower-case hex, never all zeros (an invalid id, W3C trace-context §3.2.2.3). */
function randomId(bytes: number): string {
  for (;;) {
    const hex = randomBytes(bytes).toString('hex');
    if (!/^0+$/.test(hex)) return hex;
  }
}

/**
 * GETs `url` with a fresh sampled `traceparent` whose trace id is random (W3C trace-context-2 flag),
 * a probe id in `baggage` and `x-request-id`, and reads the whole answer.
 */
export async function sendProbe(url: string, timeoutMs: number): Promise<SentProbe> {
  const probeId = randomUUID();
  const traceId = randomId(16);
  const parentSpanId = randomId(8);
  const traceparent = formatTraceparent(traceId, parentSpanId, FLAG_SAMPLED | FLAG_RANDOM);
  const startMs = Date.now();
  let status: number | undefined;
  let error: string | undefined;
  try {
    const res = await fetch(url, {
      headers: {
        traceparent,
        baggage: `${PROBE_BAGGAGE_KEY}=${probeId}`,
        'x-request-id': probeId,
        'user-agent': 'meshtrace-probe',
      },
      signal: AbortSignal.timeout(timeoutMs),
    });
    status = res.status;
    await res.arrayBuffer();
  } catch (err) {
    error = fetchFailure(err, timeoutMs);
  }
  return { url, probeId, traceId, parentSpanId, traceparent, startMs, endMs: Date.now(), status, error };
}
