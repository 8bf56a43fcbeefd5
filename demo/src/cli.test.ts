import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from './mesh';

const ROOT = join(__dirname, '..', '..');
const ENTRY = join(ROOT, 'demo', 'dist', 'mesh.js');

// The test runs what `pnpm demo` runs: the compiled program, in a process of its own.
beforeAll(() => {
  const tsc = require.resolve('typescript/bin/tsc', { paths: [ROOT] });
  const built = spawnSync(process.execPath, [tsc, '-b', 'demo'], { cwd: ROOT, encoding: 'utf8' });
  if (built.status !== 0) throw new Error(`tsc -b demo failed:\n${built.stdout}${built.stderr}`);
}, 180_000);

interface Interrupt {
  /** A signal, or `close-stdout` for a reader that goes away (`pnpm demo | head -1`). */
  readonly signal: NodeJS.Signals | 'close-stdout';
  /** `demo`: only the demo's process; `group`: its whole process group, as Ctrl-C in a terminal does. */
  readonly to: 'demo' | 'group';
  /** Sent once stdout has a line matching this. */
  readonly when: RegExp;
}

interface Finished {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly interrupted: boolean;
  /** Processes still alive in the demo's process group after it exited (nginx, say). */
  readonly leftovers: string[];
  /** Sidecar directories left in the demo's temp directory. */
  readonly leftoverFiles: string[];
}

/** Live (non-zombie) processes whose process group is `pgid`, as "pid command". */
function processesInGroup(pgid: number): string[] {
  const found: string[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue;
    }
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'.
    const close = stat.lastIndexOf(')');
    const [state, , pgrp] = stat.slice(close + 2).split(' ');
    if (Number(pgrp) === pgid && state !== 'Z') found.push(`${entry} ${stat.slice(stat.indexOf('(') + 1, close)}`);
  }
  return found;
}

/**
 * Runs the compiled demo in a process group of its own, with a temp directory of its own (where
 * nginx keeps its files), and reports what it printed and what it left behind.
 */
async function runCompiled(args: string[], interrupt?: Interrupt, killAfterMs = 20_000): Promise<Finished> {
  const tmp = mkdtempSync(join(tmpdir(), 'meshtrace-demo-run-'));
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp };
  for (const name of Object.keys(env))
    if (name.startsWith('OTEL_') || name === 'NODE_OPTIONS' || name === 'NO_COLOR' || name === 'FORCE_COLOR')
      delete env[name];
  const child = spawn(process.execPath, [ENTRY, ...args], {
    cwd: ROOT,
    env,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pgid = child.pid!;
  let stdout = '';
  let stderr = '';
  let interrupted = false;
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
    if (interrupt !== undefined && !interrupted && interrupt.when.test(stdout)) {
      interrupted = true;
      if (interrupt.signal === 'close-stdout') child.stdout.destroy();
      else process.kill(interrupt.to === 'group' ? -pgid : pgid, interrupt.signal);
    }
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const kill = (pid: number): void => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  // A hung demo is killed with its whole group (nginx included) before jest's own timeout.
  const timer = setTimeout(() => kill(-pgid), killAfterMs);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.once('close', (c, s) => resolve([c, s])),
  );
  clearTimeout(timer);
  const leftovers = processesInGroup(pgid);
  // Never leave anything behind, even when the assertion below is about to fail.
  for (const p of leftovers) kill(Number(p.split(' ')[0]));
  const leftoverFiles = readdirSync(tmp);
  rmSync(tmp, { recursive: true, force: true });
  return { code, signal, stdout, stderr, interrupted, leftovers, leftoverFiles };
}

