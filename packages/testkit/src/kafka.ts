import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { freePort } from './nginx';
import { peerDir } from './peers';
import { hasExited, stopChild } from './process';

/** Options of {@link startKafka}; all optional. */
export interface KafkaOptions {
  /** The folder whose `libs/` holds the broker's jars. Default: the `kafka` peer, `peerDir('kafka')`. */
  home?: string;
  /** The `java` to run (17 or newer). Default: `$JAVA_HOME/bin/java` when `JAVA_HOME` is set, else `java` on `PATH`. */
  java?: string;
  /** More broker settings, over the test defaults (`server.properties` keys). */
  properties?: Record<string, string | number | boolean>;
  /** How long to wait for the broker to answer a metadata request. Default 60000 ms. */
  startTimeoutMs?: number;
}

/** A private single-node KRaft broker on 127.0.0.1; `stop()` ends it and removes its files. */
export interface KafkaBroker {
  /** `127.0.0.1:<port>`, the broker listener, for kafkajs `brokers`. */
  readonly address: string;
  readonly port: number;
  /** The controller listener's port. */
  readonly controllerPort: number;
  /** The broker's own log (Log4j, INFO). */
  readonly logFile: string;
  /** How long the format and the start took, until the first metadata answer. */
  readonly startMs: number;
  stop(): Promise<void>;
}

/**
 * Test settings: one node is broker and controller; internal topics have one replica and one
 * partition (the default 50 offsets partitions slow the first group join); a group forms at once
 * (no initial rebalance delay) and accepts session timeouts down to 1 s, so a test can rebalance fast.
 */
function serverProperties(
  dir: string,
  port: number,
  controllerPort: number,
  extra: KafkaOptions['properties'],
): string {
  const props: Record<string, string | number | boolean> = {
    'process.roles': 'broker,controller',
    'node.id': 1,
    'controller.quorum.bootstrap.servers': `127.0.0.1:${controllerPort}`,
    listeners: `PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controllerPort}`,
    'advertised.listeners': `PLAINTEXT://127.0.0.1:${port}`,
    'controller.listener.names': 'CONTROLLER',
    'inter.broker.listener.name': 'PLAINTEXT',
    'listener.security.protocol.map': 'CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
    'log.dirs': join(dir, 'data'),
    'num.partitions': 1,
    'auto.create.topics.enable': true,
    'offsets.topic.replication.factor': 1,
    'offsets.topic.num.partitions': 1,
    'transaction.state.log.replication.factor': 1,
    'transaction.state.log.min.isr': 1,
    'transaction.state.log.num.partitions': 1,
    'share.coordinator.state.topic.replication.factor': 1,
    'share.coordinator.state.topic.min.isr': 1,
    'share.coordinator.state.topic.num.partitions': 1,
    'group.initial.rebalance.delay.ms': 0,
    'group.min.session.timeout.ms': 1000,
    // Fewer threads on a small test machine.
    'num.network.threads': 2,
    'num.io.threads': 2,
    'background.threads': 2,
    'num.recovery.threads.per.data.dir': 1,
    ...extra,
  };
  return Object.entries(props)
    .map(([k, v]) => `${k}=${v}`)
    .join('\n');
}

/** The broker's logs go to a file, at INFO: quiet in the test output, there to read when it fails. */
function log4jConfig(file: string): string {
  return [
    'status = warn',
    'appender.file.type = File',
    'appender.file.name = file',
    `appender.file.fileName = ${file}`,
    'appender.file.layout.type = PatternLayout',
    'appender.file.layout.pattern = [%d] %p %m (%c)%n',
    'rootLogger.level = info',
    'rootLogger.appenderRef.file.ref = file',
    // Every client's connect and disconnect; its config dumps.
    'logger.network.name = org.apache.kafka.common.network.Selector',
    'logger.network.level = warn',
  ].join('\n');
}

// Small heap; C1 only and the serial collector: on two shared cores, start-up matters more than peak speed.
const JVM = [
  '-Xms64m',
  '-Xmx512m',
  '-XX:+UseSerialGC',
  '-XX:TieredStopAtLevel=1',
  '-XX:-UsePerfData',
  '-Djava.awt.headless=true',
];

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function tail(file: string, lines = 30): string {
  try {
    const text = readFileSync(file, 'utf8').trimEnd();
    return text === '' ? '(empty)' : text.split('\n').slice(-lines).join('\n');
  } catch {
    return '(none)';
  }
}

