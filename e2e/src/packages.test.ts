import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { basename, join, posix, relative } from 'node:path';
import { expectNone } from './interop';
import { ROOT, filesUnder, packTarballs, publishablePackages } from './pack';
import { run, userEnv } from './run';
import type { RunResult } from './run';

/**
 * Every publishable tarball, checked the way the ecosystem checks a package before it is published:
 * publint (the manifest, `exports` and the files it names) and Are the Types Wrong (types and module
 * format under every resolution mode), plus what neither looks at: what the tarball ships and the
 * version ranges pnpm writes over `workspace:`.
 */

/** A command-line tool from the root devDependencies, run with the Node that runs the tests. */
function tool(pkg: string): string {
  const dir = join(ROOT, 'node_modules', pkg);
  const { bin } = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  return join(dir, Object.values(bin)[0]);
}

/** The tools' runs, at most as many at once as there are cores (each one loads a TypeScript or a tarball). */
async function inPool<T, R>(items: readonly T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(availableParallelism(), items.length) }, worker));
  return out;
}

/** The files under `dir`, as `/`-separated paths relative to it. */
function packageFiles(dir: string): string[] {
  return filesUnder(dir).map((f) => relative(dir, f).split('\\').join('/'));
}

interface Manifest {
  name: string;
  version: string;
  license?: string;
  sideEffects?: unknown;
  keywords?: string[];
  homepage?: string;
  repository?: { url?: string; directory?: string };
  engines?: { node?: string };
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
}

/** Where a `//# sourceMappingURL=` comment points, if the file has one. */
const MAP_URL = /\/\/# sourceMappingURL=(\S+)\s*$/;

/** What is wrong with one unpacked tarball (its `package/` folder), as lines for the assertion. */
function contentProblems(
  unpacked: string,
  folder: string,
  root: Manifest,
  versions: ReadonlyMap<string, string>,
): string[] {
  const problems: string[] = [];
  const files = packageFiles(unpacked);
  const shipped = new Set(files);
  const pkg = JSON.parse(readFileSync(join(unpacked, 'package.json'), 'utf8')) as Manifest;

  for (const required of ['package.json', 'README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts'])
    if (!shipped.has(required)) problems.push(`ships no ${required}`);
  for (const file of files) {
    if (file.endsWith('.tsbuildinfo')) problems.push(`ships build info: ${file}`);
    if (/\.test(-util)?\.|__tests__/.test(file)) problems.push(`ships a test file: ${file}`);
    if (/\.[cm]?ts$/.test(file) && !/\.d\.[cm]?ts$/.test(file)) problems.push(`ships a source file: ${file}`);
    // A map, or a comment pointing at one, is only honest when what it points at ships too.
    if (file.endsWith('.map')) {
      const { sources = [] } = JSON.parse(readFileSync(join(unpacked, file), 'utf8')) as { sources?: string[] };
      for (const source of sources)
        if (!shipped.has(posix.join(posix.dirname(file), source)))
          problems.push(`${file} maps to ${source}, which does not ship`);
    }
    if (/\.(d\.)?[cm]?js$|\.d\.[cm]?ts$/.test(file)) {
      const url = MAP_URL.exec(readFileSync(join(unpacked, file), 'utf8'))?.[1];
      if (url !== undefined && !shipped.has(posix.join(posix.dirname(file), url)))
        problems.push(`${file} names the source map ${url}, which does not ship`);
    }
  }

  // pnpm pack writes real versions over `workspace:`; `workspace:^` on a package at 1.2.3 gives ^1.2.3.
  const manifestText = readFileSync(join(unpacked, 'package.json'), 'utf8');
  if (manifestText.includes('workspace:'))
    problems.push(
      `package.json still says workspace: ${manifestText.match(/"[^"]+": "workspace:[^"]*"/g)?.join(', ')}`,
    );
  for (const [dep, range] of Object.entries({
    ...pkg.dependencies,
    ...pkg.optionalDependencies,
    ...pkg.peerDependencies,
  })) {
    const version = versions.get(dep);
    if (version !== undefined && range !== `^${version}`)
      problems.push(
        `depends on ${dep} ${JSON.stringify(range)}, expected ^${version} (the workspace's version, as workspace:^ packs)`,
      );
  }

  if (pkg.license !== root.license) problems.push(`license ${pkg.license}, expected the root's ${root.license}`);
  if (pkg.engines?.node !== root.engines?.node)
    problems.push(`engines.node ${pkg.engines?.node}, expected the root's ${root.engines?.node} (what CI runs)`);
  if (pkg.repository?.directory !== `packages/${folder}`)
    problems.push(`repository.directory ${pkg.repository?.directory}, expected packages/${folder}`);
  if (pkg.repository?.url === undefined || pkg.homepage === undefined) problems.push('no repository.url or homepage');
  if (typeof pkg.sideEffects !== 'boolean' && !Array.isArray(pkg.sideEffects)) problems.push('no sideEffects');
  if ((pkg.keywords ?? []).length === 0) problems.push('no keywords');
  return problems;
}

