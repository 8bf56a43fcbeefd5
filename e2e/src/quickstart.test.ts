import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startReceiver } from '@meshtrace/doctor';
import type { Receiver, Span } from '@meshtrace/doctor';
import { stopChild } from '@meshtrace/testkit';
import { packTarballs, ROOT } from './pack';
import { run, userEnv } from './run';
import { FRAMEWORKS, OTEL_3 } from './versions';

/**
 * The README's quick starts, followed as a newcomer follows them: the code blocks marked
 * `<!-- quickstart: name -->` are read from README.md, their install lines run with npm in a fresh
 * `npm init -y` app, the files are written under the names their first comment gives, started with the
 * README's command line, and sent the README's `curl` request. The spans go to a real OTLP receiver, the
 * doctor's (what the README tells readers to start), and the test asserts one trace: the caller's.
 *
 * What is substituted, and only that: the packed tarballs for `@meshtrace/*` and the versions the other
 * e2e tests pin for the rest (a registry name alone would make a failure depend on the day); a free port
 * for 3000 and the receiver's URL for `http://localhost:4318`; and a batch delay of 200 ms in the
 * environment, so the spans arrive in a test's time.
 */

const README = readFileSync(join(ROOT, 'README.md'), 'utf8');

/** Every marked block of the README, by name. */
function quickstartBlocks(markdown: string): ReadonlyMap<string, string> {
  const blocks = new Map<string, string>();
  for (const m of markdown.matchAll(/<!-- quickstart: ([\w-]+) -->\n```\w*\n([\s\S]*?)\n```/g)) {
    if (blocks.has(m[1])) throw new Error(`README.md marks two blocks "quickstart: ${m[1]}"`);
    blocks.set(m[1], m[2]);
  }
  return blocks;
}

const BLOCKS = quickstartBlocks(README);

function block(name: string): string {
  const text = BLOCKS.get(name);
  if (text === undefined)
    throw new Error(
      `README.md has no block marked <!-- quickstart: ${name} -->; it has ${[...BLOCKS.keys()].join(', ')}`,
    );
  return text;
}

/** A shell line of the README split into words, with `\` line continuations joined. */
function words(line: string): string[] {
  return line.replace(/\\\n/g, ' ').trim().split(/\s+/);
}

/** The packages `npm install a b c` names (an install block holds one such command). */
function installed(name: string): string[] {
  const w = words(block(name));
  if (w[0] !== 'npm' || w[1] !== 'install')
    throw new Error(`quickstart ${name} is not an npm install line: ${block(name)}`);
  return w.slice(2);
}

