import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  accessSync,
  closeSync,
  constants,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, delimiter, dirname, join } from 'node:path';
import { freePort } from './nginx';
import { hasExited, stopChild } from './process';

/** Options of {@link startRabbitMq}; all optional. */
export interface RabbitMqOptions {
  /**
   * Path of the `rabbitmq-server` script. Default: found on `PATH`, `/usr/sbin`, `/usr/lib/rabbitmq/bin`,
   * `/usr/local/sbin`, `/opt/homebrew/sbin`.
   */
  server?: string;
  /** How long to wait for the broker to accept AMQP connections. Default 60000 ms. */
  startTimeoutMs?: number;
}

/** A private broker on 127.0.0.1; `stop()` ends every process it started and removes its files. */
export interface RabbitMqBroker {
  /** `amqp://guest:guest@127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  readonly nodeName: string;
  stop(): Promise<void>;
}

const SEARCH = ['/usr/sbin', '/usr/lib/rabbitmq/bin', '/usr/local/sbin', '/opt/homebrew/sbin'];
const INSTALL_HINT =
  'install it (Debian/Ubuntu: apt-get install -y rabbitmq-server; macOS: brew install rabbitmq) or pass its ' +
  'path as `server`';

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The real start script. Debian's `/usr/sbin/rabbitmq-server` is a wrapper that switches to the
 * `rabbitmq` user and its home, which would put the broker outside our private directory.
 */
function findServer(explicit: string | undefined): string {
  const candidates =
    explicit !== undefined
      ? [explicit]
      : [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), ...SEARCH].map((d) =>
          join(d, 'rabbitmq-server'),
        );
  for (const candidate of candidates) {
    if (!isExecutable(candidate)) continue;
    const real = realpathSync(candidate);
    if (basename(real) === 'rabbitmq-server') return real;
    const sibling = join(dirname(real), 'rabbitmq-server');
    if (isExecutable(sibling)) return realpathSync(sibling);
  }
  const where = explicit !== undefined ? explicit : `PATH, ${SEARCH.join(', ')}`;
  throw new Error(
    `rabbitmq-server not found (looked in ${where})${process.env.CI ? ' on CI' : ''}: the RabbitMQ tests need a ` +
      `real broker; ${INSTALL_HINT}.`,
  );
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves true once something on `port` answers; with `amqp`, only once it sends Connection.Start. */
function probe(port: number, amqp: boolean): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(2000, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => {
      if (!amqp) return done(true);
      // AMQP 0-9-1 §4.2.2: the protocol header; the server answers with a method frame (type 1).
      socket.write(Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 0, 9, 1]));
    });
    socket.once('data', (data) => done(data[0] === 1));
  });
}

/** Signals the child's whole process group (it was spawned detached, as a group leader). */
function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || hasExited(child)) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // Already gone.
  }
}

async function terminate(child: ChildProcess | undefined, graceMs: number): Promise<void> {
  if (child !== undefined) await stopChild(child, graceMs, (signal) => signalGroup(child, signal));
}

function tail(file: string, lines = 25): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no output)';
  }
}

/**
 * Starts a private RabbitMQ node for one test file: its own directory (data, logs, config, Erlang
 * cookie as a fresh HOME), free ports for AMQP, distribution and its own epmd, a unique node name.
 * Resolves once the broker answers the AMQP handshake; throws with the broker's output otherwise.
 * @example
 * let broker: RabbitMqBroker;
 * beforeAll(async () => { broker = await startRabbitMq(); }, 90_000);
 * afterAll(() => broker.stop(), 30_000);
 */
