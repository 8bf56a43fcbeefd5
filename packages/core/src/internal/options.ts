import type { TracerProvider } from '@opentelemetry/api';
import { inspect } from 'node:util';

/** The `TypeError` a bad option deserves, named after the package and the option. */
export function optionError(pkg: string, option: string, expected: string, got: unknown): TypeError {
  let shown: string;
  try {
    if (typeof got === 'string') shown = JSON.stringify(got);
    else if (Array.isArray(got)) shown = `[${got.map(String).join(', ')}]`;
    // String(object) says nothing ("[object Object]"): show its first level.
    else if (typeof got === 'object' && got !== null) shown = inspect(got, { depth: 0, breakLength: Infinity });
    else shown = String(got);
  } catch {
    shown = typeof got;
  }
  return new TypeError(`${pkg}: option "${option}" must be ${expected}, got ${shown}`);
}

/** What an option must be: a kind, or the list of values it may take. */
export type OptionRule =
  | 'function'
  | 'boolean'
  | 'tracerProvider'
  | 'non-empty string'
  | 'positive integer'
  | readonly (string | boolean)[];

const EXPECTED: Record<Exclude<OptionRule, readonly unknown[]>, string> = {
  function: 'a function',
  boolean: 'a boolean',
  tracerProvider: 'a TracerProvider',
  'non-empty string': 'a non-empty string',
  'positive integer': 'a positive integer',
};

function fits(rule: OptionRule, value: unknown): boolean {
  switch (rule) {
    case 'function':
      return typeof value === 'function';
    case 'boolean':
      return typeof value === 'boolean';
    case 'tracerProvider':
      return typeof (value as TracerProvider | null)?.getTracer === 'function';
    case 'non-empty string':
      return typeof value === 'string' && value.length > 0;
    case 'positive integer':
      return Number.isInteger(value) && (value as number) > 0;
    default:
      return rule.includes(value as string | boolean);
  }
}

/**
 * Checks a factory's options at setup: `undefined` is `{}`, anything else not an object throws, and
 * each option given (not `undefined`) must fit its rule, or a `TypeError` names `pkg` and the option.
 * @example const o = checkOptions('@my/carrier', options, { tracerProvider: 'tracerProvider', hook: 'function' });
 */
export function checkOptions<O extends object>(
  pkg: string,
  options: O | undefined,
  rules: { readonly [K in keyof O]?: OptionRule },
): O {
  if (options === undefined) return {} as O;
  if (options === null || typeof options !== 'object' || Array.isArray(options))
    throw optionError(pkg, 'options', 'an object', options);
  for (const key in rules) {
    const rule = rules[key]!;
    const value = options[key];
    if (value !== undefined && !fits(rule, value)) {
      throw optionError(
        pkg,
        key,
        typeof rule === 'string' ? EXPECTED[rule as keyof typeof EXPECTED] : `one of ${rule.join(', ')}`,
        value,
      );
    }
  }
  return options;
}
