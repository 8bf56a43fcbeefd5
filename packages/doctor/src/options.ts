import { checkOptions, optionError } from '@meshtrace/core/adapter';

/** The package name every configuration error starts with. */
export const PACKAGE = '@meshtrace/doctor';

/** What a numeric option must be: a positive integer (core's rule), or a port. */
type NumberRule = 'positive integer' | 'port';

/**
 * Checks the numeric options of `options` by core's rules (a `TypeError` naming the package and the
 * option) and fills in the defaults; `port` allows 0, any free one.
 */
export function numbers<K extends string>(
  options: object,
  rules: Readonly<Record<K, readonly [NumberRule, number]>>,
): Record<K, number> {
  const given = options as Partial<Record<K, number>>;
  const out = {} as Record<K, number>;
  const positive: Partial<Record<K, 'positive integer'>> = {};
  for (const key in rules) {
    const [rule, fallback] = rules[key];
    const value = given[key];
    if (rule === 'positive integer') positive[key] = rule;
    else if (value !== undefined && !(Number.isInteger(value) && value >= 0 && value <= 65535))
      throw optionError(PACKAGE, key, 'an integer from 0 to 65535', value);
    out[key] = value ?? fallback;
  }
  checkOptions(PACKAGE, given, positive);
  return out;
}

/** `value` as an http(s) URL; anything else is a `TypeError` naming the option. */
export function httpUrl(value: unknown, option: string): URL {
  let url: URL | undefined;
  try {
    url = typeof value === 'string' ? new URL(value) : undefined;
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:'))
    throw optionError(PACKAGE, option, 'an http(s) URL', value);
  return url;
}
