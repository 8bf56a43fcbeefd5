import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { join } from 'node:path';
import { startCaddy } from './caddy';
import { freePort, startNginx } from './nginx';
import type { TraceparentMode } from './nginx';
import { hasExited, stopChild } from './process';

/** A service with meshtrace set up by `setupMeshTracing` on this adapter. */
export type MeshAdapter = 'express' | 'fastify' | 'koa' | 'http';

/**
 * What a service runs: meshtrace on an adapter; `official`, the OpenTelemetry SDK for Node with its
 * auto-instrumentations and no meshtrace; `python-untraced`, an aiohttp service without OpenTelemetry;
 * `external`, a plain Node server without OpenTelemetry (a dependency outside the mesh).
 */
export type MeshServiceKind = MeshAdapter | 'official' | 'python-untraced' | 'external';

/** One application service of a process mesh. */
export interface MeshServiceSpec {
  readonly kind: MeshServiceKind;
  /** The nodes it calls (`GET <node>/work`, one after the other) on every request. */
  readonly calls?: readonly string[];
  /**
   * meshtrace services only: `meshtrace` calls with `meshFetch`, `plain-fetch` with `globalThis.fetch`. Default
   * `meshtrace`.
   */
  readonly client?: 'meshtrace' | 'plain-fetch';
  /** Inbound headers copied onto each call by hand: `request-id` copies `x-request-id`. Default `nothing`. */
  readonly forward?: 'nothing' | 'request-id';
  /** How long each request waits before calling on. Default 0. */
  readonly delayMs?: number;
  /** The exporter's batch delay (`OTEL_BSP_SCHEDULE_DELAY`), over the mesh's. */
  readonly batchDelayMs?: number;
  /** Added to the service's wall clock (ms, may be negative), as read by `Date.now` and `performance.timeOrigin`. */
  readonly clockSkewMs?: number;
}

/**
 * A proxy of a process mesh, in front of one node: nginx, which records nothing, or Caddy with its
 * tracing on, which records a SERVER span of its own (`service.name` the proxy's name) and forwards its context.
 */
export interface MeshProxySpec {
  readonly kind: 'nginx' | 'caddy';
  /** The node it forwards to. */
  readonly upstream: string;
  /** nginx only: what it does to `traceparent`. Default `pass`. */
  readonly traceparent?: TraceparentMode;
}

/** The nodes of a process mesh by name (a service's name is its `service.name`), and where its spans go. */
export interface ProcessMeshSpec {
  /** The node the probe is sent to. */
  readonly entry: string;
  readonly nodes: Readonly<Record<string, MeshServiceSpec | MeshProxySpec>>;
  /** The OTLP/HTTP base URL every service exports to (`/v1/traces` is added). */
  readonly otlpEndpoint: string;
  /** The exporters' batch delay, ms. Default 300. */
  readonly batchDelayMs?: number;
  /** Hit every service's `/healthz` as a Kubernetes probe does, every this many ms (`true`: 50) while the mesh runs. */
  readonly healthChecks?: boolean | number;
  /** How long one node may take to listen. Default 30000 ms. */
  readonly startTimeoutMs?: number;
}

/** One running node. */
export interface MeshNode {
  readonly kind: MeshServiceKind | MeshProxySpec['kind'];
  readonly port: number;
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** `127.0.0.1:<port>`, the authority its callers send. */
  readonly address: string;
}

/** A running process mesh. */
export interface ProcessMesh {
  /** `<entry's url>/work`. */
  readonly entryUrl: string;
  /** Every node, services and proxies, by name. */
  readonly services: Readonly<Record<string, MeshNode>>;
  /** How many health checks were answered so far. */
  healthChecks(): number;
  /** What a service process printed so far (standard output and error). */
  output(name: string): string;
  /** Stops every process and proxy; safe to call twice. */
  stop(): Promise<void>;
}

const PROGRAMS = join(__dirname, '..', 'mesh');
const ADAPTERS: ReadonlySet<string> = new Set(['express', 'fastify', 'koa', 'http']);
const SERVICE_KINDS: ReadonlySet<string> = new Set([...ADAPTERS, 'official', 'python-untraced', 'external']);
const OUTPUT_LIMIT = 64 * 1024;
const KUBE_PROBE = 'kube-probe/1.31';

function specError(message: string): TypeError {
  return new TypeError(`@meshtrace/testkit: ${message}`);
}

const isProxy = (spec: MeshServiceSpec | MeshProxySpec): spec is MeshProxySpec =>
  spec.kind === 'nginx' || spec.kind === 'caddy';
const dependencies = (spec: MeshServiceSpec | MeshProxySpec): readonly string[] =>
  isProxy(spec) ? [spec.upstream] : (spec.calls ?? []);

