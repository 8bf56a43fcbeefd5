#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { runCheck } from './check/command';
import { runLogs } from './logs/command';
import { LOG_FORMATS } from './logs/formats';
import type { LogFormat } from './logs/formats';
import type { Output } from './output';
import { runProbe } from './probe/command';
import type { ProbeBackend } from './probe/command';
import { PRINT_CHOICES, runReceive } from './receive/command';
import type { PrintChoice } from './receive/command';

// Exit codes: 0 all good, 1 something was found (an invalid header, a broken trace), 2 the command could
// not tell (no spans, input it could not read or reach), 64 bad usage (sysexits EX_USAGE), so CI can
// tell a typo from a mesh that sent no spans. `probe` adds 3: incomplete.
const CANNOT_TELL = 2;
const USAGE = 64;
const PREFIX = /^@meshtrace\/doctor: /;

// A reader that went away (`meshtrace --help | head -1`) ends the command quietly, as Unix tools do.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

function version(): string {
  // dist/cli.js sits one level below package.json, installed or in the repository alike.
  return (JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }).version;
}

function output(): Output {
  // https://no-color.org: any non-empty NO_COLOR turns colour off; so does output that is not a terminal.
  const color = process.stdout.isTTY === true && !process.env.NO_COLOR;
  return { line: (text = '') => void process.stdout.write(`${text}\n`), color, width: process.stdout.columns ?? 100 };
}

/**
 * Runs a command. A TypeError is bad usage or configuration (exit 64), a system error one the user can
 * act on, such as a port in use or a URL that refuses connections (exit 2): a message, not a stack.
 */
async function run(command: () => Promise<number>): Promise<void> {
  try {
    process.exitCode = await command();
  } catch (err) {
    if (!(err instanceof TypeError || (err instanceof Error && 'errno' in err))) throw err;
    process.stderr.write(`meshtrace: ${err.message.replace(PREFIX, '')}\n`);
    process.exitCode = err instanceof TypeError ? USAGE : CANNOT_TELL;
  }
}

/** A comma-separated list option that may also be repeated. */
function list(value: string, previous: string[] = []): string[] {
  return [
    ...previous,
    ...value
      .split(',')
      .map((v) => v.trim())
      .filter((v) => v.length > 0),
  ];
}

/**
 * `obj` without its undefined values: options left out must take the command's defaults, not override them with
 * undefined.
 */
function defined<T extends object>(obj: T): T {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined)) as T;
}

function port(value: string): number {
  return value === '0' ? 0 : positiveInteger(value);
}

function positiveInteger(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('expected a whole number from 1');
  return n;
}

