import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { connect } from 'node:net';
import { hasExited, stopChild } from './process';

/** How {@link launch} starts a built peer and knows it is ready. */
export interface LaunchSpec {
  /** The peer's name, for messages. */
  name: string;
  command: string;
  args: readonly string[];
  /** The whole environment of the process (not merged with this one's). */
  env: NodeJS.ProcessEnv;
  cwd?: string;
  /** Resolves true once the peer serves; polled until it does, the peer exits or the time runs out. */
  ready: () => Promise<boolean>;
  /** Default 30000 ms. */
  startTimeoutMs?: number;
  /** Runs after the process has stopped (or failed to start): remove temp files here. */
  cleanup?: () => void;
}

/** A running peer process and what it printed. */
export interface LaunchedPeer {
  readonly child: ChildProcess;
  /** stdout and stderr so far (the last 64 KiB). */
  output(): string;
  /** Stops the process (SIGTERM, then SIGKILL) and runs the spec's cleanup; safe to call twice. */
  stop(): Promise<void>;
}

const KEEP = 64 * 1024;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The last `lines` lines of a peer's output, for an error message. */
export function tailOf(text: string, lines = 40): string {
  const kept = text.trimEnd().split('\n').slice(-lines).join('\n');
  return kept === '' ? '(no output)' : kept;
}

/** True once something accepts a TCP connection on 127.0.0.1:`port`. */
export function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(2000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** The status code of a GET to `url` (a loopback HTTP URL), or 0 when nothing answers. */
export function httpStatus(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request(url, { method: 'GET', timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(0));
    req.end();
  });
}

/**
 * Spawns a peer, keeps its output, and resolves once `ready()` says so. If the peer exits first or the
 * time runs out, stops it, cleans up, and throws with the peer's own output.
 */
export async function launch(spec: LaunchSpec): Promise<LaunchedPeer> {
  let out = '';
  let stopped = false;
  const child = spawn(spec.command, [...spec.args], {
    env: spec.env,
    cwd: spec.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const keep = (chunk: Buffer) => {
    out = (out + chunk.toString('utf8')).slice(-KEEP);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  // A test run that dies without its afterAll must not leave the peer running.
  const killNow = () => {
    if (!hasExited(child)) child.kill('SIGKILL');
  };
  process.once('exit', killNow);
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    process.removeListener('exit', killNow);
    await stopChild(child, 5000);
    spec.cleanup?.();
  };
  const spawnFailed = new Promise<Error>((resolve) => child.once('error', resolve));
  const deadline = Date.now() + (spec.startTimeoutMs ?? 30_000);
  try {
    for (;;) {
      const failed = await Promise.race([spawnFailed, sleep(0).then(() => undefined)]);
      if (failed) throw new Error(`could not run ${spec.command}: ${failed.message}`);
      if (hasExited(child))
        throw new Error(
          `${spec.name} exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${tailOf(out)}`,
        );
      if (await spec.ready()) break;
      if (Date.now() > deadline)
        throw new Error(
          `${spec.name} was not ready within ${spec.startTimeoutMs ?? 30_000} ms; its output:\n${tailOf(out)}`,
        );
      await sleep(50);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { child, output: () => out, stop };
}
