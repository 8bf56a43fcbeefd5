// Jaeger all-in-one (the v2 `jaeger` binary, an OpenTelemetry Collector distribution), built with Go from
// the Go module proxy through the tool module in peers/jaeger, whose go.mod and go.sum pin every dependency.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const MODULE = 'github.com/jaegertracing/jaeger';
const TOOL_MODULE = join(dirname(fileURLToPath(import.meta.url)), 'jaeger');

/** Builds `jaeger` into `dir` with `go build`, then checks the binary's module version and that it runs. */
export async function bring({ dir, version, log, run }) {
  const pkg = `${MODULE}/cmd/jaeger@v${version}`;
  const jaeger = join(dir, 'jaeger');
  try {
    const required = (
      await run('go', ['list', '-m', '-f', '{{.Version}}', MODULE], { cwd: TOOL_MODULE, quiet: true })
    ).trim();
    if (required !== `v${version}`)
      throw new Error(`peers/jaeger/go.mod requires ${MODULE} ${required}; run \`go get -tool ${pkg}\` there`);
    log(`go build ${MODULE}/cmd/jaeger (${required}; a cold build takes minutes)`);
    // -mod=readonly: the committed go.sum is the whole truth; a static binary needs no C toolchain.
    await run('go', ['build', '-mod=readonly', '-trimpath', '-o', jaeger, `${MODULE}/cmd/jaeger`], {
      cwd: TOOL_MODULE,
      env: { CGO_ENABLED: '0' },
    });
  } catch (err) {
    throw new Error(`could not build ${pkg} from the Go module proxy: ${err.message}`);
  }
  const info = await run('go', ['version', '-m', jaeger], { quiet: true });
  const built = info.match(/^\s*(?:mod|dep)\s+github\.com\/jaegertracing\/jaeger\s+(\S+)/m)?.[1];
  if (built !== `v${version}`)
    throw new Error(`${jaeger} was built from jaeger ${built ?? '(unknown)'}, not v${version}`);
  await run(jaeger, ['--help'], { quiet: true });
  log(`jaeger ${built}`);
}