function program(): Command {
  const cli = new Command('meshtrace')
    .description('Find where W3C trace context breaks between services behind a service mesh.')
    .version(version())
    .showHelpAfterError('(add --help for usage)')
    .exitOverride()
    .addHelpText(
      'after',
      [
        '',
        'Examples:',
        '  meshtrace probe http://shop.example.com/orders',
        '  meshtrace receive --port 4318 --forward http://otel-collector:4318',
        '  meshtrace check 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
        '  kubectl logs deploy/orders -c istio-proxy | meshtrace logs -',
        '',
        'Exit codes: 0 all good, 1 findings (an invalid header, requests that lost their trace), 2 cannot tell',
        '(no spans, unreadable or unreachable input), 3 incomplete (probe: spans may still come), 64 bad usage.',
      ].join('\n'),
    );

  cli
    .command('probe')
    .description('Send requests with a fresh trace, wait for their spans and name the hop where the trace breaks.')
    .argument('<url>', 'the entry URL requests are sent to (GET)')
    .addOption(
      new Option('--backend <backend>', 'where spans are read from')
        .choices(['receive', 'jaeger', 'tempo'])
        .default('receive'),
    )
    .option('--endpoint <url>', "Jaeger's or Tempo's query URL, or a running receiver's URL")
    .option('--host <host>', 'interface of the receiver started here (default: 127.0.0.1)')
    .option('--port <n>', 'port of the receiver started here; 0: any free one (default: 4318)', port)
    .option('--count <n>', 'requests to send, each its own trace (default: 1)', positiveInteger)
    .option('--timeout <ms>', 'how long one request may take (default: 10000)', positiveInteger)
    .option('--wait <ms>', 'how long to wait for spans after a request (default: 30000)', positiveInteger)
    .option(
      '--batch-delay <ms>',
      "the services' exporter batch delay, OTEL_BSP_SCHEDULE_DELAY: " +
        "once the entry's span is in, spans are complete when none changed for longer (default: 5000)",
      positiveInteger,
    )
    .option(
      '--mesh <peers>',
      'peers that must be traced: host, host:port or service names, comma-separated or repeated',
      list,
    )
    .option('--strict', 'fail on any peer that records nothing, not only those named by --mesh')
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      [
        '',
        'Examples:',
        '  meshtrace probe http://shop.example.com/orders',
        '  meshtrace probe --backend jaeger --endpoint http://jaeger:16686 --count 5 http://shop.example.com/orders',
        '',
        'Exit codes: 0 whole, 1 broken, 2 unknown (cannot tell, or the URL cannot be reached), ' +
          '3 incomplete (spans may still come), 64 bad usage.',
      ].join('\n'),
    )
    .action(
      (
        url: string,
        opts: {
          backend: ProbeBackend;
          endpoint?: string;
          host?: string;
          port?: number;
          count?: number;
          timeout?: number;
          wait?: number;
          batchDelay?: number;
          mesh?: string[];
          strict?: boolean;
          json?: boolean;
        },
      ) =>
        run(() =>
          runProbe(
            defined({
              url,
              backend: opts.backend,
              endpoint: opts.endpoint,
              host: opts.host,
              port: opts.port,
              count: opts.count,
              timeoutMs: opts.timeout,
              waitMs: opts.wait,
              batchDelayMs: opts.batchDelay,
              mesh: opts.mesh,
              strict: opts.strict,
              json: opts.json,
            }),
            output(),
          ),
        ),
    );

  cli
    .command('receive')
    .description(
      'Receive OTLP/HTTP traces and print the broken ones as waterfalls, ' +
        'with orphaned roots and broken hops, and a running summary, until stopped.',
    )
    .option('--host <host>', 'interface to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: any free one)', port, 4318)
    .option('--forward <url>', 'pass every request on, unchanged, to this collector')
    .option('--max-spans <n>', 'spans kept before the oldest traces are evicted (default: 100000)', positiveInteger)
    .option(
      '--quiet <ms>',
      'a trace is printed once no span of it arrived for this long (default: 2000)',
      positiveInteger,
    )
    .option('--entry <services>', 'services requests enter at, comma-separated', (v) =>
      v.split(',').filter((s) => s.length > 0),
    )
    .addOption(
      new Option(
        '--print <which>',
        'waterfalls printed: every trace, the broken ones (an orphan or a broken hop), none',
      )
        .choices(PRINT_CHOICES)
        .default('broken'),
    )
    .option(
      '--ui',
      'also serve the mesh map on the same port (/): where traces break, live, with a probe form; for 127.0.0.1 only',
    )
    .addHelpText(
      'after',
      [
        '',
        'Examples:',
        '  meshtrace receive --port 4318 --forward http://otel-collector:4318',
        '  meshtrace receive --ui --entry gateway   (then open http://127.0.0.1:4318/)',
        '',
        'Stops on Ctrl-C (exit code 0); 2 when it cannot listen.',
      ].join('\n'),
    )
    .action(
      (opts: {
        host: string;
        port: number;
        forward?: string;
        maxSpans?: number;
        quiet?: number;
        entry?: string[];
        print: PrintChoice;
        ui?: boolean;
      }) =>
        run(async () => {
          const receiver = await runReceive(
            defined({
              host: opts.host,
              port: opts.port,
              forward: opts.forward,
              maxSpans: opts.maxSpans,
              quietMs: opts.quiet,
              entryServices: opts.entry,
              print: opts.print,
              ui: opts.ui,
            }),
            output(),
          );
          await new Promise<void>((resolve) => {
            process.once('SIGINT', resolve);
            process.once('SIGTERM', resolve);
          });
          await receiver.close();
          return 0;
        }),
    );

  cli
    .command('check')
    .description('Explain header values: valid, or why not and where the first offending character is.')
    .argument('<traceparent>', 'the traceparent value')
    .argument('[tracestate]', 'a tracestate value')
    .argument('[baggage]', 'a baggage value')
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      [
        '',
        'Example:',
        "  meshtrace check 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 'congo=t61rcWkgMzE' 'userId=alice'",
      ].join('\n'),
    )
    .action(
      (traceparent: string, tracestate: string | undefined, baggage: string | undefined, opts: { json?: boolean }) => {
        process.exitCode = runCheck({ traceparent, tracestate, baggage, json: opts.json }, output());
      },
    );

  cli
    .command('logs')
    .description(
      'Read proxy access logs (Envoy, Istio JSON, nginx) and report, per upstream or route, ' +
        'requests without a traceparent, malformed ones and trace ids seen at one hop only.',
    )
    .argument('[files...]', 'access logs, one per proxy; - for stdin', ['-'])
    .addOption(new Option('--format <format>', 'the log format').choices([...LOG_FORMATS, 'auto']).default('auto'))
    .option('--json', 'print the report as JSON')
    .option('--max-traces <n>', 'trace ids remembered for the one-hop check', positiveInteger, 100_000)
    .option('--max-groups <n>', 'upstreams or routes reported apart', positiveInteger, 1_000)
    .addHelpText(
      'after',
      [
        '',
        'Examples:',
        '  kubectl logs deploy/orders -c istio-proxy | meshtrace logs -',
        '  meshtrace logs --format nginx gateway.log orders-sidecar.log',
      ].join('\n'),
    )
    .action(
      async (
        files: string[],
        opts: { format: LogFormat | 'auto'; json?: boolean; maxTraces: number; maxGroups: number },
      ) => {
        const out = output();
        if (files.includes('-') && process.stdin.isTTY) {
          out.line('meshtrace logs: stdin is a terminal; pipe a log in or name the files (meshtrace logs --help)');
          process.exitCode = USAGE;
          return;
        }
        process.exitCode = await runLogs({ files, ...opts }, out);
      },
    );

  return cli;
}

program()
  .parseAsync()
  .catch((err: unknown) => {
    // --help and --version end here too, with exit code 0; usage errors were already printed.
    if (err instanceof CommanderError) process.exitCode = err.exitCode === 0 ? 0 : USAGE;
    else {
      // A failure no command expected: its stack, for a bug report.
      process.stderr.write(`meshtrace: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      // EX_SOFTWARE: an internal error, not the user's.
      process.exitCode = 70;
    }
  });