/** Checks names, kinds and references, and that no node reaches itself. */
function validate(spec: ProcessMeshSpec): void {
  const names = Object.keys(spec.nodes);
  if (!names.includes(spec.entry)) throw specError(`mesh entry ${JSON.stringify(spec.entry)} is not a node`);
  for (const [name, node] of Object.entries(spec.nodes)) {
    if (!isProxy(node) && !SERVICE_KINDS.has(node.kind))
      throw specError(`node ${name} has an unknown kind ${JSON.stringify(node.kind)}`);
    if (isProxy(node) && node.kind === 'caddy' && (node.traceparent ?? 'pass') !== 'pass')
      throw specError(`node ${name}: only nginx changes traceparent; Caddy forwards its own span's`);
    for (const dep of dependencies(node))
      if (!names.includes(dep)) throw specError(`node ${name} calls ${JSON.stringify(dep)}, which is not a node`);
    if (
      !isProxy(node) &&
      node.clockSkewMs !== undefined &&
      (node.kind === 'external' || node.kind === 'python-untraced')
    )
      throw specError(`node ${name}: clockSkewMs needs a service that records spans, not ${node.kind}`);
  }
  const visiting = new Set<string>();
  const done = new Set<string>();
  const visit = (name: string): void => {
    if (done.has(name)) return;
    if (visiting.has(name)) throw specError(`the mesh has a cycle through ${name}`);
    visiting.add(name);
    for (const dep of dependencies(spec.nodes[name])) visit(dep);
    visiting.delete(name);
    done.add(name);
  };
  for (const name of names) visit(name);
}

// Debian's python3-aiohttp installs into the system interpreter; a python3 earlier on PATH may lack it.
const PYTHONS = ['python3', '/usr/bin/python3'];
let python: string | undefined;

/** The first Python that imports aiohttp; throws, naming the package to install, when none does. */
function pythonWithAiohttp(): string {
  python ??= PYTHONS.find((p) => spawnSync(p, ['-c', 'import aiohttp'], { stdio: 'ignore' }).status === 0);
  if (python === undefined) {
    const tried = PYTHONS.join(', ');
    throw new Error(
      `no Python with aiohttp (tried ${tried}): apt-get install -y python3-aiohttp; python-untraced services need it`,
    );
  }
  return python;
}

