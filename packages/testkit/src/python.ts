import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { launch, portAccepts } from './launch';
import { freePort } from './nginx';
import { peerDir } from './peers';

/** Options of {@link startPythonService}; all optional. */
export interface PythonServiceOptions {
  /** How long to wait for the program to listen. Default 30000 ms. */
  startTimeoutMs?: number;
}

/** A Python program serving on 127.0.0.1. */
export interface PythonService {
  readonly port: number;
  readonly url: string;
  /** The program's stdout and stderr so far. */
  output(): string;
  stop(): Promise<void>;
}

/** The example service the interop tests run: aiohttp with OpenTelemetry Python (see its docstring). */
export const PYTHON_SERVICE = resolve(__dirname, '..', 'peers-fixtures', 'python', 'service.py');

/** The Python of the peer virtualenv (OpenTelemetry SDK, OTLP/HTTP exporter, aiohttp instrumentations). */
export function pythonPeer(): string {
  return join(peerDir('python'), 'bin', 'python');
}

/**
 * Runs the Python program at `script` with the peer virtualenv's Python, with env PORT set to a free
 * loopback port and `env` added (OTEL_* variables come only from `env`); resolves once the program
 * listens on PORT, throws with its output if it exits first. `stop()` ends it (SIGTERM, so it can flush).
 * @example
 * const svc = await startPythonService(PYTHON_SERVICE, { OTEL_EXPORTER_OTLP_ENDPOINT: jaeger.otlpHttpUrl });
 */
export async function startPythonService(
  script: string,
  env: Readonly<Record<string, string>> = {},
  options: PythonServiceOptions = {},
): Promise<PythonService> {
  const python = pythonPeer();
  if (!existsSync(script)) throw new TypeError(`@meshtrace/testkit: startPythonService: no program at ${script}`);
  const port = await freePort();
  const childEnv: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith('OTEL_') && !k.startsWith('PYTHON')) childEnv[k] = v;
  Object.assign(childEnv, { PYTHONUNBUFFERED: '1', PYTHONDONTWRITEBYTECODE: '1', ...env, PORT: String(port) });
  const peer = await launch({
    name: `python ${script}`,
    command: python,
    args: [script],
    env: childEnv,
    cwd: dirname(script),
    startTimeoutMs: options.startTimeoutMs,
    ready: () => portAccepts(port),
  });
  return { port, url: `http://127.0.0.1:${port}`, output: peer.output, stop: peer.stop };
}
