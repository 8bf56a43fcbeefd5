// Apache Kafka, the broker (kafka_2.13) and its runtime dependencies as jars from Maven Central, run as
// `java -cp '<dir>/libs/*' kafka.Kafka server.properties` (KRaft; testkit's startKafka formats and starts it).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const POM = join(dirname(fileURLToPath(import.meta.url)), 'kafka', 'pom.xml');
const MIN_JAVA = 17;
/** The class-data archive testkit's startKafka uses when it is there (it starts the JVM faster). */
const ARCHIVE = 'kafka.jsa';
// The same java as testkit's startKafka: an archive only serves the JVM that wrote it.
const JAVA = process.env.JAVA_HOME ? join(process.env.JAVA_HOME, 'bin', 'java') : 'java';

/** The coordinates of the artifacts Maven says it could not get, from its error output. */
function missingArtifacts(output) {
  const found = new Set();
  const coordinates = '([\\w.-]+:[\\w.-]+(?::[\\w.-]+){1,3})';
  for (const pattern of [
    `Could not find artifact ${coordinates}`,
    `Failure to find ${coordinates}`,
    `${coordinates} was not found in`,
    `Could not transfer artifact ${coordinates}`,
    `Plugin ${coordinates} or one of its dependencies could not be resolved`,
  ]) {
    for (const match of output.matchAll(new RegExp(pattern, 'g'))) found.add(match[1]);
  }
  for (const match of output.matchAll(/The following artifacts could not be resolved: ([^\n]+?)(?::? Could not|$)/gm)) {
    for (const one of match[1].split(/,\s*/)) found.add(one.replace(/\s*\(.*$/, '').trim());
  }
  return [...found].filter(Boolean);
}

/** Copies kafka_2.13 `version` and its runtime dependencies into `dir/libs`, then checks the broker runs. */
export async function bring({ dir, version, log, run }) {
  const libs = join(dir, 'libs');
  const artifact = `org.apache.kafka:kafka_2.13:${version}`;
  log(`mvn dependency:copy-dependencies ${artifact}`);
  try {
    await run(
      'mvn',
      [
        '-q',
        '-B',
        // A failure cached by an earlier run (a registry that was down) is tried again.
        '-U',
        '-f',
        POM,
        `-Dkafka.version=${version}`,
        'dependency:copy-dependencies',
        '-DincludeScope=runtime',
        `-DoutputDirectory=${libs}`,
      ],
      { quiet: true },
    );
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    const missing = missingArtifacts(message);
    const what = missing.length > 0 ? missing.join(', ') : `${artifact} or one of its dependencies`;
    throw new Error(`Maven could not get ${what} (needed for Kafka ${version}): ${message}`);
  }
  const jars = (await readdir(libs)).filter((name) => name.endsWith('.jar'));
  if (!jars.includes(`kafka_2.13-${version}.jar`)) throw new Error(`${libs} holds no kafka_2.13-${version}.jar`);

  // `kafka.Kafka --version` loads the broker's classes and prints the version its jar was built as.
  const shown = (
    await run(JAVA, ['-cp', join(libs, '*'), 'kafka.Kafka', '--version'], { quiet: true }).catch((err) => {
      throw new Error(
        `the broker in ${libs} does not run (it needs Java ${MIN_JAVA} or newer on PATH): ${err.message}`,
      );
    })
  ).trim();
  const last = shown.split('\n').pop()?.trim() ?? '';
  if (!last.startsWith(version)) throw new Error(`kafka.Kafka --version says ${last || 'nothing'}, not ${version}`);
  log(`kafka ${last}: ${jars.length} jars in libs/`);

  const ms = await writeArchive(dir, libs, run).catch((err) => {
    // Only start-up time depends on it: the broker runs without.
    log(`no class-data archive, the broker will start slower: ${err instanceof Error ? err.message : err}`);
    return undefined;
  });
  if (ms !== undefined) log(`${ARCHIVE}: the classes a broker start loads, archived in ${(ms / 1000).toFixed(1)} s`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject).listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts a broker once with -XX:ArchiveClassesAtExit and stops it, which leaves `dir/kafka.jsa`: the
 * classes of a start, mapped in by later JVMs instead of loaded and verified again (JDK CDS, JEP 350).
 */
async function writeArchive(dir, libs, run) {
  const started = Date.now();
  const work = join(dir, 'archive-run');
  await mkdir(work, { recursive: true });
  const [port, controller] = [await freePort(), await freePort()];
  const config = join(work, 'server.properties');
  const logFile = join(work, 'broker.log');
  await writeFile(
    config,
    [
      'process.roles=broker,controller',
      'node.id=1',
      `controller.quorum.bootstrap.servers=127.0.0.1:${controller}`,
      `listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${controller}`,
      'controller.listener.names=CONTROLLER',
      'listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
      `log.dirs=${join(work, 'data')}`,
      'offsets.topic.replication.factor=1',
      'transaction.state.log.replication.factor=1',
      'share.coordinator.state.topic.replication.factor=1',
    ].join('\n'),
  );
  const log4j = join(work, 'log4j2.properties');
  await writeFile(
    log4j,
    [
      'appender.file.type = File',
      'appender.file.name = file',
      `appender.file.fileName = ${logFile}`,
      'appender.file.layout.type = PatternLayout',
      'appender.file.layout.pattern = [%d] %p %m (%c)%n',
      'rootLogger.level = info',
      'rootLogger.appenderRef.file.ref = file',
    ].join('\n'),
  );
  const jvm = ['-Xmx512m', '-XX:+UseSerialGC', '-cp', join(libs, '*'), `-Dlog4j2.configurationFile=${log4j}`];
  try {
    await run(
      JAVA,
      [
        ...jvm,
        'kafka.tools.StorageTool',
        'format',
        '--standalone',
        '--cluster-id=bWVzaHRyYWNlLWthZmthIQ',
        '--config',
        config,
      ],
      { quiet: true },
    );
    const archive = join(dir, ARCHIVE);
    const broker = spawn(JAVA, [`-XX:ArchiveClassesAtExit=${archive}`, ...jvm, 'kafka.Kafka', config], {
      cwd: work,
      stdio: 'ignore',
    });
    const exited = new Promise((resolve) => broker.once('exit', resolve));
    const deadline = Date.now() + 120_000;
    const up = () => existsSync(logFile) && readFileSync(logFile, 'utf8').includes('Kafka Server started');
    while (!up()) {
      if (broker.exitCode !== null || broker.signalCode !== null)
        throw new Error('the broker exited before it started');
      if (Date.now() > deadline) {
        broker.kill('SIGKILL');
        throw new Error('the broker did not start within 120 s');
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    // The archive is written as the JVM exits normally, which SIGTERM (the broker's own shutdown) is.
    broker.kill('SIGTERM');
    const timer = setTimeout(() => broker.kill('SIGKILL'), 60_000);
    await exited;
    clearTimeout(timer);
    if (!existsSync(archive)) throw new Error('the JVM wrote no archive at exit');
    return Date.now() - started;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
