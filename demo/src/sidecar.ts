import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import type { IncomingMessage, OutgoingHttpHeaders, Server, ServerResponse } from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { hasNginx, startCaddy, startNginx } from '@meshtrace/testkit';
import type { CaddyPropagator, CaddySampler } from '@meshtrace/testkit';

/**
 * Which proxy plays the sidecars: a real nginx, the small Node proxy below (neither records spans), or
 * Caddy with its OpenTelemetry tracing on, which records a SERVER span per request as a tracing sidecar does.
 */
export type SidecarKind = 'nginx' | 'node' | 'caddy';

/** How a tracing sidecar (Caddy) records and exports its spans. */
export interface SidecarTracing {
  /** `service.name` of the sidecar's spans, such as `orders-sidecar`. */
  serviceName: string;
  /** The OTLP/HTTP base URL it exports to (`/v1/traces` is added); none: it traces but exports nothing. */
  otlpEndpoint?: string;
  /** The headers it reads and writes (OTEL_PROPAGATORS). Default `tracecontext`. */
  propagators?: CaddyPropagator | readonly CaddyPropagator[];
  /** Its sampler (OTEL_TRACES_SAMPLER); `always_off` decides against a sampled caller. Default parent-based. */
  sampler?: CaddySampler;
}

/** How a sidecar forwards to the service behind it. */
export interface SidecarOptions {
  /** The service's port on 127.0.0.1. */
  upstreamPort: number;
  /** Terminate TLS with these PEM files (an ingress) instead of plain HTTP. */
  tls?: { cert: string; key: string };
  /** Drop `traceparent`, `tracestate` and `baggage`, as a misconfigured proxy does. */
  stripTraceContext?: boolean;
  /** Caddy only: how it traces. Default: service name `sidecar`, no export. */
  tracing?: SidecarTracing;
}

/** A running reverse proxy on 127.0.0.1. */
export interface Sidecar {
  readonly kind: SidecarKind;
  readonly port: number;
  readonly url: string;
  /** One line per request: request id, request line, status and the `traceparent` the proxy received (Caddy: its own log). */
  accessLog(): string;
  stop(): Promise<void>;
}

/** `nginx` when it can be run, else `node`. */
export function defaultSidecarKind(): SidecarKind {
  return hasNginx() ? 'nginx' : 'node';
}

/** Starts a sidecar of `kind` in front of `options.upstreamPort`. */
export async function startSidecar(kind: SidecarKind, options: SidecarOptions): Promise<Sidecar> {
  if (kind === 'node') return startNodeSidecar(options);
  if (kind === 'caddy') return startCaddySidecar(options);
  const nginx = await startNginx({
    upstreamPort: options.upstreamPort,
    tls: options.tls,
    stripTraceContext: options.stripTraceContext,
    // An ingress restates the trace headers, as ingress controllers with header allow-lists need to.
    extra: options.tls
      ? 'proxy_set_header traceparent $http_traceparent;\n      proxy_set_header tracestate $http_tracestate;\n      proxy_set_header baggage $http_baggage;'
      : undefined,
  });
  return { kind: 'nginx', port: nginx.port, url: nginx.url, accessLog: nginx.accessLog, stop: nginx.stop };
}

/** Caddy with its `tracing` directive on, in front of `options.upstreamPort` (the build `pnpm peers caddy` brings). */
async function startCaddySidecar(options: SidecarOptions): Promise<Sidecar> {
  if (options.tls !== undefined) throw new TypeError('@meshtrace/demo: a Caddy sidecar does not terminate TLS here');
  const tracing = options.tracing;
  const caddy = await startCaddy({
    upstreamPort: options.upstreamPort,
    stripTraceContext: options.stripTraceContext,
    serviceName: tracing?.serviceName ?? 'sidecar',
    otlpEndpoint: tracing?.otlpEndpoint,
    propagators: tracing?.propagators,
    sampler: tracing?.sampler,
  });
  return { kind: 'caddy', port: caddy.port, url: caddy.url, accessLog: caddy.output, stop: caddy.stop };
}

// RFC 9110 §7.6.1: these describe one connection and are never forwarded.
const HOP_BY_HOP = new Set(['connection', 'proxy-connection', 'keep-alive', 'te', 'transfer-encoding', 'upgrade']);
const TRACE_HEADERS = new Set(['traceparent', 'tracestate', 'baggage']);

/** The raw header pairs of `raw` minus hop-by-hop ones (and those `Connection` names) and `drop`. */
function forwardable(raw: readonly string[], drop?: ReadonlySet<string>): string[] {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].toLowerCase() === 'connection')
      for (const token of raw[i + 1].split(',')) named.add(token.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    if (HOP_BY_HOP.has(name) || named.has(name) || drop?.has(name)) continue;
    out.push(raw[i], raw[i + 1]);
  }
  return out;
}

function header(raw: readonly string[], name: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) if (raw[i].toLowerCase() === name) return raw[i + 1];
  return undefined;
}

/**
 * A reverse proxy that behaves like a mesh sidecar: it forwards every end-to-end header untouched
 * (duplicates and letter case included), adds `x-request-id` when there is none (as Envoy does),
 * appends `x-forwarded-for` and streams both bodies. Used when nginx is not installed.
 */
export async function startNodeSidecar(options: SidecarOptions): Promise<Sidecar> {
  const agent = new http.Agent({ keepAlive: true });
  const log: string[] = [];
  const scheme = options.tls ? 'https' : 'http';
  const drop = options.stripTraceContext ? TRACE_HEADERS : undefined;

  const forward = (req: IncomingMessage, res: ServerResponse): void => {
    const headers = forwardable(req.rawHeaders, drop);
    let requestId = header(headers, 'x-request-id');
    if (requestId === undefined) {
      requestId = randomUUID();
      headers.push('x-request-id', requestId);
    }
    const peer = req.socket.remoteAddress ?? '';
    const xff = header(headers, 'x-forwarded-for');
    const rest = forwardable(headers, new Set(['x-forwarded-for', 'x-forwarded-proto']));
    rest.push('x-forwarded-for', xff ? `${xff}, ${peer}` : peer, 'x-forwarded-proto', scheme);
    const line = `${requestId} "${req.method} ${req.url} HTTP/${req.httpVersion}"`;
    const seen = header(req.rawHeaders, 'traceparent') ?? '';
    res.once('finish', () => log.push(`${line} ${res.statusCode} traceparent="${seen}"`));

    const upstream = http.request({
      host: '127.0.0.1',
      port: options.upstreamPort,
      method: req.method,
      path: req.url,
      headers: rest as unknown as OutgoingHttpHeaders,
      agent,
    });
    upstream.once('response', (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, forwardable(answer.rawHeaders));
      answer.pipe(res);
    });
    upstream.once('error', () => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end('bad gateway\n');
      else res.destroy();
    });
    // The caller went away: so does the upstream request, as a proxy would cancel it.
    res.once('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  };

  const server: Server = options.tls
    ? https.createServer({ cert: readFileSync(options.tls.cert), key: readFileSync(options.tls.key) }, forward)
    : http.createServer(forward);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    kind: 'node',
    port,
    url: `${scheme}://127.0.0.1:${port}`,
    accessLog: () => log.map((l) => `${l}\n`).join(''),
    stop: async () => {
      const closed = new Promise((resolve) => server.close(resolve));
      server.closeAllConnections();
      agent.destroy();
      await closed;
    },
  };
}