export async function startRabbitMq(options: RabbitMqOptions = {}): Promise<RabbitMqBroker> {
  const server = findServer(options.server);
  const startTimeoutMs = options.startTimeoutMs ?? 60_000;
  const dir = mkdtempSync(join(tmpdir(), 'meshtrace-rabbitmq-'));
  const [port, distPort, epmdPort] = [await freePort(), await freePort(), await freePort()];
  const nodeName = `meshtrace-${process.pid}-${randomBytes(4).toString('hex')}@localhost`;
  const home = join(dir, 'home');
  const serverLog = join(dir, 'server.out');
  let epmd: ChildProcess | undefined;
  let broker: ChildProcess | undefined;

  const stop = async () => {
    process.removeListener('exit', killNow);
    await terminate(broker, 20_000);
    await terminate(epmd, 5000);
    rmSync(dir, { recursive: true, force: true });
  };
  // A test run that dies without afterAll must not leave a broker behind.
  function killNow(): void {
    if (broker) signalGroup(broker, 'SIGKILL');
    if (epmd) signalGroup(epmd, 'SIGKILL');
  }
  process.once('exit', killNow);

  try {
    writeFileSync(
      join(dir, 'rabbitmq.conf'),
      '# Test machines can be short of disk; the 50MB default would block publishers.\n' +
        'disk_free_limit.absolute = 1MB\n',
    );
    writeFileSync(join(dir, 'enabled_plugins'), '[].\n');
    writeFileSync(join(dir, 'rabbitmq-env.conf'), '');
    // Erlang distribution needs a cookie in $HOME; a fresh HOME keeps the user's own cookie (and .erlang) out of it.
    mkdirSync(home, { mode: 0o700 });
    writeFileSync(join(home, '.erlang.cookie'), randomBytes(15).toString('hex').toUpperCase(), { mode: 0o400 });

    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env))
      if (!k.startsWith('RABBITMQ_') && !k.startsWith('ERL_')) env[k] = v;
    Object.assign(env, {
      HOME: home,
      // Our own epmd on a free port: the node registers there, never with a system or another test's epmd.
      ERL_EPMD_PORT: String(epmdPort),
      RABBITMQ_NODENAME: nodeName,
      RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
      RABBITMQ_NODE_PORT: String(port),
      // The default (AMQP port + 20000) can pass 65535 with a free high port.
      RABBITMQ_DIST_PORT: String(distPort),
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
      RABBITMQ_CONF_ENV_FILE: join(dir, 'rabbitmq-env.conf'),
      RABBITMQ_CONFIG_FILE: join(dir, 'rabbitmq.conf'),
      RABBITMQ_ADVANCED_CONFIG_FILE: join(dir, 'advanced.config'),
      RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, 'enabled_plugins'),
      RABBITMQ_PLUGINS_EXPAND_DIR: join(dir, 'plugins'),
      RABBITMQ_MNESIA_BASE: join(dir, 'mnesia'),
      RABBITMQ_LOG_BASE: join(dir, 'log'),
      RABBITMQ_PID_FILE: join(dir, 'rabbitmq.pid'),
    });

    epmd = spawn('epmd', ['-port', String(epmdPort), '-address', '127.0.0.1'], {
      env,
      cwd: dir,
      detached: true,
      stdio: 'ignore',
    });
    const epmdFailed = new Promise<Error>((resolve) => epmd!.once('error', resolve));
    for (let i = 0; !(await probe(epmdPort, false)); i++) {
      const err = await Promise.race([epmdFailed, sleep(50).then(() => undefined)]);
      if (err || hasExited(epmd) || i > 100)
        throw new Error(
          `epmd did not start on 127.0.0.1:${epmdPort}${err ? `: ${err.message}` : ''} (it comes with Erlang, ` +
            'which rabbitmq-server needs)',
        );
    }

    const out = openSync(serverLog, 'a');
    try {
      broker = spawn(server, [], { env, cwd: dir, detached: true, stdio: ['ignore', out, out] });
    } finally {
      closeSync(out);
    }
    const brokerFailed = new Promise<Error>((resolve) => broker!.once('error', resolve));
    const deadline = Date.now() + startTimeoutMs;
    while (!(await probe(port, true))) {
      const err = await Promise.race([brokerFailed, sleep(250).then(() => undefined)]);
      if (err) throw new Error(`could not run ${server}: ${err.message}`);
      if (hasExited(broker))
        throw new Error(
          `rabbitmq-server exited (${broker.exitCode ?? broker.signalCode}) before accepting ` +
            `connections:\n${tail(serverLog)}`,
        );
      if (Date.now() > deadline)
        throw new Error(
          `rabbitmq-server did not accept AMQP connections on 127.0.0.1:${port} within ${startTimeoutMs} ` +
            `ms:\n${tail(serverLog)}`,
        );
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `amqp://guest:guest@127.0.0.1:${port}`, port, nodeName, stop };
}
