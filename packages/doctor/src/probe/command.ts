import { jaegerSource } from '../backends/jaeger';
import { receiverSource } from '../backends/receiver';
import type { SpanSource } from '../backends/source';
import { tempoSource } from '../backends/tempo';
import { sendProbe } from './send';
import type { SentProbe } from './send';
import { judge } from './verdict';
import type { Hop, ProbeVerdict, SpanRef, VerdictKind } from './verdict';
import { collectSpans } from './wait';
import { checkOptions, optionError } from '@meshtrace/core/adapter';
import { PACKAGE, httpUrl, numbers } from '../options';
import { palette } from '../output';
import type { Output } from '../output';

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
  /** The interface of the receiver started in this process. Default `127.0.0.1`. */
  host?: string;
  /** The port of the receiver started in this process. Default 4318. */
  port?: number;
  /** How many requests to send, each with its own trace and probe id. Default 1. */
  count?: number;
  /** How long one request (to the entry URL or to the backend) may take. Default 10000 ms. */
  timeoutMs?: number;
  /** How long to wait for spans after a request. Default 30000 ms. */
  waitMs?: number;
  /**
   * The services' exporter batch delay (`OTEL_BSP_SCHEDULE_DELAY`): the spans are complete once the entry's
   * span is in and none changed for longer than this. Default 5000 ms, the SDKs' default.
   */
  batchDelayMs?: number;
  /** Peers that must be traced (`host`, `host:port` or a service name): a call they record nothing for is a break. */
  mesh?: readonly string[];
  /** Any peer that records nothing is a break. Default false. */
  strict?: boolean;
  /** One JSON document instead of text. Default false. */
  json?: boolean;
  /** Read spans from here instead of `backend` (a receiver this program already runs); left open. */
  source?: SpanSource;
}

/** One request's result, as `--json` prints it: every field is there, null when unknown. */
export interface ProbeResult extends ProbeVerdict {
  readonly probeId: string;
  readonly traceId: string;
  readonly traceparent: string;
  readonly status: number | null;
  readonly error: string | null;
  /** What was waited for, in words. */
  readonly waited: string;
  /** Why the search by probe id failed: traces started elsewhere may be missing. */
  readonly searchError: string | null;
}

/** Exit codes of `meshtrace probe` by verdict; 64 is a usage error (sysexits EX_USAGE). */
export const PROBE_EXIT: Readonly<Record<VerdictKind, number>> = { whole: 0, broken: 1, unknown: 2, incomplete: 3 };
const POLL_MS = 250;
/** Errors that mean the entry URL cannot be reached at all: no spans will come, so the probe stops at once. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'bad port']);

/** The entry URL could not be reached: the probe stops without waiting for spans. */
export class UnreachableError extends Error {
  readonly errno = 'EUNREACHABLE';
}

/** The span source `options` name; throws a TypeError for bad configuration. */
async function openSource(options: ProbeOptions, timeoutMs: number): Promise<SpanSource> {
  const backend = options.backend ?? 'receive';
  if (backend === 'receive')
    return receiverSource({ endpoint: options.endpoint, host: options.host, port: options.port, timeoutMs });
  if (backend !== 'jaeger' && backend !== 'tempo')
    throw new TypeError(`@meshtrace/doctor: backend must be receive, jaeger or tempo, not ${JSON.stringify(backend)}`);
  if (options.endpoint === undefined) {
    const example = backend === 'jaeger' ? 'http://jaeger:16686' : 'http://tempo:3200';
    throw new TypeError(
      `@meshtrace/doctor: endpoint is required with backend ${backend} (its query URL, such as ${example})`,
    );
  }
  return backend === 'jaeger'
    ? jaegerSource({ endpoint: options.endpoint, timeoutMs })
    : tempoSource({ endpoint: options.endpoint, timeoutMs });
}

/** The verdict over several requests: any broken is broken, then incomplete, then unknown. */
function overall(results: readonly ProbeResult[]): VerdictKind {
  for (const kind of ['broken', 'incomplete', 'unknown'] as const)
    if (results.some((r) => r.verdict === kind)) return kind;
  return 'whole';
}

/**
 * `meshtrace probe <url>`: sends the probe requests, waits for their spans and prints whether each
 * trace came through whole. Returns the exit code: 0 whole, 1 broken, 2 unknown, 3 incomplete.
 * @example
 * const code = await runProbe(
 *   { url: 'http://127.0.0.1:8080/orders', backend: 'jaeger', endpoint: 'http://127.0.0.1:16686' },
 *   out,
 * );
 */
