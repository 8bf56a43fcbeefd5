import { cpus, totalmem } from 'node:os';

/** The middle value; the mean of the two middle ones for an even count. Robust to the odd noisy round. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Rotates `items` left by `by`, so each candidate takes every position across rounds. */
export function rotate<T>(items: readonly T[], by: number): T[] {
  const k = ((by % items.length) + items.length) % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

/** A Markdown table: the header row, the alignment row, then the rows. */
export function table(
  header: readonly string[],
  align: readonly ('l' | 'r')[],
  rows: readonly (readonly string[])[],
): string[] {
  const line = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), `|${align.map((a) => (a === 'r' ? '---:' : '---')).join('|')}|`, ...rows.map(line)];
}

/** One target of the issue, checked against the measured ratio. */
export interface Check {
  readonly target: string;
  readonly measured: string;
  readonly met: boolean;
}

/** A part of the results: its Markdown lines and the targets it checked. */
export interface Section {
  readonly title: string;
  readonly lines: string[];
  readonly checks: Check[];
}

export function fmt(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return 'n/a';
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** The machine a run is only comparable with itself on. */
export function machine(): { cpu: string; cores: number; memoryGiB: number; node: string; platform: string } {
  const list = cpus();
  const cpu = list[0]?.model?.trim() || 'unknown CPU';
  return {
    cpu,
    cores: list.length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** For a part run alone (`node bench/dist/<part>.js`): prints its lines and targets, or the error with exit code 1. */
export function printSection(section: Promise<Section>): void {
  section.then(
    (s) => {
      console.log(s.lines.join('\n'));
      for (const c of s.checks) console.log(`${c.met ? 'met' : 'MISSED'}: ${c.target}: ${c.measured}`);
    },
    (err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
