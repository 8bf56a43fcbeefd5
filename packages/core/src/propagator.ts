import { defaultTextMapSetter, isSpanContextValid, propagation, trace } from '@opentelemetry/api';
import type { Context, TextMapGetter, TextMapPropagator, TextMapSetter } from '@opentelemetry/api';
import { isTracingSuppressed } from '@opentelemetry/core';
import { BAGGAGE_LIMITS, serializeBaggage } from './baggage';
import { PACKAGE } from './diagnostics';
import { RANDOM_TRACE_ID_KEY, extractContext, recordDropped } from './extract';
import { FLAG_RANDOM, formatTraceparent, isValidId } from './traceparent';
import { serializeTracestate } from './tracestate';

/** Options of {@link MeshPropagator}; all optional. */
export interface MeshPropagatorOptions {
  /** Propagate W3C `baggage` beside the trace context. Default `true`. */
  baggage?: boolean;
  /** Outbound `baggage` budget in bytes; whole members are dropped, last first, past it. Default 8192. */
  maxBaggageBytes?: number;
}

const DEFAULTS: Required<MeshPropagatorOptions> = { baggage: true, maxBaggageBytes: BAGGAGE_LIMITS.maxBytes };

/** Throws the `TypeError` a bad option deserves, named after the package and the option. */
export function optionError(pkg: string, option: string, expected: string, got: unknown): TypeError {
  return new TypeError(`${pkg}: option "${option}" must be ${expected}, got ${typeof got === 'string' ? JSON.stringify(got) : String(got)}`);
}

function withoutBaggage<C>(getter: TextMapGetter<C>): TextMapGetter<C> {
  return { keys: (c) => getter.keys(c), get: (c, key) => (key === 'baggage' ? undefined : getter.get(c, key)) };
}

/**
 * The W3C `traceparent` / `tracestate` / `baggage` propagator, strict on the way in and on the way out:
 * inject always writes version 00, never forwards what failed validation, and keeps the Level 2
 * random flag. Use it with `propagation.setGlobalPropagator(new MeshPropagator())`.
 */
export class MeshPropagator implements TextMapPropagator {
  private readonly baggage: boolean;
  private readonly maxBaggageBytes: number;
  private readonly fieldNames: string[];

  constructor(options: MeshPropagatorOptions = {}) {
    if (options === null || typeof options !== 'object') throw optionError(PACKAGE, 'options', 'an object', options);
    const o = { ...DEFAULTS, ...options };
    if (typeof o.baggage !== 'boolean') throw optionError(PACKAGE, 'baggage', 'a boolean', o.baggage);
    if (!Number.isInteger(o.maxBaggageBytes) || o.maxBaggageBytes < 0 || o.maxBaggageBytes > BAGGAGE_LIMITS.maxBytes) {
      throw optionError(PACKAGE, 'maxBaggageBytes', `an integer from 0 to ${BAGGAGE_LIMITS.maxBytes}`, o.maxBaggageBytes);
    }
    this.baggage = o.baggage;
    this.maxBaggageBytes = o.maxBaggageBytes;
    this.fieldNames = o.baggage ? ['traceparent', 'tracestate', 'baggage'] : ['traceparent', 'tracestate'];
  }

  /** Writes the active span's trace context (and baggage) into `carrier`. */
  inject(context: Context, carrier: unknown, setter: TextMapSetter = defaultTextMapSetter): void {
    const sc = trace.getSpanContext(context);
    if (sc !== undefined && !isTracingSuppressed(context) && isSpanContextValid(sc) && isValidId(sc.traceId, 32) && isValidId(sc.spanId, 16)) {
      // The SDK's own span flags carry only "sampled"; the random flag lives in the context.
      const flags = context.getValue(RANDOM_TRACE_ID_KEY) === true ? sc.traceFlags | FLAG_RANDOM : sc.traceFlags;
      setter.set(carrier, 'traceparent', formatTraceparent(sc.traceId, sc.spanId, flags));
      const ts = serializeTracestate(sc.traceState);
      if (ts.length > 0) setter.set(carrier, 'tracestate', ts);
    }
    if (this.baggage) {
      const bag = propagation.getBaggage(context);
      if (bag !== undefined) {
        const out = serializeBaggage(bag, this.maxBaggageBytes);
        if (out.header.length > 0) setter.set(carrier, 'baggage', out.header);
        if (out.dropped > 0) recordDropped('baggage', 'over-budget', out.dropped);
      }
    }
  }

  /** Reads `carrier`; a missing or malformed `traceparent` leaves a fresh root, counted and warned. */
  extract(context: Context, carrier: unknown, getter: TextMapGetter): Context {
    return extractContext(carrier, this.baggage ? getter : withoutBaggage(getter), context).context;
  }

  /** The header names this propagator reads and writes. */
  fields(): string[] {
    return this.fieldNames.slice();
  }
}
