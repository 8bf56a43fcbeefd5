import { outcomeText, summarize } from '../analyze';
import { answerSpanQuery } from './query';
import { checkOptions } from '@meshtrace/core/adapter';
import { PACKAGE } from '../options';
import type { Output } from '../output';
import type { Summary } from '../analyze';
import type { Span } from '../model';
import { meshMapUi } from '../ui/server';
import { renderTraces } from '../waterfall';
import { startReceiver } from './receiver';
import type { Receiver, ReceiverOptions, ReceiverStats } from './receiver';
import type { QuietTrace } from './window';

/**
 * Which quiet traces `meshtrace receive` prints a waterfall of: every one, the broken ones, or none (the summary line
 * only).
 */
export type PrintChoice = 'all' | 'broken' | 'none';

/** The values of {@link PrintChoice}, for a command line. */
export const PRINT_CHOICES: readonly PrintChoice[] = ['all', 'broken', 'none'];

/** Options of `meshtrace receive`: the receiver's, without its callbacks, and the mesh's entry services. */
export interface ReceiveOptions extends Omit<ReceiverOptions, 'onQuiet' | 'onSpans' | 'route'> {
  /** Services requests enter at (see `AnalyzeOptions.entryServices`). */
  entryServices?: readonly string[];
  /** Waterfalls printed as traces go quiet; the summary line is printed in every case. Default `broken`. */
  print?: PrintChoice;
  /** Also serve the mesh map, a page with its API, on the same port (`/`). Default false. */
  ui?: boolean;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** The running summary: traces, orphans per service and hop, outcomes per service, what was refused or lost. */
export function summaryLine(summary: Summary, stats: ReceiverStats): string {
  const parts = [`${plural(summary.traces, 'trace')}, ${plural(summary.spans, 'span')}`];
  const orphans = Object.entries(summary.orphansByService).map(([service, n]) => `${service} ${n}`);
  parts.push(orphans.length === 0 ? '0 orphaned roots' : `orphaned roots: ${orphans.join(', ')}`);
  if (summary.hops.length > 0)
    parts.push(`broken hops: ${summary.hops.map((h) => `${h.from ?? '?'} → ${h.to} ×${h.count}`).join(', ')}`);
  const outcomes = Object.entries(summary.outcomes).map(
    ([service, counts]) =>
      `${service} ${Object.entries(counts)
        .map(([text, n]) => `${text} ${n}`)
        .join('/')}`,
  );
  if (outcomes.length > 0) parts.push(`outcomes: ${outcomes.join(', ')}`);
  const refused = Object.entries(stats.responses).filter(([status]) => status !== '200');
  if (refused.length > 0) parts.push(`refused: ${refused.map(([status, n]) => `${n}×${status}`).join(', ')}`);
  if (stats.evictedSpans > 0) parts.push(`evicted: ${plural(stats.evictedSpans, 'span')}`);
  if (stats.duplicateSpans > 0) parts.push(`duplicates: ${plural(stats.duplicateSpans, 'span')}`);
  if (stats.forward.url !== undefined) {
    const { ok, failed, lastError } = stats.forward;
    const failures = failed > 0 ? `, ${failed} failed (${lastError ?? 'unknown error'})` : '';
    parts.push(`forwarded ${ok}${failures}`);
  }
  return `── ${parts.join('; ')}`;
}

// A SERVER span that got a trace context it could not read: the trace broke there, whatever the analysis ties.
const BROKEN_OUTCOME = /^malformed\b/;

/**
 * The traces a summary shows broken: an orphaned root or its caller is in them, or a SERVER span that did not continue
 * what it got.
 */
function brokenTraces(summary: Summary, traces: readonly QuietTrace[]): QuietTrace[] {
  const ids = new Set<string>();
  for (const orphan of summary.orphans) {
    ids.add(orphan.span.traceId);
    if (orphan.caller !== undefined) ids.add(orphan.caller.traceId);
  }
  const broken = (span: Span): boolean => span.kind === 'server' && BROKEN_OUTCOME.test(outcomeText(span));
  return traces.filter((t) => ids.has(t.traceId) || t.spans.some(broken));
}

/**
 * `meshtrace receive`: starts the receiver, prints the waterfall of each quiet trace `print` asks
 * for, and then a summary line over the whole window. Resolves once listening; `close()` on the
 * receiver stops it.
 */
export async function runReceive(options: ReceiveOptions, out: Output): Promise<Receiver> {
  const { entryServices, print = 'broken', ui = false, ...receiverOptions } = options;
  checkOptions(PACKAGE, options, { print: PRINT_CHOICES, ui: 'boolean' });
  const analysis = { entryServices };
  let map: ReturnType<typeof meshMapUi> | undefined;
  const receiver: Receiver = await startReceiver({
    ...receiverOptions,
    // So that `meshtrace probe --endpoint` can ask this receiver for the spans it holds.
    route: (req, res) => answerSpanQuery(req, res, () => receiver.spans()) || (map?.route(req, res) ?? false),
    onQuiet: (traces) => {
      // Orphans are found over the whole window: the caller of a trace is in another trace.
      const summary = summarize(receiver.spans(), analysis);
      const shown = print === 'all' ? traces : print === 'broken' ? brokenTraces(summary, traces) : [];
      for (const trace of shown) {
        out.line();
        for (const line of renderTraces(trace.spans, { color: out.color, width: out.width, orphans: summary.orphans }))
          out.line(line);
      }
      out.line(summaryLine(summary, receiver.stats()));
    },
  });
  out.line(`receiving OTLP/HTTP traces on ${receiver.url}/v1/traces: set OTEL_EXPORTER_OTLP_ENDPOINT=${receiver.url}`);
  const forward = receiver.stats().forward.url;
  if (forward !== undefined) out.line(`passing every request on to ${forward}`);
  if (!ui) return receiver;
  const page = meshMapUi({ receiver, host: receiverOptions.host ?? '127.0.0.1', entryServices });
  map = page;
  out.line(`the mesh map: ${receiver.url}/ (for this machine: its probe form sends requests from here)`);
  // The page's live streams stay open until ended: end them, or closing would wait for the page.
  return {
    ...receiver,
    close: async () => {
      page.close();
      await receiver.close();
    },
  };
}
