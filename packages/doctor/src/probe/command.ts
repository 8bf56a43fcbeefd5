import { jaegerSource } from '../backends/jaeger';
import { receiverSource } from '../backends/receiver';
import type { SpanSource } from '../backends/source';
import { tempoSource } from '../backends/tempo';
import { sendProbe } from './send';
import type { SentProbe } from './send';
import { judge } from './verdict';
import type { ProbeVerdict, SpanRef, VerdictKind } from './verdict';
import { collectSpans } from './wait';

/** Where spans are read from. */
export type ProbeBackend = 'receive' | 'jaeger' | 'tempo';

/** Options of {@link runProbe}; only `url` is required. */
export interface ProbeOptions {
  /** The entry URL requests are sent to (GET). */
  url: string;
  /** Default `receive`: the receiver, started in this process unless `endpoint` names a running one. */
  backend?: ProbeBackend;
  /** Jaeger's or Tempo's query URL (required for them), or a running receiver's URL. */
  endpoint?: string;
  /** The port of the receiver started in this process. Default 4318. */
  port?: number;
  /** How many requests to send, each with its own trace and probe id. Default 1. */
  count?: number;
  /** How long one request (to the entry URL or to the backend) may take. Default 10000 ms. */
  timeoutMs?: number;
  /** How long to wait for spans after a request. Default 30000 ms. */
  waitMs?: number;
  /** The spans are complete once none arrived for this long. Default 2000 ms. */
  quietMs?: number;
  /** One JSON document instead of text. Default false. */
  json?: boolean;
  /** Read spans from here instead of `backend` (a receiver this program already runs); left open. */
  source?: SpanSource;
}

/** Where the command writes. */
export interface ProbeOutput {
  line(text?: string): void;
  readonly color: boolean;
  readonly width: number;
}

/** One request's result, as `--json` prints it. */
export interface ProbeResult extends ProbeVerdict {
  readonly probeId: string;
  readonly traceId: string;
  readonly traceparent: string;
  readonly status: number | undefined;
  readonly error: string | undefined;
  /** Why the search by probe id failed: traces started elsewhere may be missing. */
  readonly searchError: string | undefined;
}

const EXIT: Record<VerdictKind, number> = { whole: 0, broken: 1, unknown: 2 };
const POLL_MS = 250;

function positive(value: number | undefined, fallback: number, option: string): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1)
    throw new TypeError(`@meshtrace/doctor: ${option} must be a positive whole number, not ${JSON.stringify(value)}`);
  return value;
}

/** The span source `options` name; throws a TypeError for bad configuration. */
async function openSource(options: ProbeOptions, timeoutMs: number): Promise<SpanSource> {
  const backend = options.backend ?? 'receive';
  if (backend === 'receive') return receiverSource({ endpoint: options.endpoint, port: options.port, timeoutMs });
  if (backend !== 'jaeger' && backend !== 'tempo')
    throw new TypeError(`@meshtrace/doctor: backend must be receive, jaeger or tempo, not ${JSON.stringify(backend)}`);
  if (options.endpoint === undefined)
    throw new TypeError(
      `@meshtrace/doctor: endpoint is required with backend ${backend} (its query URL, such as ${backend === 'jaeger' ? 'http://jaeger:16686' : 'http://tempo:3200'})`,
    );
  return backend === 'jaeger'
    ? jaegerSource({ endpoint: options.endpoint, timeoutMs })
    : tempoSource({ endpoint: options.endpoint, timeoutMs });
}

/**
 * `meshtrace probe <url>`: sends the probe requests, waits for their spans and prints whether each
 * trace came through whole. Returns the exit code: 0 whole, 1 broken, 2 unknown.
 */
export async function runProbe(options: ProbeOptions, out: ProbeOutput): Promise<number> {
  let url: URL;
  try {
    url = new URL(options.url);
  } catch {
    throw new TypeError(`@meshtrace/doctor: url must be an http(s) URL, not ${JSON.stringify(options.url)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new TypeError(`@meshtrace/doctor: url must be an http(s) URL, not ${JSON.stringify(options.url)}`);
  const count = positive(options.count, 1, 'count');
  const timeoutMs = positive(options.timeoutMs, 10_000, 'timeoutMs');
  const waitMs = positive(options.waitMs, 30_000, 'waitMs');
  const quietMs = positive(options.quietMs, 2_000, 'quietMs');
  const source = options.source ?? (await openSource(options, timeoutMs));
  let results: ProbeResult[];
  try {
    const sent: SentProbe[] = [];
    for (let i = 0; i < count; i++) sent.push(await sendProbe(url.href, timeoutMs));
    results = await Promise.all(
      sent.map(async (s) => {
        const collected = await collectSpans(source, s, { waitMs, quietMs, pollMs: POLL_MS });
        const verdict = judge(s, collected, source.description, waitMs);
        return {
          probeId: s.probeId,
          traceId: s.traceId,
          traceparent: s.traceparent,
          status: s.status,
          error: s.error,
          ...verdict,
          searchError: collected.searchError,
        };
      }),
    );
  } finally {
    if (options.source === undefined) await source.close();
  }
  const verdict: VerdictKind = results.some((r) => r.verdict === 'broken')
    ? 'broken'
    : results.some((r) => r.verdict === 'unknown')
      ? 'unknown'
      : 'whole';
  if (options.json)
    out.line(
      JSON.stringify(
        { verdict, exitCode: EXIT[verdict], url: url.href, source: source.description, probes: results },
        null,
        2,
      ),
    );
  else printResults(url.href, source.description, results, out);
  return EXIT[verdict];
}

const PAINT: Record<VerdictKind, string> = { whole: '32', broken: '31', unknown: '33' };

function printResults(url: string, asked: string, results: readonly ProbeResult[], out: ProbeOutput): void {
  const paint = (kind: VerdictKind): string =>
    out.color ? `\u001b[1;${PAINT[kind]}m${kind.toUpperCase()}\u001b[0m` : kind.toUpperCase();
  const span = (s: SpanRef): string => `${s.service} ${s.kind.toUpperCase()} "${s.name}" (span ${s.spanId})`;
  out.line(`meshtrace probe ${url}: ${results.length} request${results.length === 1 ? '' : 's'}, spans from ${asked}`);
  for (const [i, r] of results.entries()) {
    out.line();
    out.line(
      `probe ${i + 1}: ${r.error === undefined ? `HTTP ${r.status}` : `request failed: ${r.error}`}  probe id ${r.probeId}  trace ${r.traceId}`,
    );
    if (r.verdict === 'whole') {
      out.line(
        `  ${paint('whole')}  ${r.spans} spans from ${r.services.join(', ')} in one trace; every SERVER span's parent is its caller's CLIENT span`,
      );
    } else if (r.verdict === 'unknown') {
      out.line(`  ${paint('unknown')}  ${r.reason}`);
      for (const c of r.check) out.line(`    check: ${c}`);
    } else {
      for (const b of r.breaks) {
        out.line(`  ${paint('broken')}  ${b.hop.from ?? '?'} → ${b.hop.to}`);
        out.line(`    ${b.detail}`);
        if (b.lastCarrier !== undefined) out.line(`    last span that still carried the trace: ${span(b.lastCarrier)}`);
      }
    }
    if (r.searchError !== undefined)
      out.line(`  note: the search by probe id failed (${r.searchError}); traces started elsewhere may be missing`);
  }
}
