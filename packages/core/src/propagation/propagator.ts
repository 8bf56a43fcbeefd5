import { defaultTextMapSetter, propagation, trace } from '@opentelemetry/api';
import type { Context, TextMapGetter, TextMapPropagator, TextMapSetter } from '@opentelemetry/api';
import { formatB3Single } from '../w3c/b3';
import { BAGGAGE_LIMITS, serializeBaggage } from '../w3c/baggage';
import { RANDOM_TRACE_ID_KEY } from './extracted-context';
import { PACKAGE, recordDropped } from '../internal/diagnostics';
import { optionError } from '../internal/options';
import { extractWith } from './extract';
import { extractionOf } from './extraction';
import { isTracingSuppressed } from '../internal/otel-internals';
import type { ExtractConfig } from './extraction';
import type { TraceFormat } from './outcome';
import { FLAG_RANDOM, FLAG_SAMPLED, formatTraceparent, isValidId } from '../w3c/traceparent';
import { serializeTracestate } from '../w3c/tracestate';

/** Options of {@link MeshPropagator}; all optional. */
export interface MeshPropagatorOptions {
  /** Formats read, in order: the first valid one is continued. Default `['w3c', 'b3']`. */
  extract?: readonly TraceFormat[];
  /**
   * Also write B3 beside W3C, for Envoy's Zipkin tracer and older Linkerd: `'single'` or `'multi'`. Default `false`.
   */
  b3?: false | 'single' | 'multi';
  /** Propagate W3C `baggage` beside the trace context. Default `true`. */
  baggage?: boolean;
  /** Outbound `baggage` budget in bytes; whole members are dropped, last first, past it. Default 8192. */
  maxBaggageBytes?: number;
}

const DEFAULTS: Required<MeshPropagatorOptions> = {
  extract: ['w3c', 'b3'],
  b3: false,
  baggage: true,
  maxBaggageBytes: BAGGAGE_LIMITS.maxBytes,
};
const B3_FIELDS = ['b3', 'x-b3-traceid', 'x-b3-spanid', 'x-b3-sampled', 'x-b3-flags'];

/**
 * The W3C `traceparent` / `tracestate` / `baggage` propagator (and B3, for meshes that speak it),
 * strict on the way in and on the way out: inject always writes version 00, never forwards what
 * failed validation, and keeps the Level 2 random flag.
 * @example propagation.setGlobalPropagator(new MeshPropagator({ b3: 'multi' }));
 */
export class MeshPropagator implements TextMapPropagator {
  private readonly config: ExtractConfig;
  private readonly b3: false | 'single' | 'multi';
  private readonly baggage: boolean;
  private readonly maxBaggageBytes: number;
  private readonly fieldNames: string[];

  constructor(options: MeshPropagatorOptions = {}) {
    if (options === null || typeof options !== 'object') throw optionError(PACKAGE, 'options', 'an object', options);
    const o = { ...DEFAULTS, ...options };
    if (
      !Array.isArray(o.extract) ||
      o.extract.length === 0 ||
      o.extract.some((f) => f !== 'w3c' && f !== 'b3') ||
      new Set(o.extract).size !== o.extract.length
    ) {
      throw optionError(PACKAGE, 'extract', "a non-empty list of 'w3c' and 'b3'", o.extract);
    }
    if (o.b3 !== false && o.b3 !== 'single' && o.b3 !== 'multi')
      throw optionError(PACKAGE, 'b3', "false, 'single' or 'multi'", o.b3);
    if (typeof o.baggage !== 'boolean') throw optionError(PACKAGE, 'baggage', 'a boolean', o.baggage);
    if (!Number.isInteger(o.maxBaggageBytes) || o.maxBaggageBytes < 0 || o.maxBaggageBytes > BAGGAGE_LIMITS.maxBytes) {
      throw optionError(
        PACKAGE,
        'maxBaggageBytes',
        `an integer from 0 to ${BAGGAGE_LIMITS.maxBytes}`,
        o.maxBaggageBytes,
      );
    }
    this.config = Object.freeze({ formats: Object.freeze([...o.extract]), baggage: o.baggage });
    this.b3 = o.b3;
    this.baggage = o.baggage;
    this.maxBaggageBytes = o.maxBaggageBytes;
    const fields = ['traceparent', 'tracestate'];
    if (o.baggage) fields.push('baggage');
    if (o.b3 !== false || o.extract.includes('b3')) fields.push(...B3_FIELDS);
    this.fieldNames = fields;
  }

  /** Writes the active span's trace context (and baggage) into `carrier`. */
  inject(context: Context, carrier: unknown, setter: TextMapSetter = defaultTextMapSetter): void {
    // Suppressed tracing (an exporter's own requests) carries no context at all, as OpenTelemetry's propagators do.
    if (isTracingSuppressed(context)) return;
    const sc = trace.getSpanContext(context);
    if (sc !== undefined && isValidId(sc.traceId, 32) && isValidId(sc.spanId, 16)) {
      // The SDK's own span flags carry only "sampled"; the random flag lives in the context.
      const flags = context.getValue(RANDOM_TRACE_ID_KEY) === true ? sc.traceFlags | FLAG_RANDOM : sc.traceFlags;
      setter.set(carrier, 'traceparent', formatTraceparent(sc.traceId, sc.spanId, flags));
      const ts = serializeTracestate(sc.traceState);
      if (ts.length > 0) setter.set(carrier, 'tracestate', ts);
      if (this.b3 !== false) {
        const sampled = (sc.traceFlags & FLAG_SAMPLED) === FLAG_SAMPLED;
        const debug = extractionOf(context)?.b3Debug === true;
        if (this.b3 === 'single') {
          setter.set(carrier, 'b3', formatB3Single(sc.traceId, sc.spanId, sampled, debug));
        } else {
          setter.set(carrier, 'x-b3-traceid', sc.traceId);
          setter.set(carrier, 'x-b3-spanid', sc.spanId);
          // B3 §debug: x-b3-flags: 1 implies sampled, so x-b3-sampled is not sent with it.
          if (debug) setter.set(carrier, 'x-b3-flags', '1');
          else setter.set(carrier, 'x-b3-sampled', sampled ? '1' : '0');
        }
      }
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

  /** Reads `carrier`; a missing or malformed context leaves a fresh root, counted and warned. */
  extract(context: Context, carrier: unknown, getter: TextMapGetter): Context {
    return extractWith(this.config, carrier, getter, context);
  }

  /** The header names this propagator reads and writes. */
  fields(): string[] {
    return this.fieldNames.slice();
  }
}
