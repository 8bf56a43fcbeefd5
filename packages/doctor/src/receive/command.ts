import { summarize } from '../analyze';
import { answerSpanQuery } from '../backends/receiver';
import type { Summary } from '../analyze';
import { renderTraces } from '../waterfall';
import { startReceiver } from './receiver';
import type { Receiver, ReceiverOptions, ReceiverStats } from './receiver';

/** Options of `meshtrace receive`: the receiver's, without its callbacks, and the mesh's entry services. */
export interface ReceiveOptions extends Omit<ReceiverOptions, 'onQuiet' | 'onSpans' | 'route'> {
  /** Services requests enter at (see `AnalyzeOptions.entryServices`). */
  entryServices?: readonly string[];
}

/** Where the command writes and how. */
export interface ReceiveOutput {
  line(text?: string): void;
  readonly color: boolean;
  readonly width: number;
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
  if (stats.forward.url !== undefined)
    parts.push(
      `forwarded ${stats.forward.ok}${stats.forward.failed > 0 ? `, ${stats.forward.failed} failed (${stats.forward.lastError ?? 'unknown error'})` : ''}`,
    );
  return `── ${parts.join('; ')}`;
}

/**
 * `meshtrace receive`: starts the receiver, prints each trace's waterfall once it is quiet and then
 * a summary line over the whole window. Resolves once listening; `close()` on the receiver stops it.
 */
export async function runReceive(options: ReceiveOptions, out: ReceiveOutput): Promise<Receiver> {
  const { entryServices, ...receiverOptions } = options;
  const analysis = { entryServices };
  const receiver: Receiver = await startReceiver({
    ...receiverOptions,
    // So that `meshtrace probe --endpoint` can ask this receiver for the spans it holds.
    route: (req, res) => answerSpanQuery(req, res, () => receiver.spans()),
    onQuiet: (traces) => {
      // Orphans are found over the whole window: the caller of a trace is in another trace.
      const summary = summarize(receiver.spans(), analysis);
      for (const trace of traces) {
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
  return receiver;
}
