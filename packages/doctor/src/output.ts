/** Where a command writes, and how: every command takes one. */
export interface Output {
  line(text?: string): void;
  /** ANSI colours: only for a terminal, and not with `NO_COLOR`. */
  readonly color: boolean;
  /** Line width in columns. */
  readonly width: number;
}

/** A function that paints text in one SGR style, or leaves it as it is without colour. */
export type Paint = (text: string) => string;

/** The styles the commands use, plain when `color` is false. */
export interface Palette {
  readonly dim: Paint;
  readonly bold: Paint;
  readonly good: Paint;
  readonly warn: Paint;
  readonly bad: Paint;
  readonly bar: Paint;
}

/** The palette for `color`; one place for every command's ANSI codes. */
export function palette(color: boolean): Palette {
  const sgr = (code: string): Paint => (color ? (text) => `\u001b[${code}m${text}\u001b[0m` : (text) => text);
  return { dim: sgr('2'), bold: sgr('1'), good: sgr('32'), warn: sgr('33'), bad: sgr('31'), bar: sgr('36') };
}

/** Why a fetch failed, in one wording for every command: undici's cause code (ECONNREFUSED) when it has one. */
export function fetchFailure(err: unknown, timeoutMs?: number): string {
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError'))
    return timeoutMs === undefined ? 'no answer in time' : `no answer within ${timeoutMs} ms`;
  const cause = (err as { cause?: { code?: string; message?: string } } | undefined)?.cause;
  return cause?.code ?? cause?.message ?? (err instanceof Error ? err.message : String(err));
}
