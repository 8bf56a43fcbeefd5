import {
  DiagLogLevel,
  ROOT_CONTEXT,
  SamplingDecision,
  SpanKind,
  defaultTextMapGetter,
  diag,
  trace,
} from '@opentelemetry/api';
import { AlwaysOffSampler, AlwaysOnSampler, TraceIdRatioBasedSampler } from '@opentelemetry/sdk-trace';
import type { Sampler } from '@opentelemetry/sdk-trace';
import { MeshPropagator } from '@meshtrace/core';
import { MeshSampler, samplerFromEnv } from '@meshtrace/node';
import { setupTestTracing } from '@meshtrace/testkit';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const S = '00f067aa0ba902b7';
const tracing = setupTestTracing();
const warnings: string[] = [];
diag.setLogger(
  { warn: (m: string) => warnings.push(m), error: () => {}, info: () => {}, debug: () => {}, verbose: () => {} },
  DiagLogLevel.WARN,
);
afterAll(() => tracing.shutdown());

const remote = (flags: string, extra: Record<string, string> = {}) =>
  new MeshPropagator().extract(ROOT_CONTEXT, { traceparent: `00-${T}-${S}-${flags}`, ...extra }, defaultTextMapGetter);
const decide = (s: Sampler, ctx = ROOT_CONTEXT) => s.shouldSample(ctx, T, 'GET', SpanKind.SERVER, {}, []).decision;
const { RECORD_AND_SAMPLED: YES, NOT_RECORD: NO } = SamplingDecision;

const table: Array<[string, 'parent' | 'local', Sampler, string, SamplingDecision, boolean]> = [
  ['parent: sampled caller, local says no', 'parent', new AlwaysOffSampler(), '01', YES, false],
  ['parent: unsampled caller, local says yes (mismatch)', 'parent', new AlwaysOnSampler(), '00', NO, true],
  ['parent: unsampled caller, local says no', 'parent', new AlwaysOffSampler(), '00', NO, false],
  ['local: unsampled caller, local says yes (mismatch)', 'local', new AlwaysOnSampler(), '00', YES, true],
  ['local: sampled caller, local says no', 'local', new AlwaysOffSampler(), '01', NO, false],
];
test.each(table)('%s', async (_name, owner, root, flags, want, mismatch) => {
  warnings.length = 0;
  const before = (await tracing.counters())['meshtrace.sampling.mismatch'] ?? 0;
  const sampler = new MeshSampler(root, owner);
  expect(decide(sampler, remote(flags))).toBe(want);
  expect(decide(sampler, remote(flags))).toBe(want);
  // Counted every time, warned once.
  expect(warnings.length).toBe(mismatch ? 1 : 0);
  expect(((await tracing.counters())['meshtrace.sampling.mismatch'] ?? 0) - before).toBe(mismatch ? 2 : 0);
});

test('the outbound flag says what the local owner decided', () => {
  const sampler = new MeshSampler(new AlwaysOnSampler(), 'local');
  const ctx = remote('00');
  const decision = decide(sampler, ctx);
  expect(decision).toBe(YES);
});

test('a fresh root asks the root sampler; b3: 0 denies it', () => {
  const sampler = new MeshSampler(new AlwaysOnSampler());
  expect(decide(sampler)).toBe(YES);
  const denied = new MeshPropagator().extract(ROOT_CONTEXT, { b3: '0' }, defaultTextMapGetter);
  expect(decide(sampler, denied)).toBe(NO);
});

test('a deferred B3 decision is left to the root sampler', () => {
  const deferred = new MeshPropagator().extract(ROOT_CONTEXT, { b3: `${T}-${S}` }, defaultTextMapGetter);
  expect(decide(new MeshSampler(new AlwaysOnSampler()), deferred)).toBe(YES);
  expect(decide(new MeshSampler(new AlwaysOffSampler()), deferred)).toBe(NO);
});

test('a local parent is followed whoever owns remote decisions', () => {
  const local = trace.setSpanContext(ROOT_CONTEXT, { traceId: T, spanId: S, traceFlags: 0, isRemote: false });
  expect(decide(new MeshSampler(new AlwaysOnSampler(), 'local'), local)).toBe(NO);
});

test.each([
  [{}, 'AlwaysOnSampler', 'parent'],
  [
    { OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.01' },
    'TraceIdRatioBased{0.01}',
    'parent',
  ],
  [{ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.5' }, 'TraceIdRatioBased{0.5}', 'local'],
  [{ OTEL_TRACES_SAMPLER: 'always_off' }, 'AlwaysOffSampler', 'local'],
])('samplerFromEnv(%j)', (env, root, owner) => {
  const got = samplerFromEnv(env);
  expect(got.root.toString()).toBe(root);
  expect(got.owner).toBe(owner);
  expect(new TraceIdRatioBasedSampler(0.5).toString()).toBe('TraceIdRatioBased{0.5}');
});