/** Runs `java args` to the end; rejects with its output unless it exits 0. */
function runJava(java: string, args: string[], cwd: string, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(java, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => {
      output += chunk;
    });
    child.stderr.on('data', (chunk) => {
      output += chunk;
    });
    child.once('error', (err) => reject(new Error(`could not run ${java} for ${what}: ${err.message}`)));
    child.once('close', (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`${what} failed (${code ?? signal}):\n${output.trim()}`)),
    );
  });
}

/** Resolves once a kafkajs admin connects and lists topics; false if it could not. */
async function answers(address: string): Promise<boolean> {
  const admin = new Kafka({
    clientId: 'meshtrace-testkit-ready',
    brokers: [address],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 1000,
    requestTimeout: 2000,
    retry: { retries: 0 },
  }).admin();
  try {
    await admin.connect();
    await admin.listTopics();
    return true;
  } catch {
    return false;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/**
 * Starts a private Apache Kafka broker (KRaft, one node as broker and controller) for one test file:
 * formats fresh storage with a random cluster id in a temp dir, listens on free 127.0.0.1 ports, and
 * resolves once a kafkajs admin lists topics. Throws with the broker's log tail if it exits or times out.
 * @example
 * let kafka: KafkaBroker;
 * beforeAll(async () => { kafka = await startKafka(); }, 90_000);
 * afterAll(() => kafka.stop(), 30_000);
 */
export async function startKafka(options: KafkaOptions = {}): Promise<KafkaBroker> {
  const started = Date.now();
  const home = options.home ?? peerDir('kafka');
  const java = options.java ?? (process.env.JAVA_HOME ? join(process.env.JAVA_HOME, 'bin', 'java') : 'java');
  const startTimeoutMs = options.startTimeoutMs ?? 60_000;
  const dir = mkdtempSync(join(tmpdir(), 'meshtrace-kafka-'));
  const [port, controllerPort] = [await freePort(), await freePort()];
  const address = `127.0.0.1:${port}`;
  const config = join(dir, 'server.properties');
  const logFile = join(dir, 'broker.log');
  const outFile = join(dir, 'broker.out');
  const classpath = ['-cp', join(home, 'libs', '*'), `-Dlog4j2.configurationFile=${join(dir, 'log4j2.properties')}`];
  // The class-data archive the peers command writes: a JVM that maps it in starts in about half the time.
  const archive = join(home, 'kafka.jsa');
  if (existsSync(archive)) classpath.unshift(`-XX:SharedArchiveFile=${archive}`);
  let broker: ChildProcess | undefined;

  // A test run that dies without afterAll must not leave a broker behind.
  const killNow = () => {
    if (broker && !hasExited(broker)) broker.kill('SIGKILL');
  };
  process.once('exit', killNow);
  const stop = async () => {
    process.removeListener('exit', killNow);
    if (broker) await stopChild(broker, 10_000);
    rmSync(dir, { recursive: true, force: true });
  };
  const logs = () => `--- broker.log ---\n${tail(logFile)}\n--- stdout/stderr ---\n${tail(outFile, 15)}`;

  try {
    writeFileSync(config, serverProperties(dir, port, controllerPort, options.properties));
    writeFileSync(join(dir, 'log4j2.properties'), log4jConfig(logFile));
    // A Kafka cluster id: 16 random bytes, base64url without padding.
    const clusterId = randomBytes(16).toString('base64url');
    await runJava(
      java,
      [
        ...JVM,
        ...classpath,
        'kafka.tools.StorageTool',
        'format',
        '--standalone',
        `--cluster-id=${clusterId}`,
        '--config',
        config,
      ],
      dir,
      'kafka-storage format',
    );

    const out = openSync(outFile, 'a');
    try {
      broker = spawn(java, [...JVM, ...classpath, 'kafka.Kafka', config], { cwd: dir, stdio: ['ignore', out, out] });
    } finally {
      closeSync(out);
    }
    const failed = new Promise<Error>((resolve) => broker!.once('error', resolve));
    const deadline = Date.now() + startTimeoutMs;
    while (!(await answers(address))) {
      const err = await Promise.race([failed, sleep(200).then(() => undefined)]);
      if (err) throw new Error(`could not run ${java}: ${err.message}`);
      if (hasExited(broker))
        throw new Error(
          `the Kafka broker exited (${broker.exitCode ?? broker.signalCode}) before it answered:\n${logs()}`,
        );
      if (Date.now() > deadline)
        throw new Error(`the Kafka broker did not answer on ${address} within ${startTimeoutMs} ms:\n${logs()}`);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { address, port, controllerPort, logFile, startMs: Date.now() - started, stop };
}
