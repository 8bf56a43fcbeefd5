import { jaegerSource } from '@meshtrace/doctor';
import type { Span } from '@meshtrace/doctor';
import { peerDir, startJaeger } from '@meshtrace/testkit';
import type { JaegerServer } from '@meshtrace/testkit';
import type { Sampler } from '@opentelemetry/sdk-trace';
import { Stopper } from './lifecycle';
import { createTelemetry } from './telemetry';
import { startMesh } from './topology';
import type { Mesh, MeshOptions } from './topology';

/** Why `--sidecar caddy` or `--jaeger` cannot run: the peer is not built (with the command that builds it), else undefined. */
export function missingPeers(args: { sidecars: string; jaeger?: boolean }): string | undefined {
  const needed = [
    ...(args.sidecars === 'caddy' ? ['caddy' as const] : []),
    ...(args.jaeger ? ['jaeger' as const] : []),
  ];
  for (const name of needed) {
    try {
      peerDir(name);
    } catch (err) {
      return (err as Error).message;
    }
  }
  return undefined;
}

/** A private Jaeger all-in-one on 127.0.0.1 (in-memory storage), stopped with everything else. */
export function startDemoJaeger(stopper: Stopper): Promise<JaegerServer> {
  return stopper.track(startJaeger());
}

/**
 * The spans of `traceIds` as Jaeger's query API answers them, read with the doctor's own Jaeger client,
 * once no trace has changed for `quietMs` (the sidecars export in batches) or `timeoutMs` passed. A read
 * that fails (Jaeger answers 500 for a moment under load) is tried again; one still failing at the end throws.
 */
export async function readBack(
  queryUrl: string,
  traceIds: readonly string[],
  options: { quietMs?: number; timeoutMs?: number } = {},
): Promise<Map<string, Span[]>> {
  const source = jaegerSource({ endpoint: queryUrl });
  const quietMs = options.quietMs ?? 1000;
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  const window = { startMs: Date.now() - 600_000, endMs: Date.now() + 60_000 };
  const traces = new Map<string, Span[]>();
  let count = -1;
  let since = Date.now();
  try {
    for (;;) {
      let failed: unknown;
      for (const id of traceIds) {
        try {
          traces.set(id, await source.trace(id, window));
        } catch (err) {
          failed = err;
        }
      }
      if (failed === undefined) {
        const now = [...traces.values()].reduce((n, spans) => n + spans.length, 0);
        if (now !== count) {
          count = now;
          since = Date.now();
        } else if (Date.now() - since >= quietMs) break;
      }
      if (Date.now() > deadline) {
        if (failed !== undefined) throw failed;
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  } finally {
    await source.close();
  }
  return traces;
}

/** A mesh running until `stop()`. */
export interface RunningMesh {
  readonly mesh: Mesh;
  stop(): Promise<void>;
}

/** The three services behind Caddy sidecars, services and sidecars exporting straight to `jaeger`. */
export async function caddyMeshInto(
  jaeger: JaegerServer,
  options: Partial<Pick<MeshOptions, 'stripAt' | 'sidecarTracing'>> & { sampler?: Sampler } = {},
): Promise<RunningMesh> {
  const { sampler, ...mesh } = options;
  const stopper = new Stopper();
  const telemetry = await createTelemetry({ otlpUrl: `${jaeger.otlpHttpUrl}/v1/traces`, exportTo: 'otlp', sampler });
  const stop = async (): Promise<void> => {
    await stopper.stop();
    await telemetry.shutdown();
  };
  try {
    return {
      mesh: await startMesh({
        sidecars: 'caddy',
        propagate: true,
        providers: telemetry.providers,
        stopper,
        sidecarOtlp: jaeger.otlpHttpUrl,
        ...mesh,
      }),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
