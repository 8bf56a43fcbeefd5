import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

/** The peers the repository's `peers` command brings, by name. */
export type PeerName = 'caddy' | 'jaeger' | 'kafka' | 'python';

// src/ and dist/ both sit two levels below the repository root's packages/testkit.
const ROOT = resolve(__dirname, '..', '..', '..');
const BRING = 'npx -y pnpm@10 peers';

/** The pinned version of a peer, as `peers/versions.json` names it. */
export function peerVersion(name: PeerName): string {
  const versions = JSON.parse(readFileSync(join(ROOT, 'peers', 'versions.json'), 'utf8')) as Record<
    string,
    { version: string }
  >;
  return versions[name].version;
}

/**
 * The folder the `peers` command built `name` into, at its pinned version; throws, naming the command
 * that brings it, when it is not there (a test that needs a peer fails instead of skipping).
 */
export function peerDir(name: PeerName): string {
  const dir = join(ROOT, '.peers', `${name}-${peerVersion(name)}`);
  if (!existsSync(join(dir, '.complete'))) {
    throw new Error(`${name} ${peerVersion(name)} is not built: run \`${BRING} ${name}\` (or \`${BRING}\` for all)`);
  }
  return dir;
}
