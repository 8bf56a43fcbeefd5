// Caddy, the standard distribution (its `tracing` directive included), built with Go from the Go module proxy.
import { join } from 'node:path';

const MODULE = 'github.com/caddyserver/caddy/v2/cmd/caddy';

/** Builds `caddy` into `dir` with `go install`, then checks the binary runs and has the tracing handler. */
export async function bring({ dir, version, log, run }) {
  const pkg = `${MODULE}@v${version}`;
  try {
    log(`go install ${pkg}`);
    // A static binary: no C toolchain needed, and it runs wherever the tests do.
    await run('go', ['install', pkg], { env: { GOBIN: dir, CGO_ENABLED: '0', GOFLAGS: '-trimpath' } });
  } catch (err) {
    throw new Error(`could not build ${pkg} from the Go module proxy: ${err.message}`);
  }
  const caddy = join(dir, 'caddy');
  // `caddy version` says "unknown" when Caddy is the main module, so read the module line of its build info.
  const info = await run(caddy, ['build-info'], { quiet: true });
  const built = info.match(/^mod\s+github\.com\/caddyserver\/caddy\/v2\s+(\S+)/m)?.[1];
  if (built !== `v${version}`)
    throw new Error(`${caddy} was built from caddy ${built ?? '(unknown)'}, not v${version}`);
  const modules = await run(caddy, ['list-modules'], { quiet: true });
  if (!modules.split('\n').some((line) => line.trim() === 'http.handlers.tracing'))
    throw new Error(`${caddy} was built without http.handlers.tracing, which the tracing tests need`);
  log(`caddy ${built} with http.handlers.tracing`);
}
