import { context, diag, metrics, propagation } from '@opentelemetry/api';
import type { Attributes, Context, Counter } from '@opentelemetry/api';
import { registeredMeterProvider } from './otel-internals';

/** The package name every diagnostic and configuration error starts with. */
export const PACKAGE = '@meshtrace/core';

/**
 * Logs at most one line per key and interval through `diag`, then says how many were suppressed,
 * so an attacker or a broken proxy cannot flood the logs.
 */
export class RateLimitedWarner {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(private readonly intervalMs: number = 10_000) {}

  /** Warns for `key` unless it warned within the interval; `message` is built only when it logs. */
  warn(key: string, message: () => string): void {
    const now = Date.now();
    const seen = this.last.get(key);
    if (seen !== undefined && now - seen.at < this.intervalMs) {
      seen.suppressed++;
      return;
    }
    const suppressed = seen?.suppressed ?? 0;
    this.last.set(key, { at: now, suppressed: 0 });
    diag.warn(suppressed > 0 ? `${message()} (${suppressed} similar suppressed)` : message());
  }

  /** Forgets what was logged, so the next warning for every key logs at once. */
  reset(): void {
    this.last.clear();
  }
}

/** The warner shared by meshtrace packages; one line per reason every 10 s. */
export const warner = new RateLimitedWarner();

/** Not resolved yet: differs from anything registered, `undefined` included. */
const UNRESOLVED = Symbol('unresolved');

/** A counter resolved from the global MeterProvider each time that changes, so setup order does not matter. */
export class LazyCounter {
  private registered: unknown = UNRESOLVED;
  private counter: Counter | undefined;

  constructor(
    private readonly name: string,
    private readonly description: string,
    private readonly unit?: string,
  ) {}

  add(value: number, attributes: Attributes): void {
    if (registeredMeterProvider() !== this.registered || this.counter === undefined) {
      this.registered = registeredMeterProvider();
      this.counter = metrics
        .getMeterProvider()
        .getMeter(PACKAGE)
        .createCounter(this.name, { description: this.description, unit: this.unit });
    }
    this.counter.add(value, attributes);
  }
}

/**
 * A counter over a fixed set of attribute objects (each series is one constant object): adds are
 * tallied in the process and reported through an ObservableCounter when metrics are collected, so
 * counting is one map update, and nothing while no MeterProvider is registered. A provider counts
 * from the add after its registration, as a counter created on it then would.
 */
export class TallyCounter {
  private registered: unknown = UNRESOLVED;
  private tallies: Map<Attributes, number> | undefined;

  constructor(
    private readonly name: string,
    private readonly description: string,
    private readonly unit?: string,
  ) {}

  /** Adds `value` to the series of `attributes`, which must be one of the counter's constant attribute objects. */
  add(value: number, attributes: Attributes): void {
    if (registeredMeterProvider() !== this.registered) this.resolve();
    const tallies = this.tallies;
    if (tallies !== undefined) tallies.set(attributes, (tallies.get(attributes) ?? 0) + value);
  }

  private resolve(): void {
    const registered = registeredMeterProvider();
    this.registered = registered;
    if (registered === undefined) {
      this.tallies = undefined;
      return;
    }
    // Each provider reports its own tallies: the one it replaced keeps what it had counted.
    const tallies = new Map<Attributes, number>();
    this.tallies = tallies;
    const counter = metrics
      .getMeterProvider()
      .getMeter(PACKAGE)
      .createObservableCounter(this.name, { description: this.description, unit: this.unit });
    counter.addCallback((result) => {
      for (const [attributes, value] of tallies) result.observe(value, attributes);
    });
  }
}

/** `meshtrace.propagation.extract`: every inbound extraction, by `outcome` (and `reason`). */
export const extractCounter = new TallyCounter(
  'meshtrace.propagation.extract',
  'Inbound trace context extractions by outcome',
);
/** `meshtrace.propagation.dropped`: header members dropped on the way in or out, by `header` and `reason`. */
export const droppedCounter = new LazyCounter(
  'meshtrace.propagation.dropped',
  'Trace context members dropped, by header and reason',
);

/** Shows at most 64 characters of an untrusted value, escaped, so a log line cannot be forged. */
export function preview(value: unknown): string {
  if (value === undefined) return 'absent';
  let text: string;
  try {
    text = typeof value === 'string' ? value : Array.isArray(value) ? `[${value.length} values]` : typeof value;
  } catch {
    text = 'unreadable';
  }
  return JSON.stringify(text.length > 64 ? `${text.slice(0, 64)}…(${text.length} chars)` : text);
}

/** Calls a user hook; a throw is reported (once per hook every 10 s) and never reaches the request. */
export function callHook<S, T>(
  name: string,
  hook: ((span: S, target: T) => void) | undefined,
  span: S,
  target: T,
  pkg: string = PACKAGE,
): void {
  if (hook === undefined) return;
  try {
    hook(span, target);
  } catch (err) {
    warner.warn(
      `hook:${pkg}:${name}`,
      () => `${pkg}: ${name} threw and was ignored: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
}

/** Counts and warns about members dropped from an inbound or outbound header. */
export function recordDropped(header: 'tracestate' | 'baggage', reason: string, count: number, raw?: unknown): void {
  droppedCounter.add(count, { header, reason });
  warner.warn(
    `${header}:${reason}`,
    () =>
      `${PACKAGE}: dropped ${count} ${header} member(s) ` +
      `(${reason})${raw === undefined ? '' : ` from ${preview(raw)}`}.`,
  );
}

const PROBE_KEY = Symbol('meshtrace.probe');

/** True when a real context manager is registered (the no-op one never makes a context active). */
export function hasContextManager(): boolean {
  const probe: Context = context.active().setValue(PROBE_KEY, true);
  return context.with(probe, () => context.active().getValue(PROBE_KEY) === true);
}

/**
 * Warns about the two silent causes of orphaned roots: no context manager (context is lost at the
 * first `await`) and a global propagator that does not read `traceparent`. Returns what is wrong.
 * @example
 * if (checkPropagation().length > 0) process.exitCode = 1;
 */
export function checkPropagation(): string[] {
  const problems: string[] = [];
  if (!hasContextManager())
    problems.push('no context manager is registered, so the request context is lost at the first await');
  if (!propagation.fields().includes('traceparent'))
    problems.push('the global propagator does not read traceparent (was it replaced after setup?)');
  for (const p of problems) diag.warn(`${PACKAGE}: ${p}; traces will break into orphaned roots.`);
  return problems;
}
