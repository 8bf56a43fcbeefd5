import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stopChild } from '@meshtrace/testkit';
import { userEnv } from './run';

/** A finished span as the apps' stdout exporter (fixtures/span-stdout.js) prints it. */
export interface SpanRecord {
  readonly name: string;
  readonly kind: string;
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly scope?: string;
  readonly attributes: Readonly<Record<string, unknown>>;
}

/** What the stdout exporter puts before each span's JSON, so the app's other output is left alone. */
const SPAN_PREFIX = 'span ';
const LISTENING = /^listening (\d+)$/;

/** One request that reached the downstream service. */
export interface DownstreamRequest {
  readonly url: string;
  /** Every `traceparent` header line, in any letter case, in arrival order. */
  readonly traceparents: readonly string[];
}

/** The service the apps call: it records the raw header lines of every request. */
export interface Downstream {
  readonly url: string;
  /** Requests whose path holds `marker`, in arrival order. */
  requestsWith(marker: string): DownstreamRequest[];
  close(): Promise<void>;
}

export async function startDownstream(): Promise<Downstream> {
  const seen: DownstreamRequest[] = [];
  const server = createServer((req, res) => {
    // rawHeaders keeps repeated lines apart, where req.headers would have joined them.
    const traceparents: string[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      if (req.rawHeaders[i].toLowerCase() === 'traceparent') traceparents.push(req.rawHeaders[i + 1]);
    seen.push({ url: req.url ?? '', traceparents });
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"stock":1}');
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requestsWith: (marker) => seen.filter((r) => r.url.includes(marker)),
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A running app: its port, the spans it exported so far and what it wrote to stderr. */
export interface RunningApp {
  readonly port: number;
  readonly spans: SpanRecord[];
  readonly stderr: () => string;
  readonly child: ChildProcess;
  stop(): Promise<void>;
}

/**
 * Starts `file` of an installed app with the Node that runs the tests, as `node file` in the app's
 * folder, and waits for the line that says which port it listens on.
 */
export function startApp(
  dir: string,
  file: string,
  env: Readonly<Record<string, string>>,
  timeoutMs = 30_000,
): Promise<RunningApp> {
  const child = spawn(process.execPath, [join(dir, file)], {
    cwd: dir,
    // The SDK's metric and log pipelines are not under test; left on, they would try an OTLP
    // endpoint on localhost that is not there.
    env: userEnv({ OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none', ...env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const spans: SpanRecord[] = [];
  let stderr = '';
  let other = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      fail(`did not print "listening <port>" within ${timeoutMs} ms`);
    }, timeoutMs);
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${file} ${why}\n--- stdout ---\n${other}\n--- stderr ---\n${stderr}`));
    };
    child.once('exit', (code, signal) => fail(`exited (code ${code}, signal ${signal}) before listening`));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.startsWith(SPAN_PREFIX)) {
        spans.push(JSON.parse(line.slice(SPAN_PREFIX.length)) as SpanRecord);
        return;
      }
      const listening = LISTENING.exec(line);
      if (listening === null) {
        other += `${line}\n`;
        return;
      }
      clearTimeout(timer);
      child.removeAllListeners('exit');
      resolve({ port: Number(listening[1]), spans, stderr: () => stderr, child, stop: () => stopChild(child, 5000) });
    });
  });
}

/** The answer to a raw request. */
export interface Answer {
  readonly status: number;
  readonly head: string;
  readonly body: string;
}

/**
 * Sends `GET path` over a plain socket with exactly the header lines given, so a header can be
 * repeated or written in any case, as a proxy might send it.
 */
export function rawGet(port: number, path: string, headers: ReadonlyArray<readonly [string, string]>): Promise<Answer> {
  const lines = [
    `GET ${path} HTTP/1.1`,
    `host: 127.0.0.1:${port}`,
    ...headers.map(([k, v]) => `${k}: ${v}`),
    'connection: close',
    '',
    '',
  ];
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.setTimeout(20_000, () => socket.destroy(new Error(`no answer to GET ${path} within 20 s`)));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('error', reject);
    socket.once('close', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const split = text.indexOf('\r\n\r\n');
      const head = split < 0 ? text : text.slice(0, split);
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
      resolve({ status, head, body: split < 0 ? '' : text.slice(split + 4) });
    });
    // write, not end: Node's server drops a request whose client half-closes before the answer.
    // `connection: close` makes the server close the socket once it has answered.
    socket.write(lines.join('\r\n'));
  });
}

export const hex = (bytes: number): string => randomBytes(bytes).toString('hex');

/** A fresh caller: a trace id, a span id and the valid `traceparent` that carries them. */
export function caller(): { traceId: string; spanId: string; traceparent: string } {
  const traceId = hex(16);
  const spanId = hex(8);
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01` };
}

/** A unique order id, so the spans and downstream calls of one request can be told apart from others. */
export const orderId = (): string => `o${hex(6)}`;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Waits until `ready` holds for the spans seen so far (or `timeoutMs` passes), then a little
 * longer, so that a second span of the same kind, if the app made one, has arrived too.
 */
export async function settle(
  app: RunningApp,
  ready: (spans: readonly SpanRecord[]) => boolean,
  timeoutMs = 5000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until && !ready(app.spans)) await sleep(25);
  await sleep(300);
}
