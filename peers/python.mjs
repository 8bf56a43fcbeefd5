// OpenTelemetry Python in a virtualenv: `python3 -m venv`, then every package that
// peers/python-requirements.txt pins, from PyPI. The peer's version is the SDK's.
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REQUIREMENTS = join(dirname(fileURLToPath(import.meta.url)), 'python-requirements.txt');
/** The modules the tests' Python services import. */
const MODULES = [
  'aiohttp',
  'opentelemetry.sdk.trace',
  'opentelemetry.exporter.otlp.proto.http.trace_exporter',
  'opentelemetry.instrumentation.aiohttp_server',
  'opentelemetry.instrumentation.aiohttp_client',
  'opentelemetry.propagators.b3',
];

/** Makes a virtualenv in `dir` and installs the pinned packages into it with pip. */
export async function bring({ dir, version, log, run }) {
  const pins = await readFile(REQUIREMENTS, 'utf8');
  if (!new RegExp(`^opentelemetry-sdk==${version.replaceAll('.', '\\.')}$`, 'm').test(pins))
    throw new Error(`peers/python-requirements.txt does not pin opentelemetry-sdk==${version} (peers/versions.json)`);
  const python3 = process.env.PYTHON ?? 'python3';
  log(`${python3} -m venv`);
  await run(python3, ['-m', 'venv', dir], { quiet: true });
  const python = join(dir, 'bin', 'python');
  try {
    log('pip install -r peers/python-requirements.txt');
    await run(
      python,
      ['-m', 'pip', 'install', '--quiet', '--no-input', '--disable-pip-version-check', '-r', REQUIREMENTS],
      { quiet: true },
    );
  } catch (err) {
    throw new Error(
      `could not install opentelemetry-sdk==${version} and its instrumentations from PyPI: ${err.message}`,
    );
  }
  await run(python, ['-m', 'pip', 'check', '--disable-pip-version-check'], { quiet: true });
  const check = [
    'import importlib, importlib.metadata as m',
    `for name in ${JSON.stringify(MODULES)}: importlib.import_module(name)`,
    "print(m.version('opentelemetry-sdk'))",
  ].join('\n');
  const installed = (await run(python, ['-c', check], { quiet: true })).trim();
  if (installed !== version) throw new Error(`the venv has opentelemetry-sdk ${installed}, not ${version}`);
  log(`opentelemetry-sdk ${installed} in ${python}`);
}
