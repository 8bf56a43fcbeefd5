// Brings the real peers the integration tests run against, each at the version peers/versions.json pins,
// built by name from its package registry into .peers/<name>-<version> (ignored by git).
//
//   npx -y pnpm@10 peers            every peer
//   npx -y pnpm@10 peers caddy      only the named ones
//
// Each peer has a module ./<name>.mjs exporting `async function bring({ dir, version, log, run })` that
// fills the empty folder `dir`. A folder is complete once it holds a `.complete` stamp; a complete one is
// kept, a half-built one is removed and built again. Plain ESM with no dependencies: runs on Node 20+.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(HERE);
const CACHE = join(ROOT, '.peers');
/** Every peer, in the order they are brought. */
const PEERS = ['caddy', 'jaeger', 'kafka', 'python'];

function seconds(ms) {
  const s = ms / 1000;
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/** Prints each complete line of a stream with `prefix`; returns a function that flushes the last partial line. */
function prefixLines(stream, write) {
  let rest = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk) => {
    const lines = (rest + chunk).split(/\r?\n/);
    rest = lines.pop();
    for (const line of lines) write(line);
  });
  return () => {
    if (rest) write(rest);
    rest = '';
  };
}

/**
 * A `run(cmd, args, opts)` for one peer: spawns `cmd`, prints its output prefixed with the peer's name
 * (or, with `quiet`, keeps it and prints it only if the command fails), and resolves with its stdout.
 * Rejects with a message naming the command. `opts`: `cwd`, `env` (added to this process's), `quiet`.
 */
function runner(log) {
  return (cmd, args = [], opts = {}) =>
    new Promise((resolve, reject) => {
      const shown = [cmd, ...args].join(' ');
      const kept = [];
      let stdout = '';
      const child = spawn(cmd, args, {
        cwd: opts.cwd ?? ROOT,
        env: { ...process.env, ...opts.env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const write = (line) => (opts.quiet ? kept.push(line) : log(`  ${line}`));
      child.stdout.on('data', (chunk) => {
        stdout += chunk;
      });
      const flushOut = prefixLines(child.stdout, write);
      const flushErr = prefixLines(child.stderr, write);
      child.once('error', (err) =>
        reject(
          new Error(
            err.code === 'ENOENT' ? `\`${cmd}\` was not found on PATH` : `could not run ${shown}: ${err.message}`,
          ),
        ),
      );
      child.once('close', (code, signal) => {
        flushOut();
        flushErr();
        if (code === 0) return resolve(stdout);
        const tail = opts.quiet && kept.length > 0 ? `\n${kept.slice(-40).join('\n')}` : '';
        reject(new Error(`\`${shown}\` ${signal ? `was killed by ${signal}` : `exited with ${code}`}${tail}`));
      });
    });
}

/** Removes folders of other versions of `name`, so a version bump does not pile up old builds. */
async function pruneOld(name, keep, log) {
  if (!existsSync(CACHE)) return;
  for (const entry of await readdir(CACHE)) {
    if (entry !== keep && entry.startsWith(`${name}-`) && /^\d/.test(entry.slice(name.length + 1))) {
      await rm(join(CACHE, entry), { recursive: true, force: true });
      log(`removed the old ${entry}`);
    }
  }
}

async function bringOne(name, version) {
  const label = `${name} ${version}`;
  const log = (text) => console.log(`${name}: ${text}`);
  const folder = `${name}-${version}`;
  const dir = join(CACHE, folder);
  if (existsSync(join(dir, '.complete'))) {
    console.log(`${label}: already built`);
    return true;
  }
  const started = Date.now();
  try {
    const script = join(HERE, `${name}.mjs`);
    if (!existsSync(script)) throw new Error(`peers/${name}.mjs, which brings it, does not exist`);
    const { bring } = await import(pathToFileURL(script).href);
    if (typeof bring !== 'function') throw new Error(`peers/${name}.mjs exports no function \`bring\``);
    await pruneOld(name, folder, log);
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    log(`building ${version} into .peers/${folder}`);
    await bring({ dir, version, log, run: runner(log) });
    await writeFile(join(dir, '.complete'), `${name} ${version} built ${new Date().toISOString()}\n`);
    console.log(`${label}: built in ${seconds(Date.now() - started)}`);
    return true;
  } catch (err) {
    console.error(
      `${label}: FAILED after ${seconds(Date.now() - started)}: ${err instanceof Error ? err.message : err}`,
    );
    return false;
  }
}

async function main() {
  const versions = JSON.parse(await readFile(join(HERE, 'versions.json'), 'utf8'));
  const asked = process.argv.slice(2);
  const unknown = asked.filter((name) => !PEERS.includes(name));
  if (unknown.length > 0) {
    console.error(`peers: unknown peer ${unknown.join(', ')}; the peers are ${PEERS.join(', ')}`);
    process.exit(2);
  }
  const names = asked.length > 0 ? PEERS.filter((name) => asked.includes(name)) : PEERS;
  const started = Date.now();
  const failed = [];
  for (const name of names) {
    const version = versions[name]?.version;
    if (!version) {
      console.error(`${name}: peers/versions.json pins no version`);
      failed.push(name);
    } else if (!(await bringOne(name, version))) {
      failed.push(name);
    }
  }
  const total = seconds(Date.now() - started);
  if (failed.length > 0) {
    console.error(`peers: ${failed.join(', ')} could not be brought (${total}); the tests that need them will fail`);
    process.exit(1);
  }
  console.log(`peers: ${names.join(', ')} ready in .peers (${total})`);
}

await main();