/** Resolves once something accepts connections on `port`; rejects when `exited()` says the process is gone. */
async function waitListening(port: number, exited: () => string | undefined, deadline: number): Promise<void> {
  while (Date.now() < deadline) {
    const gone = exited();
    if (gone !== undefined) throw new Error(gone);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => resolve(socket.end() !== undefined));
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listened on ${port} within the time allowed`);
}

/** The environment of a service process: the parent's, without its OpenTelemetry and Node settings. */
function serviceEnv(
  name: string,
  node: MeshServiceSpec,
  spec: ProcessMeshSpec,
  port: number,
  calls: string[],
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env))
    if (!key.startsWith('OTEL_') && key !== 'NODE_OPTIONS' && !key.startsWith('MESH_')) env[key] = value;
  return {
    ...env,
    PORT: String(port),
    MESH_SERVICE: name,
    MESH_KIND: node.kind,
    MESH_CLIENT: node.client ?? 'meshtrace',
    MESH_FORWARD: node.forward ?? 'nothing',
    MESH_CALLS: JSON.stringify(calls),
    MESH_DELAY_MS: String(node.delayMs ?? 0),
    MESH_CLOCK_SKEW_MS: String(node.clockSkewMs ?? 0),
    OTEL_SERVICE_NAME: name,
    OTEL_EXPORTER_OTLP_ENDPOINT: spec.otlpEndpoint.replace(/\/+$/, ''),
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    OTEL_TRACES_EXPORTER: 'otlp',
    OTEL_METRICS_EXPORTER: 'none',
    OTEL_LOGS_EXPORTER: 'none',
    OTEL_NODE_RESOURCE_DETECTORS: 'env,host,process',
    OTEL_BSP_SCHEDULE_DELAY: String(node.batchDelayMs ?? spec.batchDelayMs ?? 300),
    OTEL_LOG_LEVEL: 'warn',
  };
}

/**
 * Starts a mesh of real processes on free 127.0.0.1 ports: every node after the nodes it calls,
 * independent ones at the same time, each service exporting OTLP/HTTP to `spec.otlpEndpoint` in
 * short batches; resolves once every node listens. Fails (having stopped what it started) when a
 * node does not come up; `stop()` ends every process. The service programs run against the built
 * packages (`tsc -b`).
 * @example
 * const mesh = await startProcessMesh({
 *   entry: 'a',
 *   nodes: { a: { kind: 'express', calls: ['b'] }, b: { kind: 'koa' } },
 *   otlpEndpoint,
 * });
 */
export async function startProcessMesh(spec: ProcessMeshSpec): Promise<ProcessMesh> {
  validate(spec);
  const deadlineMs = spec.startTimeoutMs ?? 30_000;
  const children = new Map<string, ChildProcess>();
  const outputs = new Map<string, string>();
  const proxies: Array<{ stop(): Promise<void> }> = [];
  const started = new Map<string, Promise<MeshNode>>();
  let stopping = false;

  const startService = async (name: string, node: MeshServiceSpec, calls: string[]): Promise<MeshNode> => {
    const port = await freePort();
    const env = serviceEnv(name, node, spec, port, calls);
    const child =
      node.kind === 'python-untraced'
        ? spawn(pythonWithAiohttp(), [join(PROGRAMS, 'untraced.py')], { env, stdio: ['ignore', 'pipe', 'pipe'] })
        : spawn(
            process.execPath,
            [...(node.clockSkewMs ? ['--require', join(PROGRAMS, 'skew.js')] : []), join(PROGRAMS, 'service.js')],
            { env, stdio: ['ignore', 'pipe', 'pipe'] },
          );
    children.set(name, child);
    outputs.set(name, '');
    const keep = (chunk: Buffer): void =>
      void outputs.set(name, (outputs.get(name) + chunk.toString()).slice(-OUTPUT_LIMIT));
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    let spawnError: Error | undefined;
    child.once('error', (err) => {
      spawnError = err;
    });
    const exited = (): string | undefined => {
      if (spawnError !== undefined) return `${name} (${node.kind}) could not start: ${spawnError.message}`;
      if (!hasExited(child)) return undefined;
      return `${name} (${node.kind}) exited with ${child.exitCode ?? child.signalCode}: ${outputs.get(name)}`;
    };
    await waitListening(port, exited, Date.now() + deadlineMs);
    return { kind: node.kind, port, url: `http://127.0.0.1:${port}`, address: `127.0.0.1:${port}` };
  };

  const start = (name: string): Promise<MeshNode> => {
    let running = started.get(name);
    if (running === undefined) {
      const node = spec.nodes[name];
      running = Promise.all(dependencies(node).map(start)).then(async (deps) => {
        if (stopping) throw new Error(`the mesh stopped before ${name} started`);
        if (!isProxy(node))
          return startService(
            name,
            node,
            deps.map((d) => d.url),
          );
        const upstreamPort = deps[0].port;
        const proxy =
          node.kind === 'caddy'
            ? await startCaddy({ upstreamPort, otlpEndpoint: spec.otlpEndpoint, serviceName: name })
            : await startNginx({ upstreamPort, traceparent: node.traceparent });
        proxies.push(proxy);
        return { kind: node.kind, port: proxy.port, url: proxy.url, address: `127.0.0.1:${proxy.port}` };
      });
      started.set(name, running);
    }
    return running;
  };

  let checks = 0;
  let health: { stop(): Promise<void> } | undefined;
  const stop = async (): Promise<void> => {
    stopping = true;
    await health?.stop();
    await Promise.allSettled(started.values());
    await Promise.all([
      ...[...children.values()].map((child) => stopChild(child, 3000)),
      ...proxies.splice(0).map((p) => p.stop()),
    ]);
  };

  const services: Record<string, MeshNode> = {};
  try {
    const names = Object.keys(spec.nodes);
    const nodes = await Promise.all(names.map(start));
    for (const [i, name] of names.entries()) services[name] = nodes[i];
  } catch (err) {
    await stop();
    throw err;
  }
  if (spec.healthChecks) {
    const every = spec.healthChecks === true ? 50 : spec.healthChecks;
    const targets = Object.entries(spec.nodes)
      .filter(([, node]) => !isProxy(node))
      .map(([name]) => `${services[name].url}/healthz`);
    health = startHealthChecks(targets, every, () => void checks++);
  }
  return {
    entryUrl: `${services[spec.entry].url}/work`,
    services,
    healthChecks: () => checks,
    output: (name) => outputs.get(name) ?? '',
    stop,
  };
}

/** GETs each of `urls` every `everyMs` with no trace headers and a kube-probe user agent, until stopped. */
function startHealthChecks(urls: readonly string[], everyMs: number, answered: () => void): { stop(): Promise<void> } {
  let running = true;
  const loop = (async () => {
    while (running) {
      const round = Date.now();
      await Promise.all(
        urls.map(async (url) => {
          try {
            const res = await fetch(url, { headers: { 'user-agent': KUBE_PROBE }, signal: AbortSignal.timeout(2000) });
            await res.arrayBuffer();
            if (res.ok) answered();
          } catch {
            // A check that fails is a check; the probe's verdict is what is under test.
          }
        }),
      );
      await new Promise((r) => setTimeout(r, Math.max(0, everyMs - (Date.now() - round))));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
    },
  };
}
