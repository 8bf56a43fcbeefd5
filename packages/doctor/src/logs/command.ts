import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { scanLogs } from './scan';
import type { Finding, GroupReport, LogReport, LogSample, NamedLogInput, ScanOptions } from './scan';
import { palette } from '../output';
import type { Output } from '../output';

/** What `meshtrace logs` was asked. */
export interface LogsOptions extends ScanOptions {
  /** Access logs, each from one proxy; `-` (the default) is stdin. */
  files?: readonly string[];
  /** Print the report as JSON. */
  json?: boolean;
}

/** Clean upstreams and routes listed before the rest are only counted. */
const CLEAN_SHOWN = 10;

/** What a report comes to: the exit code, and why the command cannot tell when it is 2. */
export interface LogsVerdict {
  /** 0 clean, 1 findings, 2 cannot tell (an empty input, no access-log line, inputs that share no trace id). */
  readonly code: 0 | 1 | 2;
  readonly error: string | null;
}

/**
 * The verdict on a report: an input with nothing in it makes the comparison meaningless, so it is 2 even beside
 * findings.
 */
export function logsVerdict(r: LogReport, format: ScanOptions['format'] = 'auto'): LogsVerdict {
  const empty = r.files.filter((f) => f.requests + f.unparseable === 0).map((f) => (f.name === '-' ? 'stdin' : f.name));
  if (empty.length > 0) {
    const have = empty.length === 1 ? 'has' : 'have';
    const why = '(the wrong file, or access logging off)';
    return { code: 2, error: `${empty.join(', ')} ${have} no lines, so there is nothing to judge ${why}` };
  }
  if (r.requests === 0)
    return {
      code: 2,
      error: `no line could be read as an access log${format !== 'auto' ? ` in the ${format} format` : ''}`,
    };
  if (r.findings > 0) return { code: 1, error: null };
  if (r.hops.hop === 'files' && !r.hops.judged)
    return {
      code: 2,
      error:
        'no trace id is in two inputs: either every request starts a new trace between these proxies, ' +
        'or the inputs do not hold the same requests (other replicas, another time window)',
    };
  return { code: 0, error: null };
}

/** The report as JSON: every field present, null where a value is unknown, and the verdict's `error`. */
export function reportJson(r: LogReport, verdict: LogsVerdict): string {
  return JSON.stringify(
    { ...r, error: verdict.error },
    (_key, value: unknown) => (value === undefined ? null : value),
    2,
  );
}

/**
 * `meshtrace logs`: reads the logs and prints the report. Exit code 0 clean, 1 findings, 2 cannot tell (see
 * {@link logsVerdict}).
 */
export async function runLogs(options: LogsOptions, out: Output): Promise<number> {
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
    const verdict = logsVerdict(report, options.format);
    if (options.json) out.line(reportJson(report, verdict));
    else {
      printReport(report, out);
      if (verdict.error !== null) out.line(`meshtrace logs: cannot tell: ${verdict.error}.`);
    }
    return verdict.code;
  } finally {
    await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
  }
}

function count(n: number, one: string, many = `${one}s`): string {
  return `${n.toLocaleString('en-US')} ${n === 1 ? one : many}`;
}

function paint(out: Output, code: 2 | 31 | 32, text: string): string {
  const p = palette(out.color);
  return code === 2 ? p.dim(text) : code === 31 ? p.bad(text) : p.good(text);
}

function sampleLine(out: Output, s: LogSample): string {
  return `      ${paint(out, 2, `${s.file}:${s.line}  ${s.text || '(line not kept)'}`)}`;
}

/** The report as text: inputs, then each upstream or route with its findings and a sample line each. */
export function printReport(r: LogReport, out: Output): void {
  const inputs = count(r.files.length, 'input');
  const read = `${count(r.lines, 'line')}, ${count(r.requests, 'request')}`;
  out.line(`meshtrace logs: ${inputs}, ${read}, ${r.unparseable.count.toLocaleString('en-US')} unparseable`);
  for (const f of r.files) {
    const format = f.format ?? 'format not recognised';
    const fileRead = `${count(f.lines, 'line')}, ${count(f.requests, 'request')}`;
    out.line(`  ${f.name}  ${format}  ${fileRead}, ${f.unparseable.toLocaleString('en-US')} unparseable`);
  }
  // One proxy that received no traceparent is a finding; none in any input is more likely a log format without it.
  if (r.requests > 0 && r.files.every((f) => f.withTraceparent === 0))
    out.line(
      'No request in any input carried a traceparent: is it in the log format? ' +
        '(Envoy: %REQ(TRACEPARENT)%, nginx: $http_traceparent)',
    );
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
  if (clean.length > CLEAN_SHOWN) {
    const more = count(clean.length - CLEAN_SHOWN, 'more upstream or route', 'more upstreams or routes');
    out.line(`  and ${more} without findings`);
  }
  out.line();
  const h = r.hops;
  const hopsOfFiles =
    'Hops: each input is one proxy, so a hop is an input. ' +
    'Once some trace id is in two inputs, a trace id found in one input only never reached (or left) ' +
    'the other proxies with that id: the next proxy saw another trace id or none.';
  const hopsInOneFile =
    'Hops: one input, so a hop is an upstream or route in it (Istio inbound and outbound apart); ' +
    'a retry to the same place is the same hop. ' +
    'Once some trace id is seen at two of them, the log holds consecutive hops, ' +
    'and a trace id seen at one only is a finding. Give each proxy its own file to compare proxies.';
  out.line(h.hop === 'files' ? hopsOfFiles : hopsInOneFile);
  const linked = h.judged
    ? `${count(h.linked, 'trace id')} seen at two hops or more; `
    : 'not judged: no trace id was seen at two hops; ';
  const evicted = h.evicted.toLocaleString('en-US');
  const forgotten = `${evicted} forgotten to stay within ${h.maxTraces.toLocaleString('en-US')}`;
  out.line(`  ${linked}${count(h.traceIds, 'trace id')} followed, ${forgotten}`);
  if (r.unparseable.sample !== undefined) {
    out.line(`Unparseable: ${count(r.unparseable.count, 'line')}, the first (${r.unparseable.reason}):`);
    out.line(sampleLine(out, r.unparseable.sample));
  }
}

function groupTitle(g: GroupReport): string {
  const name = g.kind === 'other' ? g.name : `${g.kind} ${g.name}`;
  return `${name}: ${count(g.requests, 'request')}, ${g.valid.toLocaleString('en-US')} with a valid traceparent`;
}
