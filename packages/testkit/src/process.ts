import type { ChildProcess } from 'node:child_process';

/** True once `child` has exited, by code or by signal. */
export function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Resolves true when `child` has exited or exits within `ms`, false otherwise. */
export function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (hasExited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * Stops a child process: SIGTERM, then SIGKILL if it still runs after `graceMs`. `send` delivers a
 * signal; by default to the child itself (pass one that signals its process group for a group leader).
 * @example await stopChild(child, 5000);
 */
export async function stopChild(
  child: ChildProcess,
  graceMs: number,
  send: (signal: NodeJS.Signals) => void = (signal) => child.kill(signal),
): Promise<void> {
  if (hasExited(child)) return;
  send('SIGTERM');
  if (!(await waitExit(child, graceMs))) {
    send('SIGKILL');
    await waitExit(child, 5000);
  }
}
