import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stopChild } from './process';

/** What a sidecar does to the `traceparent` it forwards. */
export type TraceparentMode = 'pass' | 'strip' | 'uppercase' | 'duplicate';

/** How one nginx sidecar forwards to its service. */
export interface SidecarOptions {
  /** The service's port on 127.0.0.1. */
  upstreamPort: number;
  /** Terminate TLS with this certificate (an ingress), else plain HTTP. */
  tls?: { cert: string; key: string };
  /** Drop the trace headers on the way through, as a misconfigured proxy does. */
  stripTraceContext?: boolean;
  /**
   * What happens to `traceparent` on the way through (default `pass`): `strip` drops it alone,
   * `uppercase` forwards its hex in upper case (invalid, W3C trace-context §3.2.2.3), `duplicate`
   * sends it on two header lines.
   */
  traceparent?: TraceparentMode;
  /** More directives for the `location /` block. */
  extra?: string;
}

/** A running nginx reverse proxy on 127.0.0.1. */
export interface NginxSidecar {
  readonly port: number;
  readonly url: string;
  /** The access log so far: one line per request with the traceparent nginx saw. */
  accessLog(): string;
  stop(): Promise<void>;
}

/** Whether an `nginx` binary can be run. */
export function hasNginx(): boolean {
  return spawnSync('nginx', ['-v'], { stdio: 'ignore' }).status === 0;
}

/** A free TCP port on 127.0.0.1 (the kernel's choice). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function waitForPort(port: number, child: ChildProcess, errorLog: string, deadline: number): Promise<void> {
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`nginx exited with ${child.exitCode}: ${readSafe(errorLog)}`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => resolve(socket.end() !== undefined));
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`nginx did not listen on ${port} within the time allowed: ${readSafe(errorLog)}`);
}

function readSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

// nginx has no upper-case function: one map per character position rewrites one lower-case hex
// letter each, chained so that every position is visited ($mesh_tp_55 holds the result).
const TRACEPARENT_LENGTH = 55;
function upperCaseMaps(): string {
  const maps: string[] = [];
  for (let i = 0; i < TRACEPARENT_LENGTH; i++) {
    const from = i === 0 ? '$http_traceparent' : `$mesh_tp_${i}`;
    const rules = ['a', 'b', 'c', 'd', 'e', 'f']
      .map((c) => `    "~^(?<head>.{${i}})${c}(?<tail>.*)$" "\${head}${c.toUpperCase()}\${tail}";`)
      .join('\n');
    maps.push(`  map ${from} $mesh_tp_${i + 1} {\n    default ${from};\n${rules}\n  }`);
  }
  return maps.join('\n');
}

function traceparentDirectives(mode: TraceparentMode): string {
  if (mode === 'strip') return 'proxy_set_header traceparent "";';
  if (mode === 'uppercase') return `proxy_set_header traceparent $mesh_tp_${TRACEPARENT_LENGTH};`;
  if (mode === 'duplicate')
    return 'proxy_set_header traceparent $http_traceparent;\n      proxy_set_header traceparent $http_traceparent;';
  return '';
}

function config(dir: string, port: number, o: SidecarOptions): string {
  const strip = o.stripTraceContext
    ? 'proxy_set_header traceparent "";\n      proxy_set_header tracestate "";\n      proxy_set_header baggage "";'
    : traceparentDirectives(o.traceparent ?? 'pass');
  return `worker_processes 1;
daemon off;
user root;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  # Keep an incoming X-Request-Id, as Envoy does; make one only when there is none.
  map $http_x_request_id $mesh_request_id {
    '' $request_id;
    default $http_x_request_id;
  }
${o.traceparent === 'uppercase' ? upperCaseMaps() : ''}
  log_format mesh '$mesh_request_id "$request" $status traceparent="$http_traceparent"';
  access_log ${dir}/access.log mesh;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  server {
    listen 127.0.0.1:${port}${o.tls ? ' ssl' : ''};
    ${o.tls ? `ssl_certificate ${o.tls.cert};\n    ssl_certificate_key ${o.tls.key};` : ''}
    location / {
      proxy_pass http://127.0.0.1:${o.upstreamPort};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # The client's authority with its port, as Envoy keeps :authority: the callee's SERVER span then
      # records the address its caller's CLIENT span named.
      proxy_set_header Host $http_host;
      # What a mesh proxy adds; trace headers pass through untouched unless stripped.
      proxy_set_header X-Request-Id $mesh_request_id;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      ${strip}
      ${o.extra ?? ''}
    }
  }
}
`;
}

/**
 * Starts a real nginx reverse proxy on a free loopback port in front of `upstreamPort`, with its
 * configuration, logs and temp files in a directory of its own; `stop()` ends it and removes them.
 */
export async function startNginx(options: SidecarOptions): Promise<NginxSidecar> {
  const mode = options.traceparent ?? 'pass';
  if (!['pass', 'strip', 'uppercase', 'duplicate'].includes(mode))
    throw new TypeError(
      `@meshtrace/testkit: traceparent must be pass, strip, uppercase or duplicate, not ${JSON.stringify(mode)}`,
    );
  if (!hasNginx())
    throw new Error('nginx is not installed (apt-get install -y nginx); the sidecar tests need a real one');
  const dir = mkdtempSync(join(tmpdir(), 'meshtrace-nginx-'));
  mkdirSync(join(dir, 'tmp'));
  const port = await freePort();
  const conf = join(dir, 'nginx.conf');
  writeFileSync(conf, config(dir, port, options));
  const child = spawn('nginx', ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')], { stdio: 'ignore' });
  try {
    await waitForPort(port, child, join(dir, 'error.log'), Date.now() + 10_000);
  } catch (err) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    port,
    url: `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    accessLog: () => readSafe(join(dir, 'access.log')),
    stop: async () => {
      await stopChild(child, 5000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A self-signed certificate for 127.0.0.1/localhost, made with openssl in `dir`. */
export function selfSignedCert(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  const r = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ],
    { stdio: 'pipe' },
  );
  if (r.status !== 0) throw new Error(`openssl failed: ${r.stderr?.toString() ?? r.error?.message}`);
  return { cert, key };
}