/** The packages a code block imports or requires (node: built-ins and relative files left out). */
function imports(code: string): string[] {
  const found = new Set<string>();
  for (const m of code.matchAll(/(?:require\(|from |import )'([^']+)'/g))
    if (!m[1].startsWith('node:') && !m[1].startsWith('.')) found.add(m[1]);
  return [...found].sort();
}

/** The file name a code block gives in its first line's comment (`// app.js`, `// tracing.mjs (ES module)`). */
function fileName(name: string): string {
  const m = /^\/\/ ([\w.-]+\.m?js)\b/.exec(block(name));
  if (m === null)
    throw new Error(`quickstart ${name} does not name its file in its first line: ${block(name).split('\n')[0]}`);
  return m[1];
}

/** What an app's npm installs: the tarballs for meshtrace, the pinned versions for the rest. */
function spec(pkg: string, tarballs: ReadonlyMap<string, string>): string {
  const tarball = tarballs.get(pkg);
  if (tarball !== undefined) return tarball;
  const version = FRAMEWORKS[pkg] ?? OTEL_3.dependencies[pkg];
  if (version === undefined) throw new Error(`the README installs ${pkg}, which e2e/src/versions.ts does not pin`);
  return `${pkg}@${version}`;
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject).listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** An app folder made as the README says: `npm init -y`, then each install line in turn. */
interface QuickstartApp {
  readonly dir: string;
  readonly report: string;
}

async function installQuickstart(label: string, lines: readonly string[]): Promise<QuickstartApp> {
  const tarballs = await packTarballs();
  const dir = mkdtempSync(join(tmpdir(), `meshtrace-e2e-quickstart-${label}-`));
  let report = '';
  try {
    const init = await run('npm', ['init', '-y'], { cwd: dir, env: userEnv(), timeoutMs: 60_000 });
    if (init.code !== 0) throw new Error(`npm init -y exited ${init.code}: ${init.stderr}`);
    // Where the registry would serve the meshtrace packages a package depends on (@meshtrace/core under
    // an adapter), npm takes the tarballs instead; the app's own dependencies stay what the README installs.
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Record<string, unknown>;
    // (npm refuses an override of a direct dependency, so those the install lines name are left out.)
    const direct = new Set(lines.flatMap(installed));
    manifest.overrides = Object.fromEntries(
      [...tarballs].filter(([name]) => !direct.has(name)).map(([name, file]) => [name, `file:${file}`]),
    );
    writeFileSync(join(dir, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    for (const line of lines) {
      const args = ['install', ...installed(line).map((p) => spec(p, tarballs))];
      const flags = ['--no-audit', '--no-fund', '--loglevel=error', '--prefer-offline'];
      const result = await run('npm', [...args, ...flags], { cwd: dir, env: userEnv(), timeoutMs: 290_000 });
      report += `$ npm ${args.join(' ')}  (exit ${result.code}, ${result.ms} ms)\n${result.stdout}${result.stderr}\n`;
      if (result.code !== 0) throw new Error(`the README's install line "${line}" failed\n${report}`);
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return { dir, report };
}

/** A trace's spans as a failure message shows them. */
function describe_(spans: readonly Span[]): string {
  return spans
    .map(
      (s) =>
        `  ${s.kind} "${s.name}" span=${s.spanId} parent=${s.parentSpanId ?? '-'} path=${pathOf(s) || '-'} outcome=${String(s.attributes['meshtrace.propagation.outcome'] ?? '-')}`,
    )
    .join('\n');
}

function pathOf(span: Span): string {
  const value = span.attributes['url.path'] ?? span.attributes['http.target'];
  return typeof value === 'string' ? value : '';
}

/**
 * Writes `files` (block names) into the app, starts the README's run line with the receiver in place
 * of `localhost:4318`, sends the README's curl request, and resolves with the caller's trace as the
 * receiver got it, and what the app printed.
 */
async function runQuickstart(
  app: QuickstartApp,
  files: readonly string[],
  runLine: string,
  rewrite: (line: string) => string = (l) => l,
): Promise<{ trace: Span[]; all: Span[]; output: string; caller: { traceId: string; spanId: string } }> {
  const port = await freePort();
  for (const name of files)
    writeFileSync(join(app.dir, fileName(name)), `${block(name).replaceAll('3000', String(port))}\n`);
  const receiver: Receiver = await startReceiver({ port: 0 });
  let child: ChildProcess | undefined;
  let output = '';
  try {
    const line = rewrite(block(runLine)).replaceAll('http://localhost:4318', receiver.url);
    const w = words(line);
    const nodeAt = w.indexOf('node');
    const env = Object.fromEntries(w.slice(0, nodeAt).map((kv) => kv.split('=', 2) as [string, string]));
    child = spawn(process.execPath, w.slice(nodeAt + 1), {
      cwd: app.dir,
      env: userEnv({ ...env, OTEL_BSP_SCHEDULE_DELAY: '200' }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.setEncoding('utf8').on('data', (c: string) => (output += c));
    child.stderr?.setEncoding('utf8').on('data', (c: string) => (output += c));
    const started = child;
    const until = Date.now() + 30_000;
    while (!(await accepts(port))) {
      if (started.exitCode !== null || Date.now() > until)
        throw new Error(`\`${line}\` did not listen on ${port} (exit ${started.exitCode})\n${output}`);
      await sleep(100);
    }
    // The README's curl: its traceparent, its URL on the port the app was given.
    const curl = block('request');
    const traceparent = /-H 'traceparent: ([^']+)'/.exec(curl)?.[1] ?? '';
    const url = (/(http:\/\/\S+)/.exec(curl)?.[1] ?? '').replace('3000', String(port));
    const [, traceId, spanId] = traceparent.split('-');
    const answer = await fetch(url, { headers: { traceparent } });
    const body = await answer.text();
    if (answer.status !== 200) throw new Error(`GET ${url} answered ${answer.status} ${body}\n${output}`);
    const trace = () => receiver.spans().filter((s) => s.traceId === traceId);
    const done = Date.now() + 15_000;
    while (Date.now() < done && trace().filter((s) => s.kind === 'server').length < 2) await sleep(100);
    await sleep(500); // a second SERVER span for the same request, if one were made, would be here by now
    return { trace: trace(), all: receiver.spans(), output, caller: { traceId, spanId } };
  } finally {
    if (child !== undefined) await stopChild(child, 5000);
    await receiver.close();
  }
}

/** The caller's trace, as the README says it looks: SERVER /orders/42 → CLIENT → SERVER /stock/42, and nothing else at the top. */
function expectOneTrace(result: Awaited<ReturnType<typeof runQuickstart>>): void {
  const { trace, caller } = result;
  const servers = trace.filter((s) => s.kind === 'server');
  const orders = servers.filter((s) => pathOf(s).startsWith('/orders/42'));
  const stock = servers.filter((s) => pathOf(s).startsWith('/stock/42'));
  // The CLIENT span of the call to /stock/42, under the orders SERVER span (directly, or through the
  // handler spans an instrumentation adds in between).
  const byId = new Map(trace.map((s) => [s.spanId, s]));
  const under = (s: Span, ancestor: Span | undefined): boolean => {
    for (let at = byId.get(s.parentSpanId ?? ''); at !== undefined; at = byId.get(at.parentSpanId ?? ''))
      if (at === ancestor) return true;
    return false;
  };
  const client = trace.filter((s) => s.kind === 'client' && under(s, orders[0]));
  const seen = {
    ordersServerSpans: orders.length,
    ordersParent: orders[0]?.parentSpanId,
    ordersOutcome: orders[0]?.attributes['meshtrace.propagation.outcome'],
    clientSpansUnderIt: client.length,
    stockServerSpans: stock.length,
    stockParentIsTheClientSpan: stock.length === 1 && stock[0].parentSpanId === client[0]?.spanId,
  };
  const want = {
    ordersServerSpans: 1,
    ordersParent: caller.spanId,
    ordersOutcome: 'continued',
    clientSpansUnderIt: 1,
    stockServerSpans: 1,
    stockParentIsTheClientSpan: true,
  };
  if (JSON.stringify(seen) !== JSON.stringify(want)) {
    const others = result.all.filter((s) => s.traceId !== caller.traceId);
    throw new Error(
      `expected ${JSON.stringify(want)}\ngot      ${JSON.stringify(seen)}\n` +
        `spans of trace ${caller.traceId}:\n${describe_(trace) || '  (none)'}\n` +
        `spans of other traces:\n${describe_(others) || '  (none)'}\n--- app output ---\n${result.output.slice(-3000)}`,
    );
  }
}

describe('README quick start', () => {
  test('every install line lists exactly what its code imports (tracing: what @meshtrace/node loads, too)', () => {
    const nodePeers = Object.keys(
      (
        JSON.parse(readFileSync(join(ROOT, 'packages', 'node', 'package.json'), 'utf8')) as {
          peerDependencies: Record<string, string>;
        }
      ).peerDependencies,
    );
    const problems: string[] = [];
    const same = (what: string, code: string[], line: string[]) => {
      if (JSON.stringify(code) !== JSON.stringify([...line].sort()))
        problems.push(`${what}: the code imports ${code.join(' ')}, the install line says ${line.join(' ')}`);
    };
    for (const fw of ['express', 'fastify', 'koa', 'http'])
      for (const format of ['cjs', 'esm'])
        same(`${fw}-${format}`, imports(block(`${fw}-${format}`)), installed(`${fw}-install`));
    same('nodesdk-cjs', imports(block('nodesdk-cjs')), installed('nodesdk-install'));
    for (const format of ['cjs', 'esm']) {
      const code = imports(block(`tracing-${format}`));
      const line = installed('install-tracing');
      const rest = line.filter((p) => !code.includes(p));
      if (!code.every((p) => line.includes(p)) || !rest.every((p) => nodePeers.includes(p)))
        problems.push(
          `tracing-${format}: imports ${code.join(' ')}; the line also installs ${rest.join(' ')}, not all peers of @meshtrace/node (${nodePeers.join(' ')})`,
        );
    }
    expect(problems).toEqual([]);
  });

  describe.each([
    { framework: 'express', install: 'express-install' },
    { framework: 'fastify', install: 'fastify-install' },
    { framework: 'koa', install: 'koa-install' },
    { framework: 'http', install: 'http-install' },
  ])('$framework', ({ framework, install }) => {
    let app: QuickstartApp | undefined;
    let failed: unknown;
    beforeAll(async () => {
      try {
        app = await installQuickstart(framework, ['install-tracing', install]);
      } catch (err) {
        failed = err;
      }
    }, 600_000);
    afterAll(() => {
      if (app !== undefined) rmSync(app.dir, { recursive: true, force: true });
    });
    const ready = (): QuickstartApp => {
      if (failed !== undefined) throw failed;
      return app as QuickstartApp;
    };

    test(`${framework}, CommonJS (tracing.js, app.js, node --require): the caller's traceparent is continued by one SERVER span, and meshFetch carries it to the next SERVER span`, async () => {
      expectOneTrace(await runQuickstart(ready(), ['tracing-cjs', `${framework}-cjs`], 'run-cjs'));
    }, 60_000);

    test(`${framework}, ES module (tracing.mjs, app.mjs, node --import): the same one trace`, async () => {
      expectOneTrace(await runQuickstart(ready(), ['tracing-esm', `${framework}-esm`], 'run-esm'));
    }, 60_000);
  });

  describe('NodeSDK with auto-instrumentations, MeshPropagator and the Express app', () => {
    let app: QuickstartApp | undefined;
    let failed: unknown;
    beforeAll(async () => {
      try {
        app = await installQuickstart('nodesdk', ['nodesdk-install', 'express-install']);
      } catch (err) {
        failed = err;
      }
    }, 600_000);
    afterAll(() => {
      if (app !== undefined) rmSync(app.dir, { recursive: true, force: true });
    });
    const ready = (): QuickstartApp => {
      if (failed !== undefined) throw failed;
      return app as QuickstartApp;
    };

    test('CommonJS (instrumentation.js, app.js, node --require): one SERVER span continues the caller, the instrumentations carry it on', async () => {
      expectOneTrace(await runQuickstart(ready(), ['nodesdk-cjs', 'express-cjs'], 'nodesdk-run'));
    }, 60_000);

    test('ES module app (app.mjs) with the same instrumentation.js, as the README says: the same one trace', async () => {
      expect(README).toContain('`node --require\n./instrumentation.js app.mjs`');
      const esm = (line: string) => line.replace(/ app\.js$/, ' app.mjs');
      expectOneTrace(await runQuickstart(ready(), ['nodesdk-cjs', 'express-esm'], 'nodesdk-run', esm));
    }, 60_000);
  });
});
