import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { run, userEnv } from './run';
import type { RunResult } from './run';

/** The code a user would write, copied into every app folder with its subfolders. */
export const FIXTURES = resolve(__dirname, '..', 'fixtures');

/** An application folder outside the workspace, as a user has it, and how its `npm install` went. */
export interface InstalledApp {
  readonly dir: string;
  readonly install: RunResult;
  /** True when npm exited 0 and said nothing of ERESOLVE. */
  readonly ok: boolean;
  /** npm's command line and output, for assertion messages. */
  readonly report: string;
}

/**
 * Makes an app folder under the temp dir with `dependencies` and the fixtures, and runs the plain
 * install a user would: no `--legacy-peer-deps`, no `--force`. `--prefer-offline` only spares the
 * registry round trips for what npm's cache already holds.
 */
export async function installApp(label: string, dependencies: Readonly<Record<string, string>>): Promise<InstalledApp> {
  const dir = mkdtempSync(join(tmpdir(), `meshtrace-e2e-${label}-`));
  writeFileSync(
    join(dir, 'package.json'),
    `${JSON.stringify({ name: `meshtrace-e2e-${label}`, version: '1.0.0', private: true, dependencies }, null, 2)}\n`,
  );
  cpSync(FIXTURES, dir, { recursive: true });
  const args = ['install', '--no-audit', '--no-fund', '--loglevel=error', '--prefer-offline'];
  const install = await run('npm', args, { cwd: dir, env: userEnv(), timeoutMs: 290_000 });
  const output = `${install.stdout}\n${install.stderr}`.trim();
  const ok = install.code === 0 && !/ERESOLVE/.test(output);
  const report = `$ npm ${args.join(' ')}  (in ${dir}, exit ${install.code}, ${install.ms} ms)\n${output}`;
  return { dir, install, ok, report };
}

/** Removes an app folder. */
export function removeApp(app: InstalledApp | undefined): void {
  if (app !== undefined) rmSync(app.dir, { recursive: true, force: true });
}

/** `file:` specs for the named packages' tarballs. */
export function tarballSpecs(tarballs: ReadonlyMap<string, string>, names: readonly string[]): Record<string, string> {
  const specs: Record<string, string> = {};
  for (const name of names) {
    const file = tarballs.get(name);
    if (file === undefined) throw new Error(`e2e: no tarball for ${name}; packed: ${[...tarballs.keys()].join(', ')}`);
    specs[name] = `file:${file}`;
  }
  return specs;
}

/** What {@link InstalledTree.copiesOf} says of a folder that no dependency chain reaches. */
export const NOT_REQUIRED = 'not required by anything';

interface LockEntry {
  name?: string;
  version?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

/** One installed package: where it sits in node_modules, and the chain of packages that required it. */
export interface InstalledPackage {
  readonly name: string;
  readonly version: string;
  readonly path: string;
  /** `app > @meshtrace/core@0.1.0 > @opentelemetry/sdk-trace-base@2.12.0`, or {@link NOT_REQUIRED}. */
  readonly via: string;
}

/**
 * The tree npm installed, read from the lockfile it wrote (it records every folder under
 * node_modules with the dependencies of the package in it). Edges are resolved the way Node's
 * `require` finds them: the nearest node_modules up the folder chain.
 */
export class InstalledTree {
  private readonly packages: Record<string, LockEntry>;

  constructor(appDir: string) {
    const lockfile = join(appDir, 'package-lock.json');
    if (!existsSync(lockfile)) throw new Error(`e2e: ${lockfile} is missing: did npm install finish?`);
    this.packages = (JSON.parse(readFileSync(lockfile, 'utf8')) as { packages: Record<string, LockEntry> }).packages;
  }

  private nameOf(path: string): string {
    return this.packages[path]?.name ?? path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length);
  }

  private resolve(from: string, dep: string): string | undefined {
    for (let base = from; ; ) {
      const candidate = base === '' ? `node_modules/${dep}` : `${base}/node_modules/${dep}`;
      if (this.packages[candidate] !== undefined) return candidate;
      if (base === '') return undefined;
      const up = base.lastIndexOf('/node_modules/');
      base = up < 0 ? '' : base.slice(0, up);
    }
  }

  /**
   * Every installed package reachable from the app's own dependencies, following dependencies,
   * optional and peer dependencies, without looking inside the packages named in `boundary`
   * (which are reported themselves, but not what they bring).
   */
  reachable(boundary: ReadonlySet<string> = new Set()): InstalledPackage[] {
    const parent = new Map<string, string>([['', '']]);
    const queue = [''];
    while (queue.length > 0) {
      const at = queue.shift() as string;
      if (at !== '' && boundary.has(this.nameOf(at))) continue;
      const entry = this.packages[at] ?? {};
      const deps = { ...entry.peerDependencies, ...entry.optionalDependencies, ...entry.dependencies };
      for (const dep of Object.keys(deps)) {
        const found = this.resolve(at, dep);
        if (found === undefined || parent.has(found)) continue;
        parent.set(found, at);
        queue.push(found);
      }
    }
    return [...parent.keys()].filter((p) => p !== '').map((p) => this.describe(p, parent));
  }

  /** Every copy of the package `name` (or of every package whose name matches) in node_modules, wherever it sits and whoever needs it. */
  copiesOf(name: string | RegExp): InstalledPackage[] {
    const reached = new Map(this.reachable().map((p) => [p.path, p]));
    const matches = (n: string) => (typeof name === 'string' ? n === name : name.test(n));
    return Object.keys(this.packages)
      .filter((p) => p !== '' && matches(this.nameOf(p)))
      .map(
        (p) =>
          reached.get(p) ?? {
            name: this.nameOf(p),
            version: this.packages[p].version ?? '?',
            path: p,
            via: NOT_REQUIRED,
          },
      );
  }

  private describe(path: string, parent: ReadonlyMap<string, string>): InstalledPackage {
    const chain: string[] = [];
    for (let at = path; at !== ''; at = parent.get(at) ?? '')
      chain.unshift(`${this.nameOf(at)}@${this.packages[at].version ?? '?'}`);
    return {
      name: this.nameOf(path),
      version: this.packages[path].version ?? '?',
      path,
      via: ['app', ...chain].join(' > '),
    };
  }
}
