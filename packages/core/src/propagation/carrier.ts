import type { TextMapGetter, TextMapSetter } from '@opentelemetry/api';

/** A header map as transports deliver it: values may be strings, string lists, Buffers or byte arrays. */
export type HeaderCarrier = Record<string, unknown>;

const decoder = new TextDecoder('utf-8');

/** One header value as text: Buffers and byte arrays are UTF-8 decoded, lists element-wise. */
function asText(value: unknown): string | string[] | undefined {
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) return decoder.decode(value);
  if (Array.isArray(value)) {
    const out: string[] = [];
    for (const v of value) {
      const t = asText(v);
      if (typeof t === 'string') out.push(t);
      else if (t !== undefined) return undefined;
    }
    return out.length === 1 ? out[0] : out;
  }
  return undefined;
}

/**
 * Reads header maps whose values are `string`, `string[]`, `Buffer` or `Uint8Array`, with
 * case-insensitive keys (Kafka, AMQP and gRPC metadata keep whatever case the producer used).
 * Values of any other type read as absent. Own keys only: `__proto__` and friends are never read.
 */
export const headerGetter: TextMapGetter<HeaderCarrier> = {
  keys(carrier) {
    return carrier !== null && typeof carrier === 'object' ? Object.keys(carrier) : [];
  },
  get(carrier, key) {
    if (carrier === null || typeof carrier !== 'object') return undefined;
    const lower = key.toLowerCase();
    let found: string | string[] | undefined;
    for (const k of Object.keys(carrier)) {
      if (k.length !== key.length || k.toLowerCase() !== lower) continue;
      const t = asText(carrier[k]);
      if (t === undefined) continue;
      // The same header under two spellings is two headers.
      found = found === undefined ? t : ([] as string[]).concat(found, t);
    }
    return found;
  },
};

/** Writes string values into a plain header map (AMQP headers, gRPC metadata objects, frames). */
export const headerSetter: TextMapSetter<HeaderCarrier> = {
  set(carrier, key, value) {
    if (carrier !== null && typeof carrier === 'object') carrier[key] = value;
  },
};

/** Writes Buffer values, as Kafka message headers want them. */
export const bufferHeaderSetter: TextMapSetter<HeaderCarrier> = {
  set(carrier, key, value) {
    if (carrier !== null && typeof carrier === 'object') carrier[key] = Buffer.from(value, 'utf8');
  },
};
