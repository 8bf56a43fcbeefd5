// traceparent extract counted in instructions (valgrind cachegrind), meshtrace's `MeshPropagator` against
// OTel's `W3CTraceContextPropagator`, in the steady state: each count runs in its own process, which extracts
// `WARM` times first and then N more; the difference between N = 100,000 and N = 300,000 over 200,000 is
// one extract. Unlike ns per operation the count does not move with the machine's load.
//   node bench/dist/micro-count.js
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { candidates, operation } from './micro';
import { fmt } from './stats';
import type { Check } from './stats';

const WARM = 200_000;
const N1 = 100_000;
const N2 = 300_000;
const sink: unknown[] = new Array(16);

function child(which: number, n: number): void {
  const op = operation(candidates()[which], 'traceparent');
  for (let i = 0; i < WARM + n; i++) sink[i & 15] = op();
}

function count(which: number, n: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'meshtrace-micro-'));
  const out = join(dir, 'cachegrind.out');
  const p = spawn(
    'valgrind',
    [
      '--tool=cachegrind',
      '--cache-sim=no',
      `--cachegrind-out-file=${out}`,
      process.execPath,
      '--single-threaded',
      '--random-seed=20261206',
      __filename,
      '--child',
      String(which),
      String(n),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  p.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-2000);
  });
  return new Promise((resolve, reject) => {
    p.on('exit', () => {
      try {
        const summary = /^summary: (\d+)/m.exec(readFileSync(out, 'utf8'));
        if (summary === null) throw new Error('no summary line');
        resolve(Number(summary[1]));
      } catch (err) {
        reject(new Error(`cachegrind wrote no count (${(err as Error).message}): ${stderr}`));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}

/** Instructions per traceparent extract of meshtrace and of OTel's W3C propagator, and the ratio target. */
export async function microCounts(): Promise<{ mesh: number; w3c: number; check: Check }> {
  const [m1, m2, w1, w2] = await Promise.all([count(0, N1), count(0, N2), count(1, N1), count(1, N2)]);
  const mesh = (m2 - m1) / (N2 - N1);
  const w3c = (w2 - w1) / (N2 - N1);
  const r = w3c / mesh;
  return {
    mesh,
    w3c,
    check: {
      target: `traceparent extract (Node ${process.versions.node}): ≥ 2x cheaper than \`W3CTraceContextPropagator\` (instructions)`,
      measured: `${fmt(r, 2)}x (${fmt(mesh)} against ${fmt(w3c)})`,
      met: r >= 2,
    },
  };
}

if (require.main === module) {
  if (process.argv[2] === '--child') child(Number(process.argv[3]), Number(process.argv[4]));
  else
    microCounts().then(
      (m) => console.log(`${m.check.met ? 'met' : 'MISSED'}: ${m.check.target}: ${m.check.measured}`),
      (err: unknown) => {
        console.error(err);
        process.exitCode = 1;
      },
    );
}
