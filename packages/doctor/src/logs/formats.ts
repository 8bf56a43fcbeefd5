/** The access-log formats `meshtrace logs` reads. */
export type LogFormat = 'envoy' | 'istio' | 'nginx';

/** The formats, in the order `--format` lists them. */
export const LOG_FORMATS: readonly LogFormat[] = ['envoy', 'istio', 'nginx'];

/** What one access-log line says about a request: where it went and the `traceparent` it carried. */
export interface LogEntry {
  /** `upstream` when the line names one (cluster, host or address), else `route` (method and path without the query). */
  readonly kind: 'upstream' | 'route';
  readonly name: string;
  /** The header value as logged; undefined when the proxy logged it as absent (`-`, null or no key). */
  readonly traceparent: unknown;
}

/** Why a line could not be read as a request. */
export type UnparseableReason =
  | 'not-envoy'
  | 'not-istio'
  | 'not-nginx'
  | 'no-traceparent-field'
  | 'unknown-format'
  | 'line-too-long';

/**
 * The fields of a text log line: `[bracketed]`, `"quoted"` and bare words, each with its brackets or quotes.
 * A quote inside a bare word runs to its closing quote, so `traceparent="a b"` is one field. Undefined when a
 * quote or bracket is not closed.
 */
export function splitFields(line: string): string[] | undefined {
  const fields: string[] = [];
  const len = line.length;
  let i = 0;
  while (i < len) {
    const c = line.charCodeAt(i);
    if (c === 32 || c === 9) {
      i++;
      continue;
    }
    const start = i;
    if (c === 91 /* [ */) {
      i = line.indexOf(']', i + 1);
      if (i < 0) return undefined;
      i++;
    } else {
      while (i < len) {
        const d = line.charCodeAt(i);
        if (d === 32 || d === 9) break;
        if (d === 34 /* " */) {
          i = line.indexOf('"', i + 1);
          if (i < 0) return undefined;
        }
        i++;
      }
    }
    fields.push(line.slice(start, i));
  }
  return fields;
}

function isQuoted(field: string): boolean {
  return field.length >= 2 && field.charCodeAt(0) === 34 && field.charCodeAt(field.length - 1) === 34;
}

function unquote(field: string): string {
  return isQuoted(field) ? field.slice(1, -1) : field;
}

/** Envoy and nginx write `-` for a value they do not have. */
function present(value: string | undefined): string | undefined {
  return value === undefined || value === '-' || value === '' ? undefined : value;
}

/** The value of the first `key=value` field among `keys` (case-insensitive keys, quotes removed), or undefined. */
function keyValue(fields: readonly string[], keys: readonly string[]): string | undefined {
  for (const key of keys) {
    for (const field of fields) {
      if (
        field.length > key.length &&
        field.charCodeAt(key.length) === 61 /* = */ &&
        field.slice(0, key.length).toLowerCase() === key
      )
        return unquote(field.slice(key.length + 1));
    }
  }
  return undefined;
}

const REQUEST_LINE = /^([A-Z]+) (\S+)(?: \S+)?$/;

/** `GET /orders` for `GET /orders?id=1 HTTP/1.1`: the query would make every request its own route. */
function route(method: unknown, path: unknown): string {
  if (typeof method !== 'string' || typeof path !== 'string' || method === '-' || path === '-')
    return '(unknown route)';
  const q = path.indexOf('?');
  return `${method} ${q < 0 ? path : path.slice(0, q)}`;
}

function routeOf(requestLine: string): string {
  const m = REQUEST_LINE.exec(requestLine);
  return m === null ? '(unknown route)' : route(m[1], m[2]);
}

/** Upstream names a text line may carry as `key=value`. */
const UPSTREAM_KEYS = ['upstream_cluster', 'upstream_host', 'upstream_addr', 'upstream'];
const TRACEPARENT_KEYS = ['traceparent', 'http_traceparent'];

function entry(upstream: string | undefined, routeName: string, traceparent: unknown): LogEntry {
  return upstream === undefined
    ? { kind: 'route', name: routeName, traceparent }
    : { kind: 'upstream', name: upstream, traceparent };
}

