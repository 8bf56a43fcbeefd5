import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, relative, resolve } from 'node:path';
import { run, userEnv } from './run';

/** The workspace root: e2e/src is two levels below it. */
export const ROOT = resolve(__dirname, '..', '..');

/** A package of the workspace that is published, as its folder says. */
export interface WorkspacePackage {
  readonly name: string;
  readonly dir: string;
  readonly version: string;
}

/** Every `packages/*` whose package.json is not `"private": true`, sorted by name. */
export function publishablePackages(): WorkspacePackage[] {
  const parent = join(ROOT, 'packages');
  const found: WorkspacePackage[] = [];
  for (const entry of readdirSync(parent, { withFileTypes: true })) {
    const manifest = join(parent, entry.name, 'package.json');
    if (!entry.isDirectory() || !existsSync(manifest)) continue;
    const pkg = JSON.parse(readFileSync(manifest, 'utf8')) as { name: string; version: string; private?: boolean };
    if (pkg.private === true) continue;
    found.push({ name: pkg.name, dir: join(parent, entry.name), version: pkg.version });
  }
  return found.sort((a, b) => a.name.localeCompare(b.name));
}

/** Every file under `dir`, as absolute paths, sorted; none when it does not exist. */
export function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

/**
 * A hash of everything a tarball is made of: the manifests (pnpm writes the other packages'
 * versions over `workspace:*`) and what `files` ships. The same hash means the same tarballs, so
 * test files, and runs, share one pack.
 */
function contentHash(packages: readonly WorkspacePackage[]): string {
  const hash = createHash('sha256');
  for (const pkg of packages) {
    const files = [join(pkg.dir, 'package.json'), ...filesUnder(join(pkg.dir, 'dist'))];
    for (const name of readdirSync(pkg.dir))
      if (/^(readme|license|changelog)/i.test(name)) files.push(join(pkg.dir, name));
    for (const file of files) {
      hash.update(relative(ROOT, file)).update('\0').update(readFileSync(file)).update('\0');
    }
  }
  return hash.digest('hex').slice(0, 20);
}

/**
 * pnpm as the test run found it: `npm_execpath` is pnpm's own script when the tests run under
 * `pnpm test`; otherwise the pinned major through npx.
 */
function pnpm(): [string, string[]] {
  const execpath = process.env.npm_execpath;
  if (execpath && /pnpm/i.test(basename(execpath)))
    return /\.[cm]?js$/.test(execpath) ? [process.execPath, [execpath]] : [execpath, []];
  return ['npx', ['-y', 'pnpm@10']];
}

let packed: Promise<ReadonlyMap<string, string>> | undefined;

/**
 * Packs every publishable package with pnpm (which turns `workspace:*` into the real versions, as
 * publishing does) and resolves package name -> tarball path. Packs once per content: a finished
 * pack is kept in the temp folder under its hash and moved there whole, so two test files packing
 * at once both end up with complete tarballs.
 */
export function packTarballs(): Promise<ReadonlyMap<string, string>> {
  packed ??= doPack();
  return packed;
}

async function doPack(): Promise<ReadonlyMap<string, string>> {
  const packages = publishablePackages();
  const unbuilt = packages.filter((p) => !existsSync(join(p.dir, 'dist', 'index.js')));
  if (unbuilt.length > 0)
    throw new Error(`e2e: build first (tsc -b); no dist/index.js in ${unbuilt.map((p) => p.name).join(', ')}`);
  const dest = join(tmpdir(), `meshtrace-e2e-pack-${contentHash(packages)}`);
  const index = join(dest, 'tarballs.json');
  if (!existsSync(index)) {
    pruneOldPacks();
    const work = mkdtempSync(join(tmpdir(), 'meshtrace-e2e-packing-'));
    const [command, prefix] = pnpm();
    const filters = packages.flatMap((p) => ['--filter', `./${relative(ROOT, p.dir)}`]);
    const result = await run(command, [...prefix, '--recursive', ...filters, 'pack', '--pack-destination', work], {
      cwd: ROOT,
      env: userEnv(),
      timeoutMs: 180_000,
    });
    if (result.code !== 0) {
      rmSync(work, { recursive: true, force: true });
      throw new Error(`e2e: pnpm pack exited ${result.code}\n${result.stdout}\n${result.stderr}`);
    }
    const tarballs: Record<string, string> = {};
    for (const pkg of packages) {
      // pnpm names a tarball after the package: @scope/name@1.2.3 -> scope-name-1.2.3.tgz
      const file = `${pkg.name.replace(/^@/, '').replace('/', '-')}-${pkg.version}.tgz`;
      if (!existsSync(join(work, file)))
        throw new Error(`e2e: pnpm pack made no ${file} for ${pkg.name}; it made ${readdirSync(work).join(', ')}`);
      tarballs[pkg.name] = file;
    }
    writeFileSync(join(work, 'tarballs.json'), JSON.stringify(tarballs, null, 2));
    try {
      renameSync(work, dest);
    } catch (err) {
      // Another test file finished the same pack first: keep its folder, drop ours.
      rmSync(work, { recursive: true, force: true });
      if (!existsSync(index)) throw err;
    }
  }
  const tarballs = JSON.parse(readFileSync(index, 'utf8')) as Record<string, string>;
  return new Map(Object.entries(tarballs).map(([name, file]) => [name, join(dest, file)]));
}

/** Every build makes a new pack folder; those of builds more than a day old go when a new one is made. */
function pruneOldPacks(): void {
  const dayAgo = Date.now() - 24 * 3600 * 1000;
  for (const name of readdirSync(tmpdir())) {
    if (!name.startsWith('meshtrace-e2e-pack-')) continue;
    const dir = join(tmpdir(), name);
    try {
      if (statSync(dir).mtimeMs < dayAgo) rmSync(dir, { recursive: true, force: true });
    } catch {
      // Removed by a run beside this one.
    }
  }
}
