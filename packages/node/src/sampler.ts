import { SamplingDecision, diag, isSpanContextValid, trace } from '@opentelemetry/api';
import type { Attributes, Context, Link, Sampler, SamplingResult, SpanKind } from '@opentelemetry/api';
import { FLAG_SAMPLED } from '@meshtrace/core';
import { TallyCounter, extractionOf } from '@meshtrace/core/adapter';
import { PACKAGE, traceSdk } from './sdk';

/** Who decides whether a continued trace is sampled: the caller's flag, or this service's sampler. */
export type SamplingOwner = 'parent' | 'local';

const RECORD: SamplingResult = Object.freeze({ decision: SamplingDecision.RECORD_AND_SAMPLED });
const DROP: SamplingResult = Object.freeze({ decision: SamplingDecision.NOT_RECORD });

/** `meshtrace.sampling.mismatch`: caller said "not sampled" while the local sampler would record, by `owner`. */
const mismatchCounter = new TallyCounter(
  'meshtrace.sampling.mismatch',
  'Continued traces whose inbound sampled flag disagrees with the local sampler',
);

/** The mismatch counter's series, one constant attribute object per owner. */
const MISMATCH = { parent: Object.freeze({ owner: 'parent' }), local: Object.freeze({ owner: 'local' }) } as const;

/**
 * A parent-based sampler that knows about the mesh: `parent` lets the inbound sampled flag decide
 * (so proxy and SDK agree), `local` lets `root` decide and says so in the outbound flag. Either way it
 * counts (`meshtrace.sampling.mismatch`) and warns once when the caller said "not sampled" but the
 * local sampler would record: the silent "span exported but trace dropped" case.
 */
export class MeshSampler implements Sampler {
  private warned = false;

  constructor(
    private readonly root: Sampler,
    private readonly owner: SamplingOwner = 'parent',
  ) {}

  shouldSample(
    context: Context,
    traceId: string,
    name: string,
    kind: SpanKind,
    attributes: Attributes,
    links: Link[],
  ): SamplingResult {
    const parent = trace.getSpanContext(context);
    const hint = extractionOf(context)?.samplingHint;
    if (parent === undefined || !isSpanContextValid(parent)) {
      // b3: 0 asks for a trace that is not sampled.
      return hint === 'deny' ? DROP : this.root.shouldSample(context, traceId, name, kind, attributes, links);
    }
    const parentSampled = (parent.traceFlags & FLAG_SAMPLED) === FLAG_SAMPLED;
    if (!parent.isRemote) return parentSampled ? RECORD : DROP;
    if (hint === 'defer') return this.root.shouldSample(context, traceId, name, kind, attributes, links);
    if (this.owner === 'parent' && parentSampled) return RECORD;
    const local = this.root.shouldSample(context, traceId, name, kind, attributes, links);
    if (!parentSampled && local.decision === SamplingDecision.RECORD_AND_SAMPLED) this.mismatch();
    return this.owner === 'local' ? local : DROP;
  }

  private mismatch(): void {
    mismatchCounter.add(1, MISMATCH[this.owner]);
    if (this.warned) return;
    this.warned = true;
    diag.warn(
      this.owner === 'parent'
        ? `${PACKAGE}: the caller's traceparent says "not sampled" but this service's sampler would record; ` +
            "following the caller (sampling: 'parent'). Align proxy and SDK sampling rates."
        : `${PACKAGE}: the caller's traceparent says "not sampled" but this service samples (sampling: 'local'); ` +
            'its spans will have no recorded parent.',
    );
  }

  toString(): string {
    return `MeshSampler{owner=${this.owner}, root=${this.root.toString()}}`;
  }
}

/** The root sampler `OTEL_TRACES_SAMPLER`/`_ARG` ask for, and whether they ask the parent to decide. */
export function samplerFromEnv(env: Readonly<Record<string, string | undefined>>): {
  root: Sampler;
  owner: SamplingOwner;
} {
  const name = (env.OTEL_TRACES_SAMPLER ?? 'parentbased_always_on').trim().toLowerCase();
  const owner: SamplingOwner = name.startsWith('parentbased_') ? 'parent' : 'local';
  const kind = name.replace(/^parentbased_/, '');
  const arg = Number(env.OTEL_TRACES_SAMPLER_ARG);
  const ratio = Number.isFinite(arg) && arg >= 0 && arg <= 1 ? arg : 1;
  const sdk = traceSdk();
  const root =
    kind === 'always_off'
      ? new sdk.AlwaysOffSampler()
      : kind === 'traceidratio'
        ? new sdk.TraceIdRatioBasedSampler(ratio)
        : new sdk.AlwaysOnSampler();
  return { root, owner };
}
