import { Readable } from 'node:stream';

/** Where a log comes from: a byte stream (a file, stdin) or its lines already split. */
export type LogInput = AsyncIterable<string> | Readable;

/** Longest line kept whole; the rest of a longer line is skipped, so one runaway line cannot take the memory. */
export const MAX_LINE_LENGTH = 64 * 1024;

/** One line of a log: its text (cut at {@link MAX_LINE_LENGTH}) and whether it was cut. */
export interface LogLine {
  readonly text: string;
  readonly cut: boolean;
}

/**
 * The lines of `input`, without their `\n` or `\r\n`. A byte stream is split here rather than by
 * node:readline, which holds a whole line however long it is: memory stays bounded by the longest kept line.
 */
export async function* readLines(input: LogInput): AsyncGenerator<LogLine> {
  if (!(input instanceof Readable)) {
    for await (const text of input) yield line(text.endsWith('\n') ? text.slice(0, -1) : text, false);
    return;
  }
  input.setEncoding('utf8');
  let carry = '';
  let cut = false;
  for await (const chunk of input as AsyncIterable<string>) {
    let start = 0;
    let nl = chunk.indexOf('\n');
    while (nl >= 0) {
      const text = carry + chunk.slice(start, nl);
      yield line(text, cut);
      carry = '';
      cut = false;
      start = nl + 1;
      nl = chunk.indexOf('\n', start);
    }
    if (!cut) {
      carry += chunk.slice(start);
      if (carry.length > MAX_LINE_LENGTH) {
        carry = carry.slice(0, MAX_LINE_LENGTH);
        cut = true;
      }
    }
  }
  if (carry.length > 0 || cut) yield line(carry, cut);
}

function line(text: string, cut: boolean): LogLine {
  const end = text.endsWith('\r') ? text.slice(0, -1) : text;
  return cut || end.length > MAX_LINE_LENGTH
    ? { text: end.slice(0, MAX_LINE_LENGTH), cut: true }
    : { text: end, cut: false };
}
