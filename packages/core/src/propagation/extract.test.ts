import { DiagLogLevel, ROOT_CONTEXT, diag, propagation, trace } from '@opentelemetry/api';
import { extractContext, extractRequestContext, headerGetter } from '@meshtrace/core';
import { warner } from '@meshtrace/core/adapter';
import { RateLimitedWarner } from '../internal/diagnostics';
import { setupTestTracing } from '@meshtrace/testkit';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const P = '00f067aa0ba902b7';
const tracing = setupTestTracing();
const warnings: string[] = [];
diag.setLogger(
  { warn: (m: string) => warnings.push(m), error: () => {}, info: () => {}, debug: () => {}, verbose: () => {} },
  DiagLogLevel.WARN,
);
afterAll(() => tracing.shutdown());
beforeEach(() => {
  warnings.length = 0;
  warner.reset();
});

test('each outcome is counted with its reason', async () => {
  const before = await tracing.outcomeCounts();
  extractRequestContext({ traceparent: `00-${T}-${P}-01` });
  extractRequestContext({});
  extractRequestContext({ traceparent: `ff-${T}-${P}-01` });
  extractRequestContext({ traceparent: `ff-${T}-${P}-01` });
  const after = await tracing.outcomeCounts();
  expect(after.continued - (before.continued ?? 0)).toBe(1);
  expect(after.missing - (before.missing ?? 0)).toBe(1);
  expect(after['malformed:bad-version'] - (before['malformed:bad-version'] ?? 0)).toBe(2);
});

test('a flood of malformed headers logs one line per reason, then counts what it suppressed', () => {
  for (let i = 0; i < 1000; i++) extractRequestContext({ traceparent: `00-${T}-${P}-zz` });
  extractRequestContext({ traceparent: 'garbage' });
  expect(warnings).toHaveLength(2);
  expect(warnings[0]).toMatch(/malformed traceparent \(bad-flags\) ".*"; started a fresh root trace/);
  expect(warnings[1]).toContain('(bad-version)');
});

test('the warner reports how many lines it held back', () => {
  let now = 0;
  const spy = jest.spyOn(Date, 'now').mockImplementation(() => now);
  try {
    const w = new RateLimitedWarner(1000);
    for (let i = 0; i < 5; i++) w.warn('k', () => 'line');
    now = 1500;
    w.warn('k', () => 'line');
    expect(warnings).toEqual(['line', 'line (4 similar suppressed)']);
  } finally {
    spy.mockRestore();
  }
});

test('a warning never carries more than a short, escaped preview of the value', () => {
  extractRequestContext({ traceparent: `00-\r\nX-Injected: yes${'a'.repeat(5000)}` });
  expect(warnings[0]).not.toContain('\n');
  expect(warnings[0].length).toBeLessThan(300);
});

test('a fresh root keeps inbound baggage and is marked random', () => {
  const { context, outcome } = extractRequestContext({ baggage: 'k=v' });
  expect(outcome.outcome).toBe('missing');
  expect(trace.getSpanContext(context)).toBeUndefined();
  expect(propagation.getBaggage(context)?.getEntry('k')?.value).toBe('v');
});

test('extract keeps the values of the base context', () => {
  const key = Symbol('k');
  const base = ROOT_CONTEXT.setValue(key, 1);
  expect(extractRequestContext({ traceparent: `00-${T}-${P}-01` }, base).context.getValue(key)).toBe(1);
});

describe('extractContext over header carriers', () => {
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['string values', { traceparent: `00-${T}-${P}-01` }, 'continued'],
    ['Buffer values', { traceparent: Buffer.from(`00-${T}-${P}-01`) }, 'continued'],
    ['Uint8Array values', { traceparent: new TextEncoder().encode(`00-${T}-${P}-01`) }, 'continued'],
    ['array of one Buffer', { traceparent: [Buffer.from(`00-${T}-${P}-01`)] }, 'continued'],
    ['mixed letter case key', { TraceParent: `00-${T}-${P}-01` }, 'continued'],
    ['same header in two spellings', { traceparent: `00-${T}-${P}-01`, TRACEPARENT: `00-${T}-${P}-01` }, 'malformed'],
    ['number value', { traceparent: 7 }, 'missing'],
    ['prototype keys are not read', JSON.parse('{"__proto__": {"traceparent": "x"}}'), 'missing'],
    ['not UTF-8', { traceparent: Buffer.from([0xff, 0xfe, 0x00]) }, 'malformed'],
  ];
  test.each(cases)('%s', (_name, carrier, outcome) => {
    expect(extractContext(carrier, headerGetter).outcome.outcome).toBe(outcome);
  });

  test('a getter that throws gives a malformed outcome, not an exception', () => {
    const getter = {
      keys: () => [],
      get: () => {
        throw new Error('boom');
      },
    };
    expect(extractContext({}, getter).outcome).toMatchObject({ outcome: 'malformed', reason: 'bad-format' });
  });
});
