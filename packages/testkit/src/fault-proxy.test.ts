import { Agent, createServer, request } from 'node:http';
import type { IncomingMessage, Server } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { startFaultProxy } from '@meshtrace/testkit';
import type { FaultProxy } from '@meshtrace/testkit';

let target: Server;
let targetPort: number;
let hits: number;
let proxy: FaultProxy | undefined;

beforeAll(async () => {
  target = createServer((req, res) => {
    hits++;
    req.resume();
    req.once('end', () => res.end(`hello ${req.method} ${req.url}`));
  });
  await new Promise<void>((resolve) => target.listen(0, '127.0.0.1', resolve));
  targetPort = (target.address() as AddressInfo).port;
});

afterAll(async () => {
  target.closeAllConnections();
  await new Promise((resolve) => target.close(resolve));
});

beforeEach(() => {
  hits = 0;
});

afterEach(async () => {
  await proxy?.close();
  proxy = undefined;
});

type Outcome = { status: number; body: string } | { error: string };

/** One HTTP request through the proxy; gives up (as `timeout`) after `waitMs`. */
function get(
  port: number,
  options: { method?: string; body?: string; agent?: Agent; waitMs?: number } = {},
): Promise<Outcome> {
  return new Promise((resolve) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/x', method: options.method ?? 'GET', agent: options.agent ?? false },
      (res: IncomingMessage) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.setTimeout(options.waitMs ?? 5000, () => {
      resolve({ error: 'timeout' });
      req.destroy();
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    // No Content-Length: Node sends the body chunked, as the OTLP exporter does.
    if (options.body !== undefined) req.write(options.body);
    req.end();
  });
}

test('pass forwards both ways and keeps its port', async () => {
  proxy = await startFaultProxy({ targetPort });
  expect(proxy.url).toBe(`http://127.0.0.1:${proxy.port}`);
  expect(await get(proxy.port)).toEqual({ status: 200, body: 'hello GET /x' });
  expect(await get(proxy.port, { method: 'POST', body: 'x'.repeat(100_000) })).toEqual({
    status: 200,
    body: 'hello POST /x',
  });
  expect(hits).toBe(2);
});

test('refuse stops listening (ECONNREFUSED) on the same port, and pass listens again', async () => {
  proxy = await startFaultProxy({ targetPort });
  const port = proxy.port;
  await proxy.setMode('refuse');
  expect(await get(port)).toEqual({ error: 'ECONNREFUSED' });
  await proxy.setMode('pass');
  expect(proxy.port).toBe(port);
  expect(await get(port)).toEqual({ status: 200, body: 'hello GET /x' });
  expect(hits).toBe(1);
});

test('starting in refuse reserves a port that refuses until switched', async () => {
  proxy = await startFaultProxy({ targetPort, mode: 'refuse' });
  expect(proxy.port).toBeGreaterThan(0);
  expect(await get(proxy.port)).toEqual({ error: 'ECONNREFUSED' });
  await proxy.setMode('pass');
  expect(await get(proxy.port)).toMatchObject({ status: 200 });
});

test('blackhole accepts and never answers, and the target sees nothing', async () => {
  proxy = await startFaultProxy({ targetPort, mode: 'blackhole' });
  expect(await get(proxy.port, { method: 'POST', body: 'spans', waitMs: 300 })).toEqual({ error: 'timeout' });
  expect(proxy.accepted).toBe(1);
  expect(hits).toBe(0);
});

test('delay answers, no sooner than the delay', async () => {
  proxy = await startFaultProxy({ targetPort });
  await proxy.setMode('delay', 200);
  const started = Date.now();
  expect(await get(proxy.port)).toEqual({ status: 200, body: 'hello GET /x' });
  expect(Date.now() - started).toBeGreaterThanOrEqual(200);
  expect(hits).toBe(1);
});

test('http-503 answers every request on a keep-alive connection without reaching the target', async () => {
  proxy = await startFaultProxy({ targetPort, mode: 'http-503' });
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  try {
    expect(await get(proxy.port, { agent, method: 'POST', body: 'a chunked body' })).toMatchObject({ status: 503 });
    expect(await get(proxy.port, { agent })).toMatchObject({ status: 503 });
    expect(proxy.accepted).toBe(1);
    expect(hits).toBe(0);
  } finally {
    agent.destroy();
  }
});

test('switching mode resets connections opened under the old one', async () => {
  proxy = await startFaultProxy({ targetPort, mode: 'blackhole' });
  const socket: Socket = connect(proxy.port, '127.0.0.1');
  const closed = new Promise<string>((resolve) => {
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    socket.on('close', () => resolve('closed'));
  });
  await new Promise((resolve) => socket.once('connect', resolve));
  while (proxy.open === 0) await new Promise((resolve) => setImmediate(resolve));
  await proxy.setMode('pass');
  expect(await closed).toBe('ECONNRESET');
  expect(proxy.open).toBe(0);
  expect(await get(proxy.port)).toMatchObject({ status: 200 });
});

test('close destroys open connections and frees the port', async () => {
  const p = await startFaultProxy({ targetPort, mode: 'blackhole' });
  const pending = get(p.port, { waitMs: 5000 });
  while (p.open === 0) await new Promise((resolve) => setImmediate(resolve));
  await p.close();
  expect(await pending).toEqual({ error: 'ECONNRESET' });
  expect(await get(p.port)).toEqual({ error: 'ECONNREFUSED' });
  await expect(p.setMode('pass')).rejects.toThrow('closed');
});

test.each([
  ['targetPort', { targetPort: 0 }],
  ['targetHost', { targetPort: 1, targetHost: '' }],
  ['mode', { targetPort: 1, mode: 'flaky' }],
  ['delayMs', { targetPort: 1, delayMs: -1 }],
])('bad option %s is a TypeError naming it', async (option, options) => {
  await expect(startFaultProxy(options as never)).rejects.toThrow(
    new RegExp(`^@meshtrace/testkit: option "${option}"`),
  );
});
