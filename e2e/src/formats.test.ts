import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { startApp } from './harness';
import type { RunningApp } from './harness';
import { appSuite, continued, expectNone, freshRoot, uppercaseTraceparent } from './interop';
import type { Expect } from './interop';
import { tarballSpecs } from './npm';
import { publishablePackages } from './pack';
import { run, userEnv } from './run';
import { FRAMEWORKS, OTEL_3, TYPESCRIPT, TYPE_CHECK_PEERS } from './versions';

/**
 * The packages ship one CommonJS build. These tests install the tarballs with npm and check that both
 * kinds of application get working packages from it: a CommonJS app that require()s them and an ES
 * module app that imports them (fixtures/cjs, fixtures/esm), on each framework, and TypeScript
 * resolving their declarations under `nodenext` (from ESM and from CommonJS) and `bundler`.
 */

const FORMATS = [
  { format: 'CommonJS', entry: join('cjs', 'app.js') },
  { format: 'ESM', entry: join('esm', 'app.js') },
] as const;
const ADAPTERS = ['express', 'fastify', 'koa'] as const;
const CASES = FORMATS.flatMap((f) => ADAPTERS.map((framework) => ({ ...f, framework })));

/** What the SDK 3 line's app installs to run @meshtrace/node's setup without NodeSDK. */
const SDK_3 = [
  '@opentelemetry/api',
  '@opentelemetry/sdk-trace',
  '@opentelemetry/resources',
  '@opentelemetry/context-async-hooks',
];

/** Without client instrumentations in these apps, only meshtrace's own outbound ways carry the trace. */
const EXPECT: Expect = { meshtrace: true, ways: ['meshFetch', 'injectHeaders'] };

describe('module formats', () => {
  const names = publishablePackages().map((p) => p.name);
  const sdk = Object.fromEntries(SDK_3.map((name) => [name, OTEL_3.dependencies[name]]));
  const suite = appSuite('formats', OTEL_3, (tarballs) => ({
    ...tarballSpecs(tarballs, names),
    ...sdk,
    ...FRAMEWORKS,
    ...TYPE_CHECK_PEERS,
    typescript: TYPESCRIPT,
  }));
  const { installed } = suite;

  test(`formats: every public package (${names.join(', ')}) installs with a plain npm install beside SDK ${OTEL_3.name}, the frameworks and TypeScript ${TYPESCRIPT}`, () => {
    if (suite.unusable !== undefined) throw suite.unusable;
    expectNone(suite.app?.ok ? [] : ['npm install failed or reported ERESOLVE'], () => suite.app?.report ?? '');
  });

  describe.each(CASES)('$format $framework app', ({ format, entry, framework }) => {
    const name = `${format} ${framework} app`;
    let started: RunningApp | undefined;
    let failed: unknown;

    beforeAll(async () => {
      try {
        // The batch processor's 5 s default delay would outlast the wait for spans.
        started = await startApp(installed().dir, entry, {
          DOWNSTREAM_URL: suite.downstream.url,
          FRAMEWORK: framework,
          OTEL_BSP_SCHEDULE_DELAY: '50',
        });
      } catch (err) {
        failed = err;
      }
    }, 60_000);

    afterAll(async () => {
      await started?.stop();
    });

    const running = (): RunningApp => {
      if (failed !== undefined) throw failed;
      return started as RunningApp;
    };

    test(`${name}: a valid traceparent is continued by one SERVER span, and meshFetch and injectHeaders carry the trace on`, async () => {
      await continued(running(), suite.downstream, EXPECT, 'both');
    });

    test(`${name}: a malformed (uppercase) traceparent restarts the trace, recorded as malformed, and is not forwarded`, async () => {
      await freshRoot(running(), suite.downstream, EXPECT, [uppercaseTraceparent()]);
    });
  });

  test('formats: the installed meshtrace command (node_modules/.bin/meshtrace) explains a header, and its exit code says valid or not', async () => {
    const bin = join(installed().dir, 'node_modules', '.bin', 'meshtrace');
    const ok = await run(bin, ['check', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'], {
      cwd: installed().dir,
      timeoutMs: 30_000,
    });
    const bad = await run(bin, ['check', '--json', '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01'], {
      cwd: installed().dir,
      timeoutMs: 30_000,
    });
    const report = JSON.parse(bad.stdout) as { valid: boolean; traceparent: { reason?: string } };
    expect({ ok: ok.code, bad: bad.code, valid: report.valid, reason: report.traceparent.reason }).toEqual({
      ok: 0,
      bad: 1,
      valid: false,
      reason: 'bad-trace-id',
    });
  });

  /**
   * Compiles fixtures/types/public-api.ts, which imports every public package, with the app's
   * TypeScript; `as` names the copies it compiles, whose extensions set their module format. Every
   * declaration file is checked (no skipLibCheck), so an error in meshtrace's own declarations fails
   * the test; errors inside other packages' declarations are theirs and are left out (today @types/koa
   * 3.0.3 names an `Options` that the `content-disposition` Koa 3 installs no longer exports).
   * Resolves with what is wrong.
   */
  async function typeCheck(as: readonly string[], options: readonly string[]): Promise<string[]> {
    const dir = installed().dir;
    for (const file of as) copyFileSync(join(dir, 'types', 'public-api.ts'), join(dir, 'types', file));
    const tsc = join(dir, 'node_modules', 'typescript', 'bin', 'tsc');
    const args = [
      '--noEmit',
      '--pretty',
      'false',
      '--strict',
      '--target',
      'es2022',
      '--types',
      'node',
      ...options,
      ...as.map((f) => join('types', f)),
    ];
    const result = await run(process.execPath, [tsc, ...args], { cwd: dir, env: userEnv(), timeoutMs: 120_000 });
    const output = `${result.stdout}\n${result.stderr}`;
    // One diagnostic per line that starts `file(line,col): error TS…` or `error TS…`; what follows, indented, is its detail.
    const errors = output.split('\n').filter((line) => /^(\S.*\(\d+,\d+\): )?error TS\d+/.test(line));
    const theirs = (line: string) => /^node_modules\//.test(line) && !line.startsWith('node_modules/@meshtrace/');
    const ours = errors.filter((line) => !theirs(line));
    if (ours.length === 0 && (result.code === 0 || errors.length > 0)) return [];
    const what =
      ours.length > 0
        ? `${ours.length} error(s) in meshtrace's declarations or the file importing them`
        : `tsc exited ${result.code} without a diagnostic`;
    return [`${what}\n\n$ tsc ${args.join(' ')}  (in ${dir})\n${output}`];
  }

  /** Both compiles, started together on first use: each takes seconds, and they need not wait for each other. */
  let checks: { nodenext: Promise<string[]>; bundler: Promise<string[]> } | undefined;
  const typeChecks = () =>
    (checks ??= {
      nodenext: typeCheck(['check.mts', 'check.cts'], ['--module', 'nodenext', '--moduleResolution', 'nodenext']),
      bundler: typeCheck(['check.ts'], ['--module', 'esnext', '--moduleResolution', 'bundler']),
    });

  test('formats: TypeScript with module and moduleResolution nodenext compiles an ES module (.mts) and a CommonJS module (.cts) importing every public package', async () => {
    const { nodenext, bundler } = typeChecks();
    // Settled here too, so that a failure of the other compile is reported by its own test, not as an unhandled rejection.
    bundler.catch(() => undefined);
    expectNone(await nodenext, () => '');
  }, 120_000);

  test('formats: TypeScript with module esnext and moduleResolution bundler compiles a module importing every public package', async () => {
    expectNone(await typeChecks().bundler, () => '');
  }, 120_000);
});
