import { parseTraceparent } from '@meshtrace/core';
import type { TraceparentReason } from '@meshtrace/core';
import { PARSERS, detectFormat } from './formats';
import type { LogEntry, LogFormat, UnparseableReason } from './formats';
import { readLines } from './lines';
import type { LogInput } from './lines';

/** How {@link scanLogs} reads. */
export interface ScanOptions {
  /** The log format, or `auto` (the default) to decide per input from its first line that looks like one. */
  format?: LogFormat | 'auto';
  /** Trace ids remembered for the one-hop check (default 100,000); the oldest is forgotten first, and counted. */
  maxTraces?: number;
  /** Upstreams or routes reported apart (default 1,000); requests to any further one are reported together. */
  maxGroups?: number;
}

/** A log to read and the name the report gives it (`-` for stdin). */
export interface NamedLogInput {
  readonly name: string;
  readonly input: LogInput;
}

/** One line quoted as evidence: where it is and its text (cut at 500 characters). */
export interface LogSample {
  readonly file: string;
  /** 1-based. */
  readonly line: number;
  /**
   * Empty for a one-hop trace id whose line was not kept: only a few lines per upstream waiting for a second hop are.
   */
  readonly text: string;
}

/** How many lines showed a finding, and one of them. */
export interface Finding {
  readonly count: number;
  readonly sample: LogSample;
}

/** The findings for one upstream or route. */
export interface GroupReport {
  /** As {@link LogEntry}'s kind; `other` collects the requests past `maxGroups` distinct upstreams or routes. */
  readonly kind: LogEntry['kind'] | 'other';
  readonly name: string;
  readonly requests: number;
  /** Requests with a valid `traceparent`. */
  readonly valid: number;
  readonly missing: Finding | undefined;
  readonly malformed: ReadonlyArray<Finding & { readonly reason: TraceparentReason }>;
  /** Valid trace ids seen at one hop only (see {@link HopReport}). */
  readonly oneHop: Finding | undefined;
}

/** One input: its format and its lines. */
export interface FileReport {
  readonly name: string;
  /** Undefined when auto-detection recognised none of its lines. */
  readonly format: LogFormat | undefined;
  readonly lines: number;
  readonly requests: number;
  readonly unparseable: number;
  /** Requests that carried a traceparent value at all, valid or not. */
  readonly withTraceparent: number;
  /** Requests with a valid traceparent. */
  readonly valid: number;
}

/**
 * How trace ids were followed across hops. A hop is where a proxy logged the request: with several inputs, an input
 * (each is one proxy); with one input, an upstream or route in it (Istio's inbound and outbound apart), so a retry or
 * a repeated request to the same place stays one hop. The check is judged only when some trace id was seen at two
 * hops: proof that the inputs hold consecutive hops of the same requests. Then every valid trace id seen at one hop
 * only is a finding; otherwise nothing is (cannot tell).
 */
export interface HopReport {
  /** `files`: several inputs, a hop is an input. `groups`: one input, a hop is an upstream or route in it. */
  readonly hop: 'files' | 'groups';
  /** True when some trace id was seen at two hops or more ({@link HopReport.linked} > 0). */
  readonly judged: boolean;
  /** Trace ids seen at two hops or more, forgotten ones included: the evidence the check is judged on. */
  readonly linked: number;
  readonly traceIds: number;
  /** Trace ids forgotten to stay within `maxTraces`: their hops are not judged. */
  readonly evicted: number;
  readonly maxTraces: number;
}

/** What {@link scanLogs} found. */
export interface LogReport {
  readonly files: readonly FileReport[];
  readonly lines: number;
  readonly requests: number;
  readonly unparseable: {
    readonly count: number;
    readonly reason: UnparseableReason | undefined;
    readonly sample: LogSample | undefined;
  };
  /** Upstreams and routes, those with the most findings first. */
  readonly groups: readonly GroupReport[];
  readonly hops: HopReport;
  /** Requests without, or with a malformed, traceparent, plus trace ids at one hop. */
  readonly findings: number;
}