describe('pnpm demo', () => {
  test.each(['nginx', 'node'])(
    'runs to completion with %s sidecars: 0 orphaned roots with meshtrace, plain text, nothing left',
    async (sidecar) => {
      const run = await runCompiled(['--sidecar', sidecar]);
      expect({
        code: run.code,
        stderr: run.stderr,
        leftovers: run.leftovers,
        leftoverFiles: run.leftoverFiles,
      }).toEqual({ code: 0, stderr: '', leftovers: [], leftoverFiles: [] });
      expect(run.stdout).toMatch(/^with meshtrace: +3 requests → 3 traces, 15 spans, 0 orphaned roots$/m);
      expect(run.stdout).toMatch(
        /^without outbound propagation \(plain fetch\): +3 requests → 9 traces, 9 spans, 6 orphaned roots$/m,
      );
      expect(run.stdout).toContain(`each behind its own ${sidecar === 'nginx' ? 'nginx' : 'Node'} sidecar`);
      // The waterfall: the caller's trace continued through all three services, hop by hop.
      expect(run.stdout).toContain(
        "trace 4bf92f3577b34da6a3ce929d0e0e4736  continues the caller's span 00f067aa0ba902b7",
      );
      expect(run.stdout).toMatch(/^ {8}orders +GET \/orders\/:id +server +continued +\|[ █]+\| +\d+\.\d ms$/m);
      expect(run.stdout).toMatch(/^ {4}inventory +GET \/stock\/:sku +server +missing +\|[ █]+\| +\d+\.\d ms$/m);
      expect(run.stdout).toContain('new trace at the edge (malformed: bad-trace-id)');
      expect(run.stdout).toContain('ORPHANED ROOT: orders started a new trace (missing)');
      expect(run.stdout).toContain('request without traceparent; started a fresh root trace');
      // stdout is a pipe here: no colour codes.
      expect(run.stdout).not.toContain('\u001b[');
    },
  );

  test.each<[string, Interrupt & { signal: NodeJS.Signals }]>([
    ['SIGINT to the demo while the sidecars start', { signal: 'SIGINT', to: 'demo', when: /starting two copies/ }],
    [
      'SIGINT to the whole process group (Ctrl-C) while requests are in flight',
      { signal: 'SIGINT', to: 'group', when: /sending 3 requests/ },
    ],
    ['SIGTERM to the demo while requests are in flight', { signal: 'SIGTERM', to: 'demo', when: /sending 3 requests/ }],
  ])('%s: exits 0 and leaves no nginx or server behind', async (_name, interrupt) => {
    const run = await runCompiled(['--sidecar', 'nginx'], interrupt);
    expect({
      interrupted: run.interrupted,
      code: run.code,
      signal: run.signal,
      leftovers: run.leftovers,
      leftoverFiles: run.leftoverFiles,
    }).toEqual({
      interrupted: true,
      code: 0,
      signal: null,
      leftovers: [],
      leftoverFiles: [],
    });
    expect(run.stdout).toContain(`${interrupt.signal}: stopping the sidecars and services`);
    expect(run.stdout).toMatch(/stopped; nothing is left running\n$/);
    // It was stopped mid-run: no summary was printed.
    expect(run.stdout).not.toContain('3 requests →');
  });

  test('a reader that goes away (pnpm demo | head -1) ends the demo quietly, with nothing left behind', async () => {
    const run = await runCompiled(['--sidecar', 'nginx'], {
      signal: 'close-stdout',
      to: 'demo',
      when: /starting two copies/,
    });
    expect({
      interrupted: run.interrupted,
      code: run.code,
      stderr: run.stderr,
      leftovers: run.leftovers,
      leftoverFiles: run.leftoverFiles,
    }).toEqual({
      interrupted: true,
      code: 0,
      stderr: '',
      leftovers: [],
      leftoverFiles: [],
    });
  });

  test('--otlp sends every span as OTLP/HTTP protobuf and prints where they went instead of waterfalls', async () => {
    const posts: Array<{ path: string; type: string | undefined; body: Buffer }> = [];
    const collector = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        posts.push({ path: req.url ?? '', type: req.headers['content-type'], body: Buffer.concat(chunks) });
        res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
      });
    });
    await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`;
    try {
      const run = await runCompiled(['--sidecar', 'node', '--otlp', url]);
      expect({ code: run.code, stderr: run.stderr, leftovers: run.leftovers }).toEqual({
        code: 0,
        stderr: '',
        leftovers: [],
      });
      // 3 requests into each copy (15 + 9 spans), then one probe into each (5 + 3 spans).
      expect(run.stdout).toMatch(new RegExp(`^spans went to OTLP ${url}/v1/traces: 32 exported$`, 'm'));
      expect(run.stdout).toMatch(/^with meshtrace: +3 requests → 3 traces, 15 spans, 0 orphaned roots$/m);
      expect(run.stdout).not.toContain('ORPHANED ROOT');
      expect(posts.length).toBeGreaterThan(0);
      expect(new Set(posts.map((p) => `${p.path} ${p.type}`))).toEqual(new Set(['/v1/traces application/x-protobuf']));
      // Protobuf keeps strings and bytes as they are: the services and the caller's trace id are in the payload.
      const all = Buffer.concat(posts.map((p) => p.body));
      for (const service of ['gateway', 'orders', 'inventory']) expect(all.includes(Buffer.from(service))).toBe(true);
      expect(all.includes(Buffer.from('4bf92f3577b34da6a3ce929d0e0e4736', 'hex'))).toBe(true);
    } finally {
      await new Promise((resolve) => collector.close(resolve));
    }
  });

  test("--sidecar caddy --jaeger: waterfalls read back from a Jaeger of its own, with the sidecars' spans, and the probe through it", async () => {
    const run = await runCompiled(['--sidecar', 'caddy', '--jaeger'], undefined, 90_000);
    expect({
      code: run.code,
      stderr: run.stderr,
      leftovers: run.leftovers,
      leftoverFiles: run.leftoverFiles,
    }).toEqual({ code: 0, stderr: '', leftovers: [], leftoverFiles: [] });
    expect(run.stdout).toContain('each behind its own Caddy sidecar (tracing on');
    expect(run.stdout).toMatch(/^reading the traces back from Jaeger's query API \(http:\/\/127\.0\.0\.1:\d+\)$/m);
    // The caller's trace, as Jaeger holds it: each sidecar's span between the caller and its service.
    const waterfall = run.stdout.slice(
      run.stdout.indexOf("trace 4bf92f3577b34da6a3ce929d0e0e4736  continues the caller's span"),
    );
    const rows = waterfall
      .split('\n')
      .slice(1, 9)
      .map((line) =>
        line
          .replace(/\s*\|.*$/, '')
          .trim()
          .split(/\s+/)
          .slice(0, 3)
          .join(' '),
      );
    expect(rows).toEqual([
      'gateway-sidecar handler server',
      'gateway GET /checkout/:id',
      'gateway GET client',
      'orders-sidecar handler server',
      'orders GET /orders/:id',
      'orders GET client',
      'inventory-sidecar handler server',
      'inventory GET /stock/:sku',
    ]);
    // 3 services and 3 sidecars, 2 calls: 8 spans a request with meshtrace; 6 in 3 traces with plain fetch.
    expect(run.stdout).toMatch(/^with meshtrace: +3 requests → 3 traces, 24 spans, 0 orphaned roots$/m);
    expect(run.stdout).toMatch(/^without outbound propagation \(plain fetch\): +3 requests → 9 traces, 18 spans, /m);
    expect(run.stdout).toMatch(
      /^ {2}meshtrace probe http:\/\/127\.0\.0\.1:\d+\/checkout\/probe: 1 request, spans from Jaeger at /m,
    );
    expect(run.stdout).toContain(
      'WHOLE  8 spans from gateway, gateway-sidecar, inventory, inventory-sidecar, orders, orders-sidecar in one trace',
    );
    expect(run.stdout).toContain('probe → gateway via gateway-sidecar: continued (parent link)');
    expect(run.stdout).toContain('gateway → orders via orders-sidecar: continued (parent link)');
    expect(run.stdout).toMatch(/^without outbound propagation \(plain fetch\): exit 1$/m);
  }, 120_000);

  test('reports a bad argument with usage and exit code 2', async () => {
    const run = await runCompiled(['--sidecar', 'envoy']);
    expect({ code: run.code, stdout: run.stdout }).toEqual({ code: 2, stdout: '' });
    expect(run.stderr).toContain('--sidecar takes auto, nginx, node or caddy, not "envoy"');
    expect(run.stderr).toContain('usage: pnpm demo');
  });
});

describe('parseArgs', () => {
  test.each<[string, string[], Record<string, string>, ReturnType<typeof parseArgs>]>([
    ['defaults', [], {}, { otlpUrl: undefined, sidecars: 'auto', help: false }],
    [
      'pnpm passes "--" through',
      ['--', '--sidecar', 'node'],
      {},
      { otlpUrl: undefined, sidecars: 'node', help: false },
    ],
    [
      '--otlp base URL gets /v1/traces',
      ['--otlp', 'http://localhost:4318/'],
      {},
      { otlpUrl: 'http://localhost:4318/v1/traces', sidecars: 'auto', help: false },
    ],
    [
      '--otlp=URL already ending in /v1/traces',
      ['--otlp=http://tempo:4318/v1/traces'],
      {},
      { otlpUrl: 'http://tempo:4318/v1/traces', sidecars: 'auto', help: false },
    ],
    [
      'OTEL_EXPORTER_OTLP_ENDPOINT',
      [],
      { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318' },
      { otlpUrl: 'http://jaeger:4318/v1/traces', sidecars: 'auto', help: false },
    ],
    [
      'the signal-specific variable is used as is',
      [],
      { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/custom', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x:4318' },
      { otlpUrl: 'http://c:4318/custom', sidecars: 'auto', help: false },
    ],
    [
      'the flag wins over the environment',
      ['--otlp', 'http://a:4318'],
      { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://b:4318' },
      { otlpUrl: 'http://a:4318/v1/traces', sidecars: 'auto', help: false },
    ],
    [
      'not an http URL',
      ['--otlp', 'localhost:4317'],
      {},
      'the OTLP endpoint must be an http(s) URL, not "localhost:4317/v1/traces"',
    ],
    [
      '--otlp without a URL',
      ['--otlp'],
      { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://b:4318' },
      '--otlp needs a URL, such as http://localhost:4318',
    ],
    ['unknown flag', ['--verbose'], {}, 'unknown argument "--verbose"'],
    [
      '--sidecar caddy --jaeger',
      ['--sidecar', 'caddy', '--jaeger'],
      {},
      { otlpUrl: undefined, sidecars: 'caddy', help: false, jaeger: true },
    ],
    [
      '--jaeger exports to its own Jaeger: the OTLP variables are not read',
      ['--jaeger'],
      { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://b:4318' },
      { otlpUrl: undefined, sidecars: 'auto', help: false, jaeger: true },
    ],
    [
      '--jaeger with --otlp',
      ['--jaeger', '--otlp', 'http://a:4318'],
      {},
      '--jaeger exports to a Jaeger of its own: it takes neither --otlp nor --ui',
    ],
    [
      '--jaeger with --ui',
      ['--ui', '--jaeger'],
      {},
      '--jaeger exports to a Jaeger of its own: it takes neither --otlp nor --ui',
    ],
  ])('%s', (_name, argv, env, expected) => {
    expect(parseArgs(argv, env)).toEqual(expected);
  });
});
