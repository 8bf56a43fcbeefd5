// Instructions per request, counted by valgrind (cachegrind, no cache simulation): unlike CPU time
// they do not depend on what else the machine runs, so small differences between candidates show.
// Each server runs twice under valgrind in its own process, answering N1 and then N2 requests;
// (count(N2) - count(N1)) / (N2 - N1) is what one request costs once start-up and warm-up are
// subtracted. Two servers run at a time: the counts do not depend on it.
//   node bench/dist/instructions.js [--frameworks=express,fastify,koa,http] [--requests=3000]
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { CANDIDATES, FRAMEWORKS, PATH } from './server';
import type { Candidate, Framework, FromServer } from './server';
import { fmt, printSection, table } from './stats';
import type { Check, Section } from './stats';

export interface InstructionsOptions {
  /** Requests of the first run (warm-up included in both runs). */
  readonly base: number;
  /** Requests more in the second run: the per-request count is taken over these. */
  readonly requests: number;
  readonly frameworks: readonly Framework[];
  readonly candidates: readonly Candidate[];
}

export const INSTRUCTIONS_FULL: InstructionsOptions = {
  base: 1000,
  requests: 3000,
  frameworks: FRAMEWORKS,
  candidates: CANDIDATES,
};

const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

/** Total instructions of one server process that answered `requests` requests. */
function count(framework: Framework, candidate: Candidate, requests: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'meshtrace-instructions-'));
  const out = join(dir, 'cachegrind.out');
  const child = spawn(
    'valgrind',
    [
      '--tool=cachegrind',
      '--cache-sim=no',
      `--cachegrind-out-file=${out}`,
      process.execPath,
      '--single-threaded',
      require.resolve('./server'),
      framework,
      candidate,
    ],
    { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] },
  );
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-4000);
  });
  return new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${framework}/${candidate}: no answer within 10 min`));
    }, 600_000);
    child.on('message', (m: FromServer) => {
      if (m.type === 'error') reject(new Error(`${framework}/${candidate}: ${m.message}`));
      if (m.type !== 'ready') return;
      void autocannon({
        url: `http://127.0.0.1:${m.port}${PATH}`,
        connections: 4,
        amount: requests,
        headers: { traceparent: TRACEPARENT },
        timeout: 60,
      }).then((result) => {
        if (result.non2xx + result.errors + result.timeouts > 0)
          reject(new Error(`${framework}/${candidate}: ${result.non2xx} non-2xx, ${result.errors} errors`));
        child.send({ type: 'stop' });
      }, reject);
    });
    child.on('exit', () => {
      clearTimeout(timer);
      try {
        const summary = /^summary: (\d+)/m.exec(readFileSync(out, 'utf8'));
        if (summary === null) throw new Error('no summary line');
        resolve(Number(summary[1]));
      } catch (err) {
        reject(
          new Error(
            `${framework}/${candidate}: cachegrind wrote no count (${(err as Error).message}); valgrind said: ${stderr}`,
          ),
        );
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}

/** A count again once when it failed: under valgrind a loaded machine can time a request out. */
async function retried(run: () => Promise<number>, log: (line: string) => void): Promise<number> {
  try {
    return await run();
  } catch (err) {
    log(`  ${(err as Error).message}; counting again`);
    return run();
  }
}

/** Runs `jobs` two at a time. */
async function pairwise<T>(jobs: ReadonlyArray<() => Promise<T>>): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  };
  await Promise.all([worker(), worker()]);
  return results;
}

const LABELS: Record<Candidate, string> = {
  bare: 'bare',
  context: 'bare + context manager',
  floor: 'floor',
  meshtrace: '**meshtrace**',
  'public-api': 'meshtrace, shortcuts off',
  'sdk-disabled': 'meshtrace, SDK disabled',
  'in-nodesdk': 'meshtrace in NodeSDK (+ http, undici)',
  otel: 'OTel (official route)',
};
const NAMES: Record<Framework, string> = {
  express: 'Express 5',
  fastify: 'Fastify 5',
  koa: 'Koa 3 + @koa/router',
  http: 'node:http',
};

