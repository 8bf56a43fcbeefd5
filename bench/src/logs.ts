// `meshtrace logs` throughput: MB of access log read per second, per format, from memory so the disk does
// not count. The generated logs look like a mesh's: mostly valid traceparents, some missing, some malformed,
// a few lines that are not requests, trace ids that repeat across hops.
//   node bench/dist/logs.js [--quick]
import { Readable } from 'node:stream';
import { scanLogs } from '@meshtrace/doctor';
import { fmt, median, table } from './stats';
import type { Section } from './stats';

type Format = 'envoy' | 'istio' | 'nginx';

/** How much log to read and how often. */
export interface LogsBenchOptions {
  /** Size of each generated log in MB. */
  megabytes: number;
  /** Timed reads per format; the median is reported. */
  rounds: number;
}

export const LOGS_FULL: LogsBenchOptions = { megabytes: 32, rounds: 7 };
export const LOGS_QUICK: LogsBenchOptions = { megabytes: 8, rounds: 3 };

const MB = 1e6;

function traceparent(i: number): string {
  const kind = i % 100;
  if (kind < 5) return '-';
  // About one request in three shares its trace with the one before: the next hop of the same trace.
  const trace = Math.floor(i / 3)
    .toString(16)
    .padStart(32, '0')
    .replace(/^0/, 'a');
  const flags = kind < 8 ? '0x' : '01';
  return `00-${trace}-${(i + 1).toString(16).padStart(16, '0')}-${flags}`;
}

function line(format: Format, i: number): string {
  const tp = traceparent(i);
  const service = `svc-${i % 20}`;
  const path = `/api/${service}/items/${i % 1000}?page=${i % 7}`;
  if (i % 50 === 49) return `2024-05-14T09:12:03.512Z warning envoy config  gRPC config stream closed: 13, (${i})`;
  switch (format) {
    case 'envoy':
      return `[2024-05-14T09:12:03.512Z] "GET ${path} HTTP/1.1" 200 - via_upstream - "-" 0 ${512 + (i % 300)} 14 12 "10.244.0.${i % 250}" "okhttp/4.12.0" "5d3e3c9e-7d2a-4c9b-9a57-${i.toString(16).padStart(12, '0')}" "${service}.shop.svc.cluster.local:8080" "10.244.1.${i % 250}:8080" outbound|8080||${service}.shop.svc.cluster.local 10.244.0.9:40212 10.96.12.4:8080 10.244.0.9:40210 - default traceparent=${tp}`;
    case 'istio':
      return JSON.stringify({
        start_time: '2024-05-14T09:12:03.512Z',
        method: 'GET',
        path,
        protocol: 'HTTP/1.1',
        response_code: 200,
        response_flags: '-',
        bytes_sent: 512 + (i % 300),
        duration: 14,
        user_agent: 'okhttp/4.12.0',
        request_id: `5d3e3c9e-7d2a-4c9b-9a57-${i.toString(16).padStart(12, '0')}`,
        authority: `${service}.shop.svc.cluster.local:8080`,
        upstream_host: `10.244.1.${i % 250}:8080`,
        upstream_cluster: `outbound|8080||${service}.shop.svc.cluster.local`,
        traceparent: tp === '-' ? null : tp,
      });
    case 'nginx':
      return `10.244.0.${i % 250} - - [14/May/2024:09:12:03 +0000] "GET ${path} HTTP/1.1" 200 ${512 + (i % 300)} "-" "okhttp/4.12.0" "${tp}"`;
  }
}

/** A log of about `megabytes` MB, as the 64 KiB chunks a file stream gives. */
function generate(format: Format, megabytes: number): { chunks: Buffer[]; bytes: number; lines: number } {
  const chunks: Buffer[] = [];
  let bytes = 0;
  let lines = 0;
  let pending: string[] = [];
  let pendingLength = 0;
  while (bytes + pendingLength < megabytes * MB) {
    const l = `${line(format, lines++)}\n`;
    pending.push(l);
    pendingLength += l.length;
    if (pendingLength >= 64 * 1024) {
      chunks.push(Buffer.from(pending.join('')));
      bytes += pendingLength;
      pending = [];
      pendingLength = 0;
    }
  }
  if (pending.length > 0) chunks.push(Buffer.from(pending.join('')));
  return { chunks, bytes: bytes + pendingLength, lines };
}

/** Reads a generated multi-MB log in each format with `scanLogs` and reports MB per second (median of the rounds). */
export async function benchLogs(
  options: LogsBenchOptions = LOGS_FULL,
  log: (line: string) => void = () => undefined,
): Promise<Section> {
  const rows: string[][] = [];
  for (const format of ['envoy', 'istio', 'nginx'] as const) {
    const { chunks, bytes, lines } = generate(format, options.megabytes);
    log(`logs: ${format}, ${fmt(bytes / MB, 1)} MB`);
    // One untimed read lets the JIT settle first.
    await scanLogs(Readable.from(chunks));
    const rates: number[] = [];
    for (let r = 0; r < options.rounds; r++) {
      const start = process.hrtime.bigint();
      const report = await scanLogs(Readable.from(chunks));
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      if (report.lines !== lines) throw new Error(`logs bench: read ${report.lines} of ${lines} ${format} lines`);
      rates.push(bytes / MB / seconds);
    }
    rows.push([format, fmt(bytes / MB, 1), fmt(lines), fmt(median(rates), 1)]);
  }
  return {
    title: 'Access-log reading (`meshtrace logs`)',
    lines: [
      ...table(['format', 'MB', 'lines', 'MB/s'], ['l', 'r', 'r', 'r'], rows),
      '',
      `Median of ${options.rounds} reads from memory, auto-detected format, default table limits; MB is 10^6 bytes.`,
    ],
    checks: [],
  };
}

if (require.main === module) {
  benchLogs(process.argv.includes('--quick') ? LOGS_QUICK : LOGS_FULL, console.log)
    .then((section) => console.log(`\n## ${section.title}\n\n${section.lines.join('\n')}`))
    .catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
}
