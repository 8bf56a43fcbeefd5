import { metrics } from '@opentelemetry/api';
import { AggregationTemporality, MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import { extractRequestContext } from '@meshtrace/core';
import { LazyCounter, TallyCounter } from './diagnostics';

class Reader extends MetricReader {
  constructor() {
    super({ aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE });
  }
  protected override async onForceFlush(): Promise<void> {}
  protected override async onShutdown(): Promise<void> {}
}

/** Cumulative totals of `name` by series, as a collection reports them. */
async function totals(reader: Reader, name: string): Promise<Record<string, number>> {
  const { resourceMetrics } = await reader.collect();
  const out: Record<string, number> = {};
  for (const metric of resourceMetrics.scopeMetrics.flatMap((s) => s.metrics)) {
    if (metric.descriptor.name !== name) continue;
    for (const point of metric.dataPoints) out[Object.values(point.attributes).join(':')] = point.value as number;
  }
  return out;
}

function register(): Reader {
  const reader = new Reader();
  metrics.disable();
  metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
  return reader;
}

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const P = '00f067aa0ba902b7';

afterAll(() => metrics.disable());

test('extract outcomes count from the registration of a MeterProvider; one that replaces it starts at zero, the old keeps its totals', async () => {
  metrics.disable();
  extractRequestContext({ traceparent: `00-${T}-${P}-01` });
  const first = register();
  extractRequestContext({ traceparent: `00-${T}-${P}-01` });
  extractRequestContext({ traceparent: `00-${T}-${P}-01` });
  extractRequestContext({});
  expect(await totals(first, 'meshtrace.propagation.extract')).toEqual({ 'continued:w3c': 2, missing: 1 });

  const second = register();
  extractRequestContext({ traceparent: `00-${T}-${P}-zz` });
  expect(await totals(second, 'meshtrace.propagation.extract')).toEqual({ 'malformed:bad-flags': 1 });
  expect(await totals(first, 'meshtrace.propagation.extract')).toEqual({ 'continued:w3c': 2, missing: 1 });
  // Reported on every collection, not only the first after an add.
  expect(await totals(second, 'meshtrace.propagation.extract')).toEqual({ 'malformed:bad-flags': 1 });
});

test('a TallyCounter keeps nothing while no MeterProvider is registered', async () => {
  metrics.disable();
  const counter = new TallyCounter('test.tally', 'test');
  const a = Object.freeze({ kind: 'a' });
  counter.add(5, a);
  const reader = register();
  counter.add(1, a);
  counter.add(2, a);
  expect(await totals(reader, 'test.tally')).toEqual({ a: 3 });
});

test('a LazyCounter follows the registered MeterProvider', async () => {
  const counter = new LazyCounter('test.lazy', 'test');
  const first = register();
  counter.add(2, { kind: 'b' });
  const second = register();
  counter.add(1, { kind: 'b' });
  expect(await totals(first, 'test.lazy')).toEqual({ b: 2 });
  expect(await totals(second, 'test.lazy')).toEqual({ b: 1 });
});