describe('packed packages', () => {
  const packages = publishablePackages();
  const names = packages.map((p) => p.name);
  const root = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as Manifest;
  const versions = new Map(packages.map((p) => [p.name, p.version]));
  const work = mkdtempSync(join(tmpdir(), 'meshtrace-e2e-packages-'));
  const publint = new Map<string, RunResult>();
  const attw = new Map<string, RunResult>();
  let tarballs: ReadonlyMap<string, string> = new Map();

  beforeAll(async () => {
    tarballs = await packTarballs();
    const env = userEnv({ NO_COLOR: '1', FORCE_COLOR: '0' });
    const jobs = names.flatMap((name) => [
      // --strict: warnings fail too, not only errors.
      { name, into: publint, bin: tool('publint'), args: ['run', '--strict', tarballs.get(name) as string] },
      // The strict profile: node10, node16 from CommonJS and from ESM, and bundler must all resolve
      // working types. No @types look-ups: every package ships its own.
      {
        name,
        into: attw,
        bin: tool('@arethetypeswrong/cli'),
        args: [
          tarballs.get(name) as string,
          '--profile',
          'strict',
          '--no-definitely-typed',
          '--format',
          'table-flipped',
          '--no-color',
          '--no-emoji',
        ],
      },
    ]);
    await inPool(jobs, async (job) =>
      job.into.set(
        job.name,
        await run(process.execPath, [job.bin, ...job.args], { cwd: work, env, timeoutMs: 120_000 }),
      ),
    );
  }, 300_000);

  afterAll(() => rmSync(work, { recursive: true, force: true }));

  function report(tool: string, result: RunResult | undefined): string[] {
    if (result === undefined) return [`${tool} did not run`];
    return result.code === 0 ? [] : [`${tool} exited ${result.code}:\n${result.stdout}\n${result.stderr}`];
  }

  test.each(names)('%s: publint --strict finds no error or warning in the tarball', (name) => {
    expectNone(report('publint', publint.get(name)), () => tarballs.get(name) ?? '');
  });

  test.each(names)(
    '%s: attw finds working types for CommonJS and ESM importers under node10, node16/nodenext and bundler',
    (name) => {
      expectNone(report('attw', attw.get(name)), () => tarballs.get(name) ?? '');
    },
  );

  test.each(packages.map((p) => [p.name, basename(p.dir)] as const))(
    '%s: the tarball ships README, LICENSE and dist without build info, maps to missing sources or tests, with real version ranges and release metadata',
    async (name, folder) => {
      const tarball = tarballs.get(name);
      if (tarball === undefined) throw new Error(`no tarball for ${name}`);
      const into = join(work, folder);
      mkdirSync(into);
      const untar = await run('tar', ['-xzf', tarball, '-C', into], { cwd: work, timeoutMs: 30_000 });
      if (untar.code !== 0) throw new Error(`tar -xzf ${tarball} exited ${untar.code}: ${untar.stderr}`);
      const unpacked = join(into, 'package');
      if (!existsSync(unpacked)) throw new Error(`${tarball} has no package/ folder: ${packageFiles(into).join(', ')}`);
      expectNone(
        contentProblems(unpacked, folder, root, versions),
        () =>
          `${tarball}:\n${packageFiles(unpacked)
            .map((f) => `  ${f}`)
            .join('\n')}`,
      );
    },
  );
});
