import { ATTR_PROPAGATION_FORMAT, ATTR_PROPAGATION_OUTCOME, ATTR_PROPAGATION_REASON } from '../span-attributes';
import type { Attributes } from '@opentelemetry/api';
import { PACKAGE, extractCounter, preview, warner } from '../internal/diagnostics';
import type { Traceparent, TraceparentReason } from '../w3c/traceparent';

/** A trace header format meshtrace reads. */
export type TraceFormat = 'w3c' | 'b3';

const TRUST_REASONS = ['untrusted-peer', 'route-policy', 'policy', 'policy-error'] as const;

/**
 * Why a request's trace was restarted or ignored: `untrusted-peer`, a declarative policy trusted
 * neither the peer nor a header; `route-policy`, the route says so; `policy`, the policy function
 * said so; `policy-error`, the policy function threw or answered something else, so its fallback applied.
 */
export type TrustReason = (typeof TRUST_REASONS)[number];

/** Why an inbound context was not continued. `bad-b3`: B3 headers present but invalid. */
export type MalformedReason = TraceparentReason | 'bad-b3';

/** What happened to the inbound trace context. */
export type ExtractOutcome =
  | {
      readonly outcome: 'continued';
      readonly format: TraceFormat;
      readonly reason: undefined;
      readonly attributes: Attributes;
    }
  | {
      readonly outcome: 'missing';
      readonly format: undefined;
      readonly reason: undefined;
      readonly attributes: Attributes;
    }
  | {
      readonly outcome: 'malformed';
      readonly format: undefined;
      readonly reason: Exclude<MalformedReason, 'missing'>;
      readonly attributes: Attributes;
    }
  | {
      readonly outcome: 'restarted' | 'ignored';
      readonly format: undefined;
      readonly reason: TrustReason | undefined;
      readonly attributes: Attributes;
    };

function outcome<O extends ExtractOutcome>(o: Omit<O, 'attributes'>): O {
  const attributes: Attributes = { outcome: o.outcome };
  if (o.reason !== undefined) attributes.reason = o.reason;
  if (o.format !== undefined) attributes.format = o.format;
  return Object.freeze({ ...o, attributes: Object.freeze(attributes) }) as O;
}

// Outcomes are constants: extracting allocates no outcome objects.
export const CONTINUED = {
  w3c: outcome({ outcome: 'continued', format: 'w3c', reason: undefined }),
  b3: outcome({ outcome: 'continued', format: 'b3', reason: undefined }),
};
export const MISSING = outcome({ outcome: 'missing', format: undefined, reason: undefined });
/** `restarted` / `ignored`, without a reason (every request, by configuration) and with each reason a policy gives. */
const UNTRUSTED: Record<'restart' | 'ignore', Record<TrustReason | 'none', ExtractOutcome>> = {
  restart: {} as never,
  ignore: {} as never,
};
for (const [action, name] of [
  ['restart', 'restarted'],
  ['ignore', 'ignored'],
] as const) {
  UNTRUSTED[action].none = outcome({ outcome: name, format: undefined, reason: undefined });
  for (const reason of TRUST_REASONS) UNTRUSTED[action][reason] = outcome({ outcome: name, format: undefined, reason });
}

/** The outcome constant of a request whose inbound trace an inbound policy restarted or ignored, and why. */
export function trustOutcome(action: 'restart' | 'ignore', reason: TrustReason | undefined): ExtractOutcome {
  return UNTRUSTED[action][reason ?? 'none'];
}
export const MALFORMED: Record<string, ExtractOutcome> = {};
for (const r of [
  'bad-version',
  'bad-trace-id',
  'zero-trace-id',
  'bad-parent-id',
  'zero-parent-id',
  'bad-flags',
  'bad-format',
  'multiple',
  'bad-b3',
] as const) {
  MALFORMED[r] = outcome({ outcome: 'malformed', format: undefined, reason: r });
}

/** The outcome constant for a `traceparent` parse result; classifies a header without extracting it. */
export function outcomeOf(parsed: Traceparent | TraceparentReason): ExtractOutcome {
  if (typeof parsed !== 'string') return CONTINUED.w3c;
  return parsed === 'missing' ? MISSING : MALFORMED[parsed];
}

/**
 * The outcome constant equal to `o`: every series of the extract counter is one constant attribute object, whoever
 * built the outcome.
 */
function constantOf(o: ExtractOutcome): ExtractOutcome {
  switch (o.outcome) {
    case 'continued':
      return o.format === 'b3' ? CONTINUED.b3 : CONTINUED.w3c;
    case 'missing':
      return MISSING;
    case 'restarted':
    case 'ignored':
      return UNTRUSTED[o.outcome === 'restarted' ? 'restart' : 'ignore'][o.reason ?? 'none'] ?? UNTRUSTED.restart.none;
    default:
      return MALFORMED[o.reason] ?? MALFORMED['bad-format'];
  }
}

function traceparentWarning(reason: MalformedReason, raw: unknown): string {
  if (reason === 'missing')
    return (
      `${PACKAGE}: request without traceparent; started a fresh root trace. If a sidecar should forward one, ` +
      'check that nothing strips it.'
    );
  if (reason === 'bad-b3')
    return `${PACKAGE}: malformed B3 headers; started a fresh root trace and will not forward them.`;
  return (
    `${PACKAGE}: malformed traceparent (${reason}) ${preview(raw)}; started a fresh root trace and will not ` +
    'forward it.'
  );
}

/**
 * Counts an outcome through `meshtrace.propagation.extract` and warns (rate-limited) when the
 * trace was lost (missing or malformed).
 */
export function recordOutcome(result: ExtractOutcome, raw?: unknown): void {
  extractCounter.add(1, constantOf(result).attributes);
  if (result.outcome === 'missing' || result.outcome === 'malformed') {
    const reason = result.reason ?? 'missing';
    warner.warn(`traceparent:${reason}`, () => traceparentWarning(reason, raw));
  }
}

/** Counts a carrier that could not be read at all as `malformed` / `bad-format`, warning with `what`. */
export function recordUnreadable(what: string): void {
  extractCounter.add(1, MALFORMED['bad-format'].attributes);
  warner.warn(
    `unreadable:${what}`,
    () => `${PACKAGE}: could not read the trace context carrier (${what}); its context is lost.`,
  );
}

/**
 * The span attributes of an outcome: `meshtrace.propagation.outcome`, `.reason` and `.format`, written into
 * `attributes`.
 */
export function outcomeAttributes(outcome: ExtractOutcome, attributes: Attributes): Attributes {
  attributes[ATTR_PROPAGATION_OUTCOME] = outcome.outcome;
  if (outcome.reason !== undefined) attributes[ATTR_PROPAGATION_REASON] = outcome.reason;
  if (outcome.format !== undefined) attributes[ATTR_PROPAGATION_FORMAT] = outcome.format;
  return attributes;
}