/**
 * Envoy's default format with `traceparent=%REQ(TRACEPARENT)%` added (Istio's TEXT format is the same with
 * more fields). The upstream is `%UPSTREAM_CLUSTER%` where Istio logs it after `"%UPSTREAM_HOST%"`, else that host:
 * the last of the five quoted fields in a row `"%REQ(X-FORWARDED-FOR)%" ... "%UPSTREAM_HOST%"`.
 */
export function parseEnvoyLine(line: string): LogEntry | UnparseableReason {
  const f = splitFields(line);
  if (f === undefined || f.length < 2 || f[0].charCodeAt(0) !== 91 || !isQuoted(f[1])) return 'not-envoy';
  const traceparent = keyValue(f, TRACEPARENT_KEYS);
  if (traceparent === undefined) return 'no-traceparent-field';
  let upstream = keyValue(f, UPSTREAM_KEYS);
  for (let i = 2, run = 0; upstream === undefined && i < f.length; i++) {
    run = isQuoted(f[i]) ? run + 1 : 0;
    if (run >= 5 && (i + 1 === f.length || !isQuoted(f[i + 1]))) {
      const next = f[i + 1];
      const cluster = next !== undefined && !next.includes('=') ? present(next) : undefined;
      upstream = cluster ?? present(unquote(f[i])) ?? present(unquote(f[i - 1]));
      break;
    }
  }
  return entry(present(upstream), routeOf(unquote(f[1])), present(traceparent));
}

/** Istio's JSON access log (`meshConfig.accessLogEncoding: JSON`) with a `traceparent` key added. */
export function parseIstioLine(line: string): LogEntry | UnparseableReason {
  let o: unknown;
  try {
    o = JSON.parse(line);
  } catch {
    return 'not-istio';
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return 'not-istio';
  const r = o as Record<string, unknown>;
  const text = (v: unknown) => (typeof v === 'string' ? present(v) : undefined);
  const upstream = text(r.upstream_cluster) ?? text(r.upstream_host) ?? text(r.authority);
  const tp = r.traceparent;
  return entry(upstream, route(r.method, r.path), tp === null || tp === undefined || tp === '-' ? undefined : tp);
}

/**
 * nginx: `combined` with `$http_traceparent` after the user agent (quoted or not), or any format with
 * `traceparent="$http_traceparent"` (as `log_format mesh '$request_id "$request" $status traceparent="$http_traceparent"'`).
 * The upstream is `upstream_addr=$upstream_addr` when logged, else the route.
 */
export function parseNginxLine(line: string): LogEntry | UnparseableReason {
  const f = splitFields(line);
  if (f === undefined) return 'not-nginx';
  const r = f.findIndex((field) => isQuoted(field) && REQUEST_LINE.test(unquote(field)));
  if (r < 0) return 'not-nginx';
  let traceparent = keyValue(f, TRACEPARENT_KEYS);
  // combined: ... [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" <traceparent>
  if (
    traceparent === undefined &&
    r > 0 &&
    f[r - 1].charCodeAt(0) === 91 &&
    f.length > r + 5 &&
    isQuoted(f[r + 3]) &&
    isQuoted(f[r + 4])
  ) {
    traceparent = unquote(f[r + 5]);
  }
  if (traceparent === undefined) return 'no-traceparent-field';
  const upstream = keyValue(f, UPSTREAM_KEYS);
  return entry(present(upstream), routeOf(unquote(f[r])), present(traceparent));
}

/** The line parser for each format. */
export const PARSERS: Readonly<Record<LogFormat, (line: string) => LogEntry | UnparseableReason>> = {
  envoy: parseEnvoyLine,
  istio: parseIstioLine,
  nginx: parseNginxLine,
};

const ENVOY_START = /^\[[^\]]+\] "[A-Z]/;

/** The format one line looks like, or undefined: JSON is Istio's, `[time] "METHOD` Envoy's, a quoted request line elsewhere nginx's. */
export function detectFormat(line: string): LogFormat | undefined {
  const s = line.trimStart();
  if (s.startsWith('{')) return parseIstioLine(s) === 'not-istio' ? undefined : 'istio';
  if (ENVOY_START.test(s)) return 'envoy';
  return parseNginxLine(s) === 'not-nginx' ? undefined : 'nginx';
}