const DEFAULTS = { format: 'auto', maxTraces: 100_000, maxGroups: 1_000 } as const;
/** Lines held while auto-detection looks for a line it knows; they are then read as that format, or counted. */
const DETECT_LINES = 20;
const SAMPLE_LENGTH = 500;
/** Lines kept per upstream or route while their trace id has one hop, so memory does not grow with `maxTraces`. */
const KEPT_PER_GROUP = 8;

interface Tally {
  count: number;
  sample: LogSample;
}

interface Group {
  readonly kind: GroupReport['kind'];
  readonly name: string;
  requests: number;
  valid: number;
  missing: Tally | undefined;
  readonly malformed: Map<TraceparentReason, Tally>;
  oneHop: Tally | undefined;
  /** Hops of this group holding their line. */
  kept: number;
}

interface Hop {
  hops: number;
  /** Where the trace id was last seen: an input's index with several inputs, else its group. */
  at: number | Group;
  readonly file: number;
  readonly line: number;
  readonly group: Group;
  /** The line, kept for a few trace ids per group while they have one hop: the evidence if they stay so. */
  sample: LogSample | undefined;
}

function forget(hop: Hop): void {
  if (hop.sample === undefined) return;
  hop.sample = undefined;
  hop.group.kept--;
}

function tally(t: Tally | undefined, sample: () => LogSample): Tally {
  if (t === undefined) return { count: 1, sample: sample() };
  t.count++;
  return t;
}

function finding(t: Tally | undefined): Finding | undefined {
  return t === undefined ? undefined : { count: t.count, sample: t.sample };
}

/**
 * Reads access logs line by line in bounded memory and reports, per upstream or route, requests without a
 * `traceparent`, malformed ones by core's reason, and trace ids seen at one hop only. Several inputs are
 * several proxies. Lines that are not requests of the format are counted; nothing in the input throws.
 */
