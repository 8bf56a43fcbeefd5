/** The access-log formats `meshtrace logs` reads. */
export type LogFormat = 'envoy' | 'istio' | 'nginx';

/** The formats, in the order `--format` lists them. */
export const LOG_FORMATS: readonly LogFormat[] = ['envoy', 'istio', 'nginx'];

/** What one access-log line says about a request: where it went and the `traceparent` it carried. */
export interface LogEntry {
  /**
   * `upstream`: the service the proxy sent the request to (Istio's outbound cluster as `host:port`, else the
   * `:authority`, else the upstream address). `inbound`: a request an Istio sidecar received for its own pod (cluster
   * `inbound|…`), named by its `:authority`. `route`: neither is logged; method and path without the query.
   */
  readonly kind: 'upstream' | 'inbound' | 'route';
  readonly name: string;
  /** The header value as logged; undefined when the proxy logged it as absent or empty (`-`, `""`, null, no key). */
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

/**
 * The shape of a traceparent (W3C trace-context §3.2.2): version, 32-digit trace id, 16-digit parent id and flags,
 * hex digits in either case. Only used to find the field that holds one; core's parser gives the verdict.
 */
const TRACEPARENT_SHAPE = /^\s*[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}/i;

/** Whether `value` looks like a traceparent, valid or not (upper case, zero ids, a folded second value). */
export function looksLikeTraceparent(value: unknown): boolean {
  return typeof value === 'string' && TRACEPARENT_SHAPE.test(value);
}

/** Whether a key names the traceparent: `traceparent`, `http_traceparent`, `req_traceparent`, `x-traceparent`… */
function isTraceparentKey(key: string): boolean {
  return key.toLowerCase().includes('traceparent');
}

/**
 * Undefined for a value the proxy logged as absent: `-` (Envoy's and nginx's text), `""` (nginx `escape=json`, an
 * empty header), null (Envoy's JSON), blanks. An empty header carries no trace context, so it is missing, not
 * malformed.
 */
function present<T>(value: T): T | undefined {
  if (value === null || value === undefined) return undefined;
  if (typeof value !== 'string') return value;
  const s = value.trim();
  return s === '' || s === '-' ? undefined : value;
}

function text(value: unknown): string | undefined {
  return typeof value === 'string' ? present(value) : undefined;
}

function isQuoted(field: string): boolean {
  return field.length >= 2 && field.charCodeAt(0) === 34 && field.charCodeAt(field.length - 1) === 34;
}

function unquote(field: string): string {
  return isQuoted(field) ? field.slice(1, -1) : field;
}

const HEX2 = /^[0-9a-fA-F]{2}$/;

/**
 * nginx's default escaping undone: `"`, `\` and bytes below 0x20 or above 0x7e are logged as `\xHH`
 * (ngx_http_log_module, `escape=default`); the bytes are read back as UTF-8.
 */
export function unescapeNginx(s: string): string {
  if (!s.includes('\\x')) return s;
  const bytes: number[] = [];
  for (let i = 0; i < s.length; ) {
    if (s.charCodeAt(i) === 92 && s.charCodeAt(i + 1) === 120 && HEX2.test(s.slice(i + 2, i + 4))) {
      bytes.push(Number.parseInt(s.slice(i + 2, i + 4), 16));
      i += 4;
      continue;
    }
    const ch = String.fromCodePoint(s.codePointAt(i) ?? 0);
    for (const b of Buffer.from(ch, 'utf8')) bytes.push(b);
    i += ch.length;
  }
  return Buffer.from(bytes).toString('utf8');
}

/** A `key=value` field: the key (letters, digits, `_ - . :`) and its value without quotes; undefined for others. */
function keyValue(field: string): { key: string; value: string } | undefined {
  if (field.charCodeAt(0) === 34 || field.charCodeAt(0) === 91) return undefined;
  const eq = field.indexOf('=');
  if (eq <= 0 || !/^[A-Za-z0-9_.:-]+$/.test(field.slice(0, eq))) return undefined;
  return { key: field.slice(0, eq).toLowerCase(), value: unquote(field.slice(eq + 1)) };
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

/** Istio's clusters that name no service: the request went where its authority says. */
const ANONYMOUS_CLUSTERS = new Set(['PassthroughCluster', 'InboundPassthroughCluster', 'BlackHoleCluster']);

/**
 * Where an Envoy or Istio request went. Istio's cluster `outbound|8080|v1|orders.default.svc.cluster.local` is
 * `orders.default.svc.cluster.local:8080 (v1)`; `inbound|8080||` is a request to the sidecar's own pod, named by its
 * `:authority` so it stays apart from the outbound calls the same sidecar logs. Without a cluster that names a
 * service: the `:authority`, then the upstream address (one per pod, so the last resort), then the route.
 */
function destination(
  cluster: string | undefined,
  authority: string | undefined,
  upstreamHost: string | undefined,
  routeName: string,
): Pick<LogEntry, 'kind' | 'name'> {
  if (cluster !== undefined) {
    const parts = cluster.split('|');
    if (parts.length === 4 && (parts[0] === 'outbound' || parts[0] === 'inbound')) {
      const [direction, port, subset, host] = parts;
      const service = host === '' ? undefined : `${host}:${port}${subset === '' ? '' : ` (${subset})`}`;
      if (direction === 'inbound')
        return { kind: 'inbound', name: authority ?? service ?? upstreamHost ?? `port ${port}` };
      if (service !== undefined) return { kind: 'upstream', name: service };
    } else if (!ANONYMOUS_CLUSTERS.has(cluster.replace(/Ipv[46]$/, ''))) {
      return { kind: 'upstream', name: cluster };
    }
  }
  const name = authority ?? upstreamHost;
  return name === undefined ? { kind: 'route', name: routeName } : { kind: 'upstream', name };
}

function entry(where: Pick<LogEntry, 'kind' | 'name'>, traceparent: unknown): LogEntry {
  return { kind: where.kind, name: where.name, traceparent: present(traceparent) };
}

/** Keys a text line may carry its destination under, as `key=value`. */
const CLUSTER_KEYS = ['upstream_cluster', 'cluster'];
const AUTHORITY_KEYS = ['authority', 'host', 'http_host'];
const UPSTREAM_KEYS = ['upstream_host', 'upstream_addr', 'upstream'];
const KNOWN_KEYS = new Set([...CLUSTER_KEYS, ...AUTHORITY_KEYS, ...UPSTREAM_KEYS]);

function firstKey(pairs: ReadonlyArray<{ key: string; value: string }>, keys: readonly string[]): string | undefined {
  for (const key of keys) {
    const p = pairs.find((kv) => kv.key === key);
    if (p !== undefined) return present(p.value);
  }
  return undefined;
}

/**
 * The traceparent among a text line's fields, `undefined` as a value when it is logged empty, or `NO_FIELD`:
 * 1. a `key=value` whose key contains `traceparent` (`traceparent=`, `http_traceparent=`), whatever its value;
 * 2. else any `key=value` or quoted field whose value looks like a traceparent (`tp=00-…`, `"00-…"`);
 * 3. else the first field appended after a known layout's own fields (Envoy's or Istio's default format plus
 *    `"%REQ(TRACEPARENT)%"` or `tp=%REQ(TRACEPARENT)%`), whatever its value.
 */
function traceparentField(fields: readonly string[], from: number, appended: readonly string[] | undefined): unknown {
  const pairs: { key: string; value: string }[] = [];
  for (let i = from; i < fields.length; i++) {
    const kv = keyValue(fields[i]);
    if (kv === undefined) continue;
    if (isTraceparentKey(kv.key)) return kv.value;
    pairs.push(kv);
  }
  for (let i = from; i < fields.length; i++) {
    const f = fields[i];
    const value = isQuoted(f) ? f.slice(1, -1) : keyValue(f)?.value;
    if (looksLikeTraceparent(value)) return value;
  }
  for (const f of appended ?? []) {
    const kv = keyValue(f);
    if (kv === undefined) return unquote(f);
    if (!KNOWN_KEYS.has(kv.key)) return kv.value;
  }
  return NO_FIELD;
}

const NO_FIELD: unique symbol = Symbol('no traceparent field');

/** The first index from `from` that starts `n` quoted fields in a row, or -1. */
function quotedRun(f: readonly string[], from: number, n: number): number {
  for (let i = from, run = 0; i < f.length; i++) {
    run = isQuoted(f[i]) ? run + 1 : 0;
    if (run === n) return i - n + 1;
  }
  return -1;
}

/**
 * An Envoy access-log line in Envoy's default format, Istio's default TEXT format (which adds response details, the
 * cluster and addresses), or a custom format that starts `[%START_TIME%] "%REQ(:METHOD)% … %PROTOCOL%"`. The
 * traceparent: see {@link traceparentField}; in the default layouts the five quoted fields
 * `"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"` give the
 * authority and upstream, and Istio's `%UPSTREAM_CLUSTER%` follows them.
 */
export function parseEnvoyLine(line: string): LogEntry | UnparseableReason {
  const f = splitFields(line);
  if (f === undefined || f.length < 2 || f[0].charCodeAt(0) !== 91 || !isQuoted(f[1])) return 'not-envoy';
  const pairs = f
    .slice(2)
    .map(keyValue)
    .filter((kv) => kv !== undefined);
  let cluster = firstKey(pairs, CLUSTER_KEYS);
  let authority = firstKey(pairs, AUTHORITY_KEYS);
  let upstreamHost = firstKey(pairs, UPSTREAM_KEYS);
  let appended: string[] | undefined;
  const s = quotedRun(f, 2, 5);
  if (s >= 0) {
    authority ??= present(unquote(f[s + 3]));
    upstreamHost ??= present(unquote(f[s + 4]));
    // Istio: `"%UPSTREAM_TRANSPORT_FAILURE_REASON%"` at 6, then the run at 11 and six bare fields after it, the
    // cluster first; Envoy's default format ends with the run.
    let end = s + 5;
    const next = f[end];
    if (next !== undefined && !isQuoted(next) && keyValue(next) === undefined && next.includes('|')) {
      cluster ??= present(next);
      end++;
    }
    if (s === 11 && isQuoted(f[6]) && f.length >= s + 11) {
      cluster ??= present(f[s + 5]);
      end = s + 11;
    }
    appended = f.slice(end);
  }
  const traceparent = traceparentField(f, 2, appended);
  if (traceparent === NO_FIELD) return 'no-traceparent-field';
  return entry(destination(cluster, authority, upstreamHost, routeOf(unquote(f[1]))), traceparent);
}

/** The value of a JSON log's traceparent: under a key containing `traceparent`, else any string of its shape. */
function jsonTraceparent(r: Record<string, unknown>, depth = 0): unknown {
  for (const key in r) if (isTraceparentKey(key)) return r[key];
  for (const key in r) {
    const v = r[key];
    if (looksLikeTraceparent(v)) return v;
    // Nested objects, as `{"http": {"headers": {"traceparent": …}}}`.
    if (depth < 2 && typeof v === 'object' && v !== null && !Array.isArray(v)) {
      const inner = jsonTraceparent(v as Record<string, unknown>, depth + 1);
      if (inner !== undefined) return inner;
    }
  }
  return undefined;
}

function jsonObject(line: string): Record<string, unknown> | undefined {
  let o: unknown;
  try {
    o = JSON.parse(line);
  } catch {
    return undefined;
  }
  return typeof o === 'object' && o !== null && !Array.isArray(o) ? (o as Record<string, unknown>) : undefined;
}

const ISTIO_KEYS = ['upstream_cluster', 'authority', 'method', 'path', 'upstream_host'];

/**
 * Istio's JSON access log (`meshConfig.accessLogEncoding: JSON`: `method`, `path`, `authority`, `upstream_host`,
 * `upstream_cluster`…) or any Envoy `json_format` with those keys, with the traceparent under any key (see
 * {@link jsonTraceparent}); a line with none of those keys is not a request of this format. No traceparent key at all
 * is a request without one: Envoy leaves the key out with `omit_empty_values`.
 */
export function parseIstioLine(line: string): LogEntry | UnparseableReason {
  const r = jsonObject(line);
  if (r === undefined || !ISTIO_KEYS.some((k) => k in r)) return 'not-istio';
  const where = destination(
    text(r.upstream_cluster),
    text(r.authority),
    text(r.upstream_host),
    route(r.method, r.path),
  );
  return entry(where, jsonTraceparent(r));
}

const NGINX_JSON_KEYS = ['request', 'request_uri', 'uri', 'request_method', 'upstream_addr', 'remote_addr'];

/** `$upstream_addr` lists every server tried (`a, b`) and each internal redirect (`a : b`): the last one answered. */
function lastUpstream(addr: string | undefined): string | undefined {
  if (addr === undefined) return undefined;
  const all = addr.split(/\s*[,:]\s+|\s+:\s*/);
  return present(all[all.length - 1]);
}

/** nginx with `log_format … escape=json '{"request":"$request", …, "traceparent":"$http_traceparent"}'`. */
function parseNginxJson(line: string): LogEntry | UnparseableReason {
  const r = jsonObject(line);
  if (r === undefined || !NGINX_JSON_KEYS.some((k) => k in r)) return 'not-nginx';
  const method = text(r.request_method) ?? text(r.method);
  const request = text(r.request);
  let routeName: string;
  if (request !== undefined && REQUEST_LINE.test(request)) routeName = routeOf(request);
  else routeName = route(method, request ?? text(r.request_uri) ?? text(r.uri) ?? text(r.path));
  const upstream = lastUpstream(text(r.upstream_addr) ?? text(r.upstream));
  return entry(
    upstream === undefined ? { kind: 'route', name: routeName } : { kind: 'upstream', name: upstream },
    jsonTraceparent(r),
  );
}

/**
 * nginx: `combined` with `$http_traceparent` appended after the user agent (quoted or not), any format with
 * `traceparent="$http_traceparent"` (or another key, see {@link traceparentField}), or a JSON object per line
 * (`escape=json`). Values are read back from nginx's `\xHH` escaping. The upstream is `upstream_addr=$upstream_addr`
 * when logged, else the route.
 */
export function parseNginxLine(line: string): LogEntry | UnparseableReason {
  if (line.trimStart().startsWith('{')) return parseNginxJson(line);
  const f = splitFields(line);
  if (f === undefined) return 'not-nginx';
  const r = f.findIndex((field) => isQuoted(field) && REQUEST_LINE.test(unescapeNginx(unquote(field))));
  if (r < 0) return 'not-nginx';
  // combined: … [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent", then ours.
  const combined =
    r > 0 && f[r - 1].charCodeAt(0) === 91 && f.length > r + 4 && isQuoted(f[r + 3]) && isQuoted(f[r + 4]);
  const traceparent = traceparentField(f, r + 1, combined ? f.slice(r + 5) : undefined);
  if (traceparent === NO_FIELD) return 'no-traceparent-field';
  const pairs = f
    .slice(r + 1)
    .map(keyValue)
    .filter((kv) => kv !== undefined);
  const upstream = lastUpstream(firstKey(pairs, UPSTREAM_KEYS));
  const routeName = routeOf(unescapeNginx(unquote(f[r])));
  return entry(
    upstream === undefined ? { kind: 'route', name: routeName } : { kind: 'upstream', name: upstream },
    typeof traceparent === 'string' ? unescapeNginx(traceparent) : traceparent,
  );
}

/** The line parser for each format. */
export const PARSERS: Readonly<Record<LogFormat, (line: string) => LogEntry | UnparseableReason>> = {
  envoy: parseEnvoyLine,
  istio: parseIstioLine,
  nginx: parseNginxLine,
};

const ENVOY_START = /^\[[^\]]+\] "[A-Z]/;

/**
 * The format one line looks like, or undefined. JSON is nginx's when it has nginx's keys (`request`, `request_uri`,
 * `upstream_addr`…) and none of Istio's, else Istio's when it has Istio's keys; `[time] "METHOD` is Envoy's; a quoted
 * request line elsewhere nginx's.
 */
export function detectFormat(line: string): LogFormat | undefined {
  const s = line.trimStart();
  if (s.startsWith('{')) {
    const r = jsonObject(s);
    if (r === undefined) return undefined;
    if (ISTIO_KEYS.some((k) => k in r) && !('request' in r || 'upstream_addr' in r || 'request_uri' in r))
      return 'istio';
    return NGINX_JSON_KEYS.some((k) => k in r) ? 'nginx' : undefined;
  }
  if (ENVOY_START.test(s)) return 'envoy';
  return parseNginxLine(s) === 'not-nginx' ? undefined : 'nginx';
}