export async function runProbe(options: ProbeOptions, out: Output): Promise<number> {
  const url = httpUrl(options.url, 'url');
  const { count, timeoutMs, waitMs, batchDelayMs } = numbers(options, {
    count: ['positive integer', 1],
    timeoutMs: ['positive integer', 10_000],
    waitMs: ['positive integer', 30_000],
    batchDelayMs: ['positive integer', 5_000],
  });
  checkOptions(PACKAGE, options, { backend: ['receive', 'jaeger', 'tempo'], strict: 'boolean', json: 'boolean' });
  if (
    options.mesh !== undefined &&
    (!Array.isArray(options.mesh) || options.mesh.some((m) => typeof m !== 'string' || m === ''))
  )
    throw optionError(PACKAGE, 'mesh', 'a list of host[:port] or service names', options.mesh);
  const source = options.source ?? (await openSource(options, timeoutMs));
  let results: ProbeResult[];
  try {
    const sent: SentProbe[] = [];
    for (let i = 0; i < count; i++) {
      const s = await sendProbe(url.href, timeoutMs);
      if (s.error !== undefined && UNREACHABLE.has(s.error))
        throw new UnreachableError(`cannot reach ${url.href}: ${s.error}`);
      sent.push(s);
    }
    results = await Promise.all(
      sent.map(async (s) => {
        const collected = await collectSpans(source, s, { waitMs, batchDelayMs, pollMs: POLL_MS });
        const verdict = judge(s, collected.spans, {
          mesh: options.mesh,
          strict: options.strict,
          settled: collected.settled,
          asked: source.description,
          recentRoots: collected.recentRoots,
        });
        const failed =
          collected.error === undefined
            ? {}
            : {
                verdict: 'unknown' as const,
                reason: `could not read spans from ${source.description}: ${collected.error}`,
                check: ['the endpoint is the query API of the backend the services export to, and it is up'],
              };
        return {
          probeId: s.probeId,
          traceId: s.traceId,
          traceparent: s.traceparent,
          status: s.status ?? null,
          error: s.error ?? null,
          ...verdict,
          ...failed,
          waited: collected.waited,
          searchError: collected.searchError ?? null,
        };
      }),
    );
  } finally {
    if (options.source === undefined) await source.close();
  }
  const verdict = overall(results);
  if (options.json)
    out.line(
      JSON.stringify(
        {
          command: 'probe',
          verdict,
          exitCode: PROBE_EXIT[verdict],
          url: url.href,
          source: source.description,
          probes: results,
        },
        null,
        2,
      ),
    );
  else printResults(url.href, source.description, results, out);
  return PROBE_EXIT[verdict];
}

const EVIDENCE_WORDS: Readonly<Record<string, string>> = {
  'parent-link': 'parent link',
  peer: "tied by the caller's peer address",
  'probe-id': 'tied to the probe by probe id',
  'request-id': 'tied to the probe by x-request-id',
};

function hopText(h: Hop): string {
  const via = h.proxies.length > 0 ? ` via ${h.proxies.join(' → ')}` : '';
  const how = h.evidence === null ? 'no evidence ties a caller' : EVIDENCE_WORDS[h.evidence];
  return `${h.from ?? '?'} → ${h.to}${via}: ${h.state} (${how})`;
}

function printResults(url: string, asked: string, results: readonly ProbeResult[], out: Output): void {
  const p = palette(out.color);
  const paint = (kind: VerdictKind): string =>
    p.bold((kind === 'whole' ? p.good : kind === 'broken' ? p.bad : p.warn)(kind.toUpperCase()));
  const span = (s: SpanRef): string => `${s.service} ${s.kind.toUpperCase()} "${s.name}" (span ${s.spanId})`;
  const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;
  out.line(`meshtrace probe ${url}: ${plural(results.length, 'request')}, spans from ${asked}`);
  for (const [i, r] of results.entries()) {
    out.line();
    const answer = r.error === null ? `HTTP ${r.status}` : `request failed: ${r.error}`;
    out.line(`probe ${i + 1}: ${answer}  probe id ${r.probeId}  trace ${r.traceId}`);
    const serviceList = r.services.join(', ') || 'no service';
    const traceCount = r.traces.length === 1 ? 'one trace' : plural(r.traces.length, 'trace');
    const found = `${plural(r.spans, 'span')} from ${serviceList} in ${traceCount}`;
    if (r.verdict === 'whole') {
      out.line(`  ${paint('whole')}  ${found}; every SERVER span's parent is its caller's span`);
    } else if (r.verdict === 'broken') {
      out.line(`  ${paint('broken')}  ${found}`);
      for (const b of r.breaks) {
        const via = b.proxies.length > 0 ? ` (via ${b.proxies.join(' → ')})` : '';
        out.line(`  ${paint('broken')}  ${b.hop.from ?? '?'} → ${b.hop.to}${via}`);
        out.line(`    ${b.detail}`);
        if (b.lastCarrier !== null) out.line(`    last span that still carried the trace: ${span(b.lastCarrier)}`);
      }
    } else if (r.spans === 0) {
      out.line(`  ${paint(r.verdict)}  ${r.reason}`);
      for (const c of r.check) out.line(`    check: ${c}`);
    } else {
      out.line(`  ${paint(r.verdict)}  ${found}: ${r.reason}`);
      for (const c of r.check) out.line(`    check: ${c}`);
    }
    if (r.hops.length > 0) {
      out.line('  hops:');
      for (const h of r.hops) out.line(`    ${hopText(h)}`);
    }
    for (const p of r.untracedPeers) {
      const status = p.declared
        ? ': declared in the mesh, so a break'
        : ': outside the mesh; --mesh or --strict to require it traced';
      out.line(`  untraced peer ${p.address}${p.path ?? ''} (called by ${p.caller})${status}`);
    }
    for (const s of r.suspects) out.line(`  suspect: ${s.detail}`);
    out.line(`  ${r.waited}`);
    if (r.searchError !== null)
      out.line(`  note: the search by probe id failed (${r.searchError}); traces started elsewhere may be missing`);
  }
}