/** Instructions per request of every candidate on every framework, and the targets on them. */
export async function runInstructions(
  options: InstructionsOptions,
  log: (line: string) => void = () => undefined,
): Promise<Section> {
  const pairs = options.frameworks.flatMap((f) => options.candidates.map((c) => [f, c] as const));
  const perRequest = new Map<string, number>();
  await pairwise(
    pairs.map(([f, c]) => async () => {
      const first = await retried(() => count(f, c, options.base), log);
      const second = await retried(() => count(f, c, options.base + options.requests), log);
      const n = (second - first) / options.requests;
      perRequest.set(`${f}/${c}`, n);
      log(`  ${f}/${c}: ${fmt(n)} instructions per request`);
    }),
  );
  const rows: string[][] = [];
  const checks: Check[] = [];
  for (const f of options.frameworks) {
    const of = (c: Candidate) => perRequest.get(`${f}/${c}`) ?? NaN;
    const added = (c: Candidate) => of(c) - of('bare');
    for (const c of options.candidates) {
      rows.push([
        NAMES[f],
        LABELS[c],
        fmt(of(c) / 1000, 1),
        c === 'bare' ? '—' : fmt(added(c) / 1000, 1),
        c === 'bare' || c === 'floor' ? '' : `${fmt(added(c) / added('floor'), 2)}x`,
        c === 'bare' || c === 'otel' ? '' : `${fmt(added(c) / added('otel'), 2)}x`,
      ]);
    }
    const toFloor = added('meshtrace') / added('floor');
    const toOtel = added('meshtrace') / added('otel');
    const disabled = added('sdk-disabled') / added('context');
    checks.push({
      target: `${NAMES[f]}: meshtrace's added instructions per request ≤ 1.2x the floor's`,
      measured: `${fmt(toFloor, 2)}x`,
      met: toFloor <= 1.2,
    });
    checks.push({
      target: `${NAMES[f]}: meshtrace's added instructions per request ≤ 1/3 of the official route's`,
      measured: fmt(toOtel, 2),
      met: toOtel <= 1 / 3,
    });
    // The context manager alone may add nothing over bare (or less than nothing): the ratio then means nothing, and the
    // target is met only if the SDK-disabled row adds nothing either.
    checks.push({
      target: `${NAMES[f]}: SDK disabled, added instructions ≤ 1.1x those of bare + context manager`,
      measured:
        added('context') > 0
          ? `${fmt(disabled, 2)}x`
          : `${fmt(added('sdk-disabled') / 1000, 1)}k against ${fmt(added('context') / 1000, 1)}k`,
      met: added('context') > 0 ? disabled <= 1.1 : added('sdk-disabled') <= 0,
    });
  }
  const lines = [
    ...table(
      [
        'framework',
        'candidate',
        'instructions per request (thousands)',
        'added over bare',
        "added ÷ floor's",
        "added ÷ OTel's",
      ],
      ['l', 'l', 'r', 'r', 'r', 'r'],
      rows,
    ),
    '',
    `valgrind's cachegrind counts the instructions each server process executes (JIT-compiled code included) while it answers ${options.base} requests, and again in a fresh process answering ${options.base + options.requests}; the difference over ${options.requests} requests is one request's count, start-up and warm-up subtracted. The candidates are those of the CPU table, with the same servers. A count is the same whatever else the machine runs, so these rows decide what a change saves; the CPU table says what that is in time.`,
  ];
  return { title: 'Per request: instructions added over the bare framework', lines, checks };
}

if (require.main === module) {
  const only = process.argv
    .find((a) => a.startsWith('--frameworks='))
    ?.slice('--frameworks='.length)
    .split(',') as Framework[] | undefined;
  const candidates = process.argv
    .find((a) => a.startsWith('--candidates='))
    ?.slice('--candidates='.length)
    .split(',') as Candidate[] | undefined;
  const requests = Number(
    process.argv.find((a) => a.startsWith('--requests='))?.slice('--requests='.length) ?? INSTRUCTIONS_FULL.requests,
  );
  printSection(
    runInstructions(
      { ...INSTRUCTIONS_FULL, requests, ...(only ? { frameworks: only } : {}), ...(candidates ? { candidates } : {}) },
      console.log,
    ),
  );
}
