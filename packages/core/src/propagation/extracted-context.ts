import { INVALID_SPAN_CONTEXT, createContextKey, propagation, trace } from '@opentelemetry/api';
import type { Baggage, Context, Link, Span, SpanContext } from '@opentelemetry/api';
import { EXTRACTION_KEY } from './extraction';
import type { Extraction } from './extraction';
import type { ExtractOutcome } from './outcome';

/** Catches the key the API sets, so the API's own keys are known without relying on how it makes them. */
class KeyProbe implements Context {
  key: symbol | undefined;
  getValue(): unknown {
    return undefined;
  }
  setValue(key: symbol): Context {
    this.key = key;
    return this;
  }
  deleteValue(key: symbol): Context {
    this.key = key;
    return this;
  }
}

function keyOf(set: (probe: Context) => void): symbol {
  const probe = new KeyProbe();
  set(probe);
  if (probe.key === undefined) throw new Error('@meshtrace/core: @opentelemetry/api set no context key');
  return probe.key;
}

/** The key `trace.setSpan` writes. */
export const SPAN_KEY = keyOf((c) => trace.setSpanContext(c, INVALID_SPAN_CONTEXT));
/** The key `propagation.setBaggage` writes. */
export const BAGGAGE_KEY = keyOf((c) => propagation.setBaggage(c, propagation.createBaggage()));

/** Marks a context whose trace id is known to be random (W3C trace-context-2 flag 0x02). */
export const RANDOM_TRACE_ID_KEY = createContextKey('meshtrace.random-trace-id');

/** Layers on one context before they are folded into one map, so a lookup never walks far. */
const MAX_DEPTH = 8;

/**
 * A context that adds values over a parent without copying it. The API's own context copies its
 * whole map on every `setValue`; extraction and the server span would copy it three or four times per request.
 */
abstract class Layered implements Context {
  constructor(
    readonly parent: Context,
    /** Layers of ours between this one and the first context that is not. */
    readonly depth: number,
  ) {}

  abstract getValue(key: symbol): unknown;

  /** Adds this layer's entries to `into`, except keys already there (set by a newer layer). */
  abstract collect(into: Map<symbol, unknown>): void;

  setValue(key: symbol, value: unknown): Context {
    if (this.depth < MAX_DEPTH) return new Entry(this, this.depth + 1, key, value);
    const map = new Map<symbol, unknown>([[key, value]]);
    let c: Context = this;
    while (c instanceof Layered) {
      c.collect(map);
      c = c.parent;
    }
    return new Folded(c, 1, map);
  }

  deleteValue(key: symbol): Context {
    // Every context reads a missing key as undefined, so a deleted key is one set to undefined.
    return this.setValue(key, undefined);
  }
}

class Entry extends Layered {
  constructor(
    parent: Context,
    depth: number,
    private readonly key: symbol,
    private readonly value: unknown,
  ) {
    super(parent, depth);
  }

  getValue(key: symbol): unknown {
    return key === this.key ? this.value : this.parent.getValue(key);
  }

  collect(into: Map<symbol, unknown>): void {
    if (!into.has(this.key)) into.set(this.key, this.value);
  }
}

class Folded extends Layered {
  constructor(
    parent: Context,
    depth: number,
    private readonly map: Map<symbol, unknown>,
  ) {
    super(parent, depth);
  }

  getValue(key: symbol): unknown {
    return this.map.has(key) ? this.map.get(key) : this.parent.getValue(key);
  }

  collect(into: Map<symbol, unknown>): void {
    for (const [k, v] of this.map) if (!into.has(k)) into.set(k, v);
  }
}

/**
 * What one extraction adds to a context, in one object that is also its {@link Extraction} record:
 * the remote span context (its non-recording span made on first read), the inbound baggage and the
 * Level 2 random flag.
 */
export class ExtractedContext extends Layered implements Extraction {
  private span: Span | undefined;

  constructor(
    parent: Context,
    private readonly spanContext: SpanContext | undefined,
    private readonly baggage: Baggage | undefined,
    private readonly random: boolean,
    readonly outcome: ExtractOutcome,
    readonly links: readonly Link[] | undefined,
    readonly samplingHint: Extraction['samplingHint'],
    readonly b3Debug: boolean,
  ) {
    super(parent, parent instanceof Layered ? parent.depth + 1 : 1);
  }

  getValue(key: symbol): unknown {
    if (key === SPAN_KEY) {
      if (this.spanContext !== undefined) {
        this.span ??= trace.wrapSpanContext(this.spanContext);
        return this.span;
      }
    } else if (key === EXTRACTION_KEY) {
      return this;
    } else if (key === BAGGAGE_KEY) {
      if (this.baggage !== undefined) return this.baggage;
    } else if (key === RANDOM_TRACE_ID_KEY) {
      if (this.random) return true;
    }
    return this.parent.getValue(key);
  }

  collect(into: Map<symbol, unknown>): void {
    if (this.spanContext !== undefined && !into.has(SPAN_KEY)) into.set(SPAN_KEY, this.getValue(SPAN_KEY));
    if (this.baggage !== undefined && !into.has(BAGGAGE_KEY)) into.set(BAGGAGE_KEY, this.baggage);
    if (this.random && !into.has(RANDOM_TRACE_ID_KEY)) into.set(RANDOM_TRACE_ID_KEY, true);
    if (!into.has(EXTRACTION_KEY)) into.set(EXTRACTION_KEY, this);
  }
}