export async function scanLogs(
  input: LogInput | readonly NamedLogInput[],
  options: ScanOptions = {},
): Promise<LogReport> {
  const o = { ...DEFAULTS, ...options };
  const inputs: readonly NamedLogInput[] = isInputList(input) ? input : [{ name: '-', input }];
  const groups = {
    upstream: new Map<string, Group>(),
    inbound: new Map<string, Group>(),
    route: new Map<string, Group>(),
  };
  const traces = new Map<string, Hop>();
  const files: FileReport[] = [];
  const unparseable = {
    count: 0,
    reason: undefined as UnparseableReason | undefined,
    sample: undefined as LogSample | undefined,
  };
  let other: Group | undefined;
  let evicted = 0;
  let linked = 0;
  let groupCount = 0;
  const multi = inputs.length > 1;

  function groupOf(e: LogEntry): Group {
    const map = groups[e.kind];
    let g = map.get(e.name);
    if (g !== undefined) return g;
    if (groupCount >= o.maxGroups) {
      other ??= newGroup('other', `(upstreams and routes past the first ${o.maxGroups})`);
      return other;
    }
    g = newGroup(e.kind, e.name);
    map.set(e.name, g);
    groupCount++;
    return g;
  }

  for (let fileIndex = 0; fileIndex < inputs.length; fileIndex++) {
    const { name, input: source } = inputs[fileIndex];
    let format: LogFormat | undefined = o.format === 'auto' ? undefined : o.format;
    let lines = 0;
    let requests = 0;
    let bad = 0;
    let withTraceparent = 0;
    let valid = 0;
    // Lines read while the format is still unknown; at most DETECT_LINES.
    const pending: { text: string; cut: boolean; n: number }[] = [];

    const read = (text: string, cut: boolean, n: number): void => {
      const sample = (): LogSample => ({
        file: name,
        line: n,
        text: text.length > SAMPLE_LENGTH ? `${text.slice(0, SAMPLE_LENGTH)}...` : text,
      });
      const e = format === undefined ? 'unknown-format' : cut ? 'line-too-long' : PARSERS[format](text);
      if (typeof e === 'string') {
        bad++;
        if (unparseable.count++ === 0) {
          unparseable.reason = e;
          unparseable.sample = sample();
        }
        return;
      }
      requests++;
      const g = groupOf(e);
      g.requests++;
      const tp = e.traceparent === undefined ? 'missing' : parseTraceparent(e.traceparent);
      // Core's `missing` is an empty value: the request carried no trace context, it is not malformed.
      if (tp === 'missing') {
        g.missing = tally(g.missing, sample);
        return;
      }
      withTraceparent++;
      if (typeof tp === 'string') {
        g.malformed.set(tp, tally(g.malformed.get(tp), sample));
        return;
      }
      g.valid++;
      valid++;
      const at = multi ? fileIndex : g;
      const hop = traces.get(tp.traceId);
      if (hop !== undefined) {
        // The same hop again (a retry, a second call with the same header) is not a second hop.
        if (hop.at !== at) {
          if (hop.hops++ === 1) linked++;
          hop.at = at;
          forget(hop);
        }
        return;
      }
      if (traces.size >= o.maxTraces) {
        const [oldest, gone] = traces.entries().next().value!;
        forget(gone);
        traces.delete(oldest);
        evicted++;
      }
      const keep = g.kept < KEPT_PER_GROUP;
      if (keep) g.kept++;
      traces.set(tp.traceId, {
        hops: 1,
        at,
        file: fileIndex,
        line: n,
        group: g,
        sample: keep ? sample() : undefined,
      });
    };

    for await (const { text, cut } of readLines(source)) {
      const n = ++lines;
      if (isBlank(text)) continue;
      if (format !== undefined) {
        read(text, cut, n);
        continue;
      }
      pending.push({ text, cut, n });
      format = cut ? undefined : detectFormat(text);
      if (format !== undefined || pending.length === DETECT_LINES) {
        for (const p of pending) read(p.text, p.cut, p.n);
        pending.length = 0;
      }
    }
    for (const p of pending) read(p.text, p.cut, p.n);
    files.push({ name, format, lines, requests, unparseable: bad, withTraceparent, valid });
  }

  const judged = linked > 0;
  if (judged) {
    for (const hop of traces.values()) {
      if (hop.hops !== 1) continue;
      const g = hop.group;
      g.oneHop = tally(g.oneHop, () => hop.sample ?? { file: inputs[hop.file].name, line: hop.line, text: '' });
      if (g.oneHop.sample.text === '' && hop.sample !== undefined) g.oneHop.sample = hop.sample;
    }
  }
  const all = [
    ...groups.upstream.values(),
    ...groups.inbound.values(),
    ...groups.route.values(),
    ...(other === undefined ? [] : [other]),
  ];
  const reports = all.map(groupReport);
  const score = (g: GroupReport) =>
    (g.missing?.count ?? 0) + g.malformed.reduce((n, m) => n + m.count, 0) + (g.oneHop?.count ?? 0);
  reports.sort((a, b) => score(b) - score(a) || b.requests - a.requests);
  return {
    files,
    lines: files.reduce((n, f) => n + f.lines, 0),
    requests: files.reduce((n, f) => n + f.requests, 0),
    unparseable: { ...unparseable },
    groups: reports,
    hops: { hop: multi ? 'files' : 'groups', judged, linked, traceIds: traces.size, evicted, maxTraces: o.maxTraces },
    findings: reports.reduce((n, g) => n + score(g), 0),
  };
}

function isInputList(input: LogInput | readonly NamedLogInput[]): input is readonly NamedLogInput[] {
  return Array.isArray(input);
}

function isBlank(text: string): boolean {
  if (text.length === 0) return true;
  const c = text.charCodeAt(0);
  return (c === 32 || c === 9) && text.trim().length === 0;
}

function newGroup(kind: Group['kind'], name: string): Group {
  return { kind, name, requests: 0, valid: 0, missing: undefined, malformed: new Map(), oneHop: undefined, kept: 0 };
}

function groupReport(g: Group): GroupReport {
  const malformed = [...g.malformed]
    .map(([reason, t]) => ({ reason, count: t.count, sample: t.sample }))
    .sort((a, b) => b.count - a.count);
  return {
    kind: g.kind,
    name: g.name,
    requests: g.requests,
    valid: g.valid,
    missing: finding(g.missing),
    malformed,
    oneHop: finding(g.oneHop),
  };
}
