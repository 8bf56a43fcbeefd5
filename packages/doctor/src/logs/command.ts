import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { scanLogs } from './scan';
import type { Finding, GroupReport, LogReport, LogSample, NamedLogInput, ScanOptions } from './scan';

/** What `meshtrace logs` was asked. */
export interface LogsOptions extends ScanOptions {
  /** Access logs, each from one proxy; `-` (the default) is stdin. */
  files?: readonly string[];
  /** Print the report as JSON. */
  json?: boolean;
}

/** Where a command prints: one line at a time, in colour or not. */
export interface CommandOutput {
  line(text?: string): void;
  readonly color: boolean;
}

/** Clean upstreams and routes listed before the rest are only counted. */
const CLEAN_SHOWN = 10;

/** `meshtrace logs`: reads the logs and prints the report. Exit code 0 clean, 1 findings, 2 input it could not read. */
export async function runLogs(options: LogsOptions, out: CommandOutput): Promise<number> {
  const names = options.files !== undefined && options.files.length > 0 ? options.files : ['-'];
  const handles: FileHandle[] = [];
  const fail = (message: string): number => {
    out.line(options.json ? JSON.stringify({ error: message }) : `meshtrace logs: ${message}`);
    return 2;
  };
  try {
    // Every file is opened before any is read, so a wrong name fails at once, not after a long scan.
    const inputs: NamedLogInput[] = [];
    for (const name of names) {
      if (name === '-') {
        inputs.push({ name, input: process.stdin });
        continue;
      }
      const handle = await open(name).catch((err: NodeJS.ErrnoException) =>
        fail(`cannot read ${name}: ${err.code ?? err.message}`),
      );
      if (typeof handle === 'number') return handle;
      handles.push(handle);
      inputs.push({ name, input: handle.createReadStream() });
    }
    let report: LogReport;
    try {
      report = await scanLogs(inputs, options);
    } catch (err) {
      return fail(`cannot read the input: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    if (options.json) out.line(JSON.stringify(report, null, 2));
    else printReport(report, out);
    if (report.lines > 0 && report.requests === 0) {
      if (!options.json)
        out.line(
          `No line could be read as an access log${options.format && options.format !== 'auto' ? ` in the ${options.format} format` : ''}.`,
        );
      return 2;
    }
    return report.findings > 0 ? 1 : 0;
  } finally {
    await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
  }
}

function count(n: number, one: string, many = `${one}s`): string {
  return `${n.toLocaleString('en-US')} ${n === 1 ? one : many}`;
}

function paint(out: CommandOutput, code: number, text: string): string {
  return out.color ? `\u001b[${code}m${text}\u001b[0m` : text;
}

function sampleLine(out: CommandOutput, s: LogSample): string {
  return '      ' + paint(out, 2, `${s.file}:${s.line}  ${s.text || '(line not kept)'}`);
}

/** The report as text: inputs, then each upstream or route with its findings and a sample line each. */
export function printReport(r: LogReport, out: CommandOutput): void {
  out.line(
    `meshtrace logs: ${count(r.files.length, 'input')}, ${count(r.lines, 'line')}, ${count(r.requests, 'request')}, ${r.unparseable.count.toLocaleString('en-US')} unparseable`,
  );
  for (const f of r.files) {
    const hint =
      f.requests > 0 && f.withTraceparent === 0 ? ': no request carried a traceparent; is it in the log format?' : '';
    out.line(
      `  ${f.name}  ${f.format ?? 'format not recognised'}  ${count(f.lines, 'line')}, ${count(f.requests, 'request')}, ${f.unparseable.toLocaleString('en-US')} unparseable${hint}`,
    );
  }
  out.line();
  const flagged = r.groups.filter((g) => g.missing || g.malformed.length > 0 || g.oneHop);
  const clean = r.groups.filter((g) => !flagged.includes(g));
  for (const g of flagged) {
    out.line(`${paint(out, 31, '✗')} ${groupTitle(g)}`);
    const show = (f: Finding | undefined, what: string) => {
      if (f === undefined) return;
      out.line(`    ${paint(out, 31, f.count.toLocaleString('en-US'))} ${what}`);
      out.line(sampleLine(out, f.sample));
    };
    show(g.missing, 'without traceparent');
    for (const m of g.malformed) show(m, `malformed: ${m.reason}`);
    show(g.oneHop, `trace ${g.oneHop?.count === 1 ? 'id' : 'ids'} seen at one hop only`);
  }
  for (const g of clean.slice(0, CLEAN_SHOWN)) out.line(`${paint(out, 32, '✓')} ${groupTitle(g)}`);
  if (clean.length > CLEAN_SHOWN)
    out.line(
      `  and ${count(clean.length - CLEAN_SHOWN, 'more upstream or route', 'more upstreams or routes')} without findings`,
    );
  out.line();
  const h = r.hops;
  out.line(
    h.hop === 'files'
      ? 'Hops: each input is one proxy, so a hop is an input. A trace id found in one input only never reached (or left) the other proxies with that id: the next proxy saw another trace id or none.'
      : 'Hops: one input, so a hop is a line. A trace id on one line only is a finding when the log holds several proxies (some trace id is on two lines or more); a single proxy logs each request once, so then nothing is judged. Give each proxy its own file to compare proxies.',
  );
  out.line(
    `  ${h.judged ? '' : 'not judged: no trace id was seen at two hops; '}${count(h.traceIds, 'trace id')} followed, ${h.evicted.toLocaleString('en-US')} forgotten to stay within ${h.maxTraces.toLocaleString('en-US')}`,
  );
  if (r.unparseable.sample !== undefined) {
    out.line(`Unparseable: ${count(r.unparseable.count, 'line')}, the first (${r.unparseable.reason}):`);
    out.line(sampleLine(out, r.unparseable.sample));
  }
}

function groupTitle(g: GroupReport): string {
  const name = g.kind === 'other' ? g.name : `${g.kind} ${g.name}`;
  return `${name}: ${count(g.requests, 'request')}, ${g.valid.toLocaleString('en-US')} with a valid traceparent`;
}
