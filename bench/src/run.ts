// The whole benchmark: steady-state instruction counts per request (the targets), propagators, per-request
// CPU time against the bare frameworks and the official OpenTelemetry instrumentation (information), memory
// while the collector refuses, parse linearity. Writes bench/RESULTS.md.
//   node bench/dist/run.js [--quick] [--only steady,micro,requests,memory,linear,doctor] [--outage] [--frameworks express,fastify,koa,http] [--write]
// --quick gives rough numbers in about two minutes; --only runs the parts named. Either prints only and
// leaves RESULTS.md to full runs, unless --write is given. --outage adds the collector outage table
// (every collector failure mode under load, about a minute more).
import { writeFileSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { FINDINGS } from './findings';
import { runLinear } from './linear';
import { MICRO_FULL, MICRO_QUICK, runMicro } from './micro';
import { memorySection, outageSection, runOutage, runOutageMemory } from './outage';
import { microCounts } from './micro-count';
import { STEADY_FULL, countAll, steadySection } from './steady';
import { LOGS_FULL, LOGS_QUICK, benchLogs } from './logs';
import { RECEIVE_FULL, RECEIVE_QUICK, benchReceive } from './receive';
import { REQUESTS_FULL, REQUESTS_QUICK, runRequests } from './requests';
import { FRAMEWORKS } from './server';
import type { Framework } from './server';
import { machine, table } from './stats';
import type { Section } from './stats';

const PARTS = ['steady', 'micro', 'requests', 'memory', 'linear', 'doctor'] as const;
type Part = (typeof PARTS)[number];
/** What a run without --only runs. */
const DEFAULT_PARTS: readonly Part[] = ['steady', 'micro', 'requests', 'memory', 'linear', 'doctor'];

function option(name: string): string | undefined {
  const i = process.argv.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (i < 0) return undefined;
  const arg = process.argv[i];
  return arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : process.argv[i + 1];
}

function list<T extends string>(name: string, allowed: readonly T[]): T[] | undefined {
  const value = option(name);
  if (value === undefined) return undefined;
  const items = value.split(',').filter((s) => s.length > 0);
  for (const item of items)
    if (!allowed.includes(item as T))
      throw new TypeError(`${name}: unknown ${JSON.stringify(item)}; expected ${allowed.join(', ')}`);
  return items as T[];
}

function log(line: string): void {
  const t = new Date().toISOString().slice(11, 19);
  console.log(`[${t}] ${line}`);
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const only = list('--only', PARTS);
  const parts: readonly Part[] = only ?? DEFAULT_PARTS;
  const frameworks: readonly Framework[] = list('--frameworks', FRAMEWORKS) ?? FRAMEWORKS;
  const started = Date.now();
  const sections: Section[] = [];
  /** Checks of the steady-state counts: the targets. Every other check is information. */
  const targets: Section['checks'] = [];

  if (parts.includes('steady')) {
    // The NodeSDK and propagate-only candidates on Express and node:http; the rest on every framework.
    const steady = { ...STEADY_FULL, frameworks, repeat: quick ? 1 : 2 };
    log(`steady-state instructions per request under callgrind: ${frameworks.join(', ')}, two servers at a time`);
    const counts = await countAll({ ...steady, candidates: ['bare', 'attr-floor', 'meshtrace', 'otel'] }, log);
    const sdkFrameworks = frameworks.filter((f) => f === 'express' || f === 'http');
    const sdk = await countAll(
      {
        ...steady,
        frameworks: sdkFrameworks,
        candidates: ['nodesdk', 'in-nodesdk', 'nodesdk-own', 'sdk-disabled'],
      },
      log,
    );
    for (const [key, list] of sdk) counts.set(key, list);
    const section = steadySection({ ...steady, candidates: STEADY_FULL.candidates }, counts);
    log('traceparent extract in instructions under cachegrind');
    const micro = await microCounts();
    section.checks.push(micro.check);
    targets.push(...section.checks);
    sections.push({ ...section, checks: [] });
  }

  if (parts.includes('micro')) {
    log('propagators, in this process');
    sections.push(runMicro(quick ? MICRO_QUICK : MICRO_FULL, log));
  }
  if (parts.includes('requests')) {
    log(`per request: ${frameworks.join(', ')}, each candidate in its own process`);
    sections.push(await runRequests({ ...(quick ? REQUESTS_QUICK : REQUESTS_FULL), frameworks }, log));
  }
  if (parts.includes('memory')) {
    const options = { seconds: quick ? 15 : 60, connections: 50 };
    log(`memory: ${options.seconds} s of load while the collector refuses`);
    sections.push(memorySection(await runOutageMemory(options, log), options));
  }
  if (process.argv.includes('--outage')) {
    const options = { seconds: quick ? 2 : 5, rounds: quick ? 1 : 2, connections: 50 };
    log('collector outages');
    sections.push(outageSection(await runOutage(options, log), options));
  }
  if (parts.includes('linear')) {
    log('parse linearity');
    sections.push({ title: 'Parse cost per byte (linearity)', lines: runLinear(), checks: [] });
  }

  if (parts.includes('doctor')) {
    log('meshtrace receive and meshtrace logs throughput');
    sections.push(await benchReceive(quick ? RECEIVE_QUICK : RECEIVE_FULL, log));
    sections.push(await benchLogs(quick ? LOGS_QUICK : LOGS_FULL, log));
  }

  const seconds = Math.round((Date.now() - started) / 1000);
  const m = machine();
  const checks = sections.flatMap((s) => s.checks);
  const report = [
    '# Benchmarks',
    '',
    `Written by \`npx -y pnpm@10 bench${quick ? ' --quick' : ''}\` (\`node bench/dist/run.js\`) on ${new Date().toISOString().slice(0, 10)}: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, Node ${m.node}, ${m.platform}; the run took ${Math.floor(seconds / 60)} min ${seconds % 60} s${quick ? ' (--quick: fewer and shorter runs, rough numbers)' : ''}.`,
    '',
    'Absolute numbers belong to this machine and its load at the time; the ratios, from candidates run side by side and alternated in one run, are what to compare.',
    '',
    '## Targets (steady-state instruction counts)',
    '',
    ...table(
      ['target', 'measured', ''],
      ['l', 'r', 'l'],
      targets.map((c) => [c.target, c.measured, c.met ? 'met' : '**missed**']),
    ),
    '',
    '## Information (CPU time, memory)',
    '',
    'CPU time on this shared two-core machine moves by tens of percent from round to round: these rows say what the counts mean in time, the counts decide.',
    '',
    ...table(
      ['check', 'measured', ''],
      ['l', 'r', 'l'],
      checks.map((c) => [c.target, c.measured, c.met ? 'met' : 'missed']),
    ),
    '',
    ...sections.flatMap((s) => [`## ${s.title}`, '', ...s.lines, '']),
    ...FINDINGS,
  ].join('\n');

  console.log(`\n${report}`);
  // Node 24 is the headline (RESULTS.md); another version writes beside it (RESULTS-node22.md).
  const major = Number(process.versions.node.split('.')[0]);
  const file = resolve(__dirname, '..', major === 24 ? 'RESULTS.md' : `RESULTS-node${major}.md`);
  if ((only === undefined && !quick) || process.argv.includes('--write')) {
    writeFileSync(file, `${report.trimEnd()}\n`);
    log(`wrote ${relative(process.cwd(), file)}`);
  } else {
    log(`${relative(process.cwd(), file)} left as it was (a partial or --quick run; --write to replace it)`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
