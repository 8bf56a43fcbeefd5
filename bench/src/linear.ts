// Parsing cost must grow linearly with input length: no backtracking on untrusted input.
// Prints ns per byte for each parser from 1 KiB to 64 KiB and the 64 KiB / 1 KiB ratio.
import { parseBaggage, parseTraceparent, parseTracestate } from '@meshtrace/core';

const SIZES = [1024, 4096, 16384, 65536];
const T = '0af7651916cd43dd8448eb211c80319c';

/** Worst shapes we know for each parser: long runs it must scan, lists it must split. */
const shapes: Record<string, (bytes: number) => string> = {
  'traceparent, long tail': (n) => `00-${T}-b7ad6b7169203331-01`.padEnd(n, 'x'),
  'tracestate, one long value': (n) => `a=${'v'.repeat(n - 2)}`,
  'tracestate, empty members': (n) => `${','.repeat(n - 3)}a=1`,
  'tracestate, members without =': (n) => 'abc,'.repeat(n / 4),
  'baggage, many members': (n) => 'k=v,'.repeat(n / 4).slice(0, Math.min(n, 8192)),
  'baggage, over the limit': (n) => `a=${'x'.repeat(n - 2)}`,
  'baggage, percent-encoded': (n) => `a=${'%41'.repeat(Math.min(n, 8000) / 3)}`,
};
const parsers: Record<string, (s: string) => unknown> = {
  traceparent: parseTraceparent,
  tracestate: parseTracestate,
  baggage: parseBaggage,
};

function nsPerByte(parse: (s: string) => unknown, input: string): number {
  const rounds = Math.max(20, Math.floor(2_000_000 / input.length));
  for (let i = 0; i < rounds; i++) parse(input);
  const samples: number[] = [];
  for (let r = 0; r < 7; r++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < rounds; i++) parse(input);
    samples.push(Number(process.hrtime.bigint() - start) / rounds / input.length);
  }
  return samples.sort((a, b) => a - b)[3];
}

export function runLinear(): string[] {
  const lines = [
    `| input | ${SIZES.map((s) => `${s / 1024} KiB`).join(' | ')} | 64 KiB / 1 KiB |`,
    `|---|${SIZES.map(() => '---:').join('|')}|---:|`,
  ];
  let worst = 0;
  for (const [name, make] of Object.entries(shapes)) {
    const parse = parsers[name.split(',')[0]];
    const costs = SIZES.map((size) => nsPerByte(parse, make(size)));
    const ratio = costs[costs.length - 1] / costs[0];
    worst = Math.max(worst, ratio);
    lines.push(`| ${name} | ${costs.map((c) => c.toFixed(2)).join(' | ')} | ${ratio.toFixed(2)} |`);
  }
  lines.push(
    '',
    `ns per byte; the worst ratio is ${worst.toFixed(2)} (1.00 is perfectly linear; a backtracking parser grows with the size).`,
  );
  return lines;
}

if (require.main === module) console.log(runLinear().join('\n'));
