import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launch, portAccepts } from './launch';
import { freePort } from './nginx';
import { peerDir } from './peers';

/** A propagator Caddy's tracing reads and writes, as OTEL_PROPAGATORS names it. */
export type CaddyPropagator = 'tracecontext' | 'baggage' | 'b3' | 'b3multi';

/** A sampler of the OpenTelemetry Go SDK, as OTEL_TRACES_SAMPLER names it. */
export type CaddySampler =
  | 'always_on'
  | 'always_off'
  | 'traceidratio'
  | 'parentbased_always_on'
  | 'parentbased_always_off'
  | 'parentbased_traceidratio';

/** How one Caddy sidecar forwards to its service and traces; all but `upstreamPort` optional. */
export interface CaddyOptions {
  /** The service's port on 127.0.0.1. */
  upstreamPort: number;
  /** Where Caddy exports its spans: an OTLP/HTTP base URL (`/v1/traces` is added). Default: no export. */
  otlpEndpoint?: string;
  /** `service.name` of Caddy's spans (OTEL_SERVICE_NAME). Default `caddy`. */
  serviceName?: string;
  /** The name of Caddy's span, placeholders allowed. Default Caddy's own, `handler`. */
  spanName?: string;
  /** Headers Caddy reads and writes (OTEL_PROPAGATORS); `b3multi` is what Linkerd sends. Default `tracecontext`. */
  propagators?: CaddyPropagator | readonly CaddyPropagator[];
  /** Lets the sidecar decide against the caller (OTEL_TRACES_SAMPLER). Default the SDK's, `parentbased_always_on`. */
  sampler?: CaddySampler;
  /** OTEL_TRACES_SAMPLER_ARG: the ratio of the `traceidratio` samplers. */
  samplerArg?: number;
  /** Drop traceparent, tracestate, baggage and the b3 headers on the way to the service. */
  stripTraceContext?: boolean;
}

/** A running Caddy reverse proxy on 127.0.0.1 with OpenTelemetry tracing on. */
export interface CaddySidecar {
  readonly port: number;
  readonly url: string;
  /** Caddy's output so far (its JSON log lines). */
  output(): string;
  stop(): Promise<void>;
}

const PROPAGATORS: readonly string[] = ['tracecontext', 'baggage', 'b3', 'b3multi'];
const SAMPLERS: readonly string[] = [
  'always_on',
  'always_off',
  'traceidratio',
  'parentbased_always_on',
  'parentbased_always_off',
  'parentbased_traceidratio',
];
const TRACE_HEADERS = [
  'traceparent',
  'tracestate',
  'baggage',
  'b3',
  'X-B3-TraceId',
  'X-B3-SpanId',
  'X-B3-ParentSpanId',
  'X-B3-Sampled',
  'X-B3-Flags',
];

function fail(message: string): never {
  throw new TypeError(`@meshtrace/testkit: startCaddy: ${message}`);
}

function check(o: CaddyOptions): string[] {
  if (!Number.isInteger(o.upstreamPort) || o.upstreamPort < 1 || o.upstreamPort > 65535)
    fail(`upstreamPort must be a TCP port, got ${String(o.upstreamPort)}`);
  const propagators = typeof o.propagators === 'string' ? [o.propagators] : [...(o.propagators ?? ['tracecontext'])];
  if (propagators.length === 0) fail('propagators must name at least one propagator');
  for (const p of propagators) if (!PROPAGATORS.includes(p)) fail(`unknown propagator ${JSON.stringify(p)}`);
  if (o.sampler !== undefined && !SAMPLERS.includes(o.sampler)) fail(`unknown sampler ${JSON.stringify(o.sampler)}`);
  if (o.samplerArg !== undefined && !(o.samplerArg >= 0 && o.samplerArg <= 1))
    fail(`samplerArg must be a ratio from 0 to 1, got ${o.samplerArg}`);
  if (o.otlpEndpoint !== undefined && !/^https?:\/\//.test(o.otlpEndpoint))
    fail(`otlpEndpoint must be an http(s) URL, got ${JSON.stringify(o.otlpEndpoint)}`);
  // A span name is one Caddyfile token inside double quotes.
  if (o.spanName !== undefined && (o.spanName === '' || /["\n]/.test(o.spanName)))
    fail('spanName must be non-empty, without double quotes or newlines');
  return propagators;
}

function caddyfile(dir: string, port: number, o: CaddyOptions): string {
  const strip = o.stripTraceContext ? TRACE_HEADERS.map((h) => `\t\t\theader_up -${h}`).join('\n') : '';
  return `{
\tadmin off
\tauto_https off
\tpersist_config off
\tstorage file_system ${dir}/data
\tlog {
\t\toutput stderr
\t\tlevel WARN
\t}
}

http://:${port} {
\tbind 127.0.0.1
\ttracing {${o.spanName === undefined ? '' : `\n\t\tspan "${o.spanName}"`}
\t}
\treverse_proxy 127.0.0.1:${o.upstreamPort} {
${strip}
\t}
}
`;
}

/**
 * Starts Caddy (the build `npx -y pnpm@10 peers caddy` brings) as a reverse proxy on a free loopback port
 * in front of `upstreamPort`, with its `tracing` directive on. Caddy's tracing is opentelemetry-go's
 * `otelhttp`: one SERVER span per request, continued from the incoming context when the sampler agrees,
 * and injected into the forwarded request, so the service sees Caddy's span id as its parent.
 * @example
 * const caddy = await startCaddy({ upstreamPort, otlpEndpoint: jaeger.otlpHttpUrl, serviceName: 'edge' });
 * await fetch(caddy.url, { headers: { traceparent } });
 * await caddy.stop();
 */
export async function startCaddy(options: CaddyOptions): Promise<CaddySidecar> {
  const propagators = check(options);
  const caddy = join(peerDir('caddy'), 'caddy');
  const dir = mkdtempSync(join(tmpdir(), 'meshtrace-caddy-'));
  try {
    const port = await freePort();
    const config = join(dir, 'Caddyfile');
    writeFileSync(config, caddyfile(dir, port, options));
    const env: NodeJS.ProcessEnv = {};
    // Only this sidecar's OpenTelemetry settings: none inherited from the test process.
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('OTEL_')) env[k] = v;
    Object.assign(env, {
      // Caddy keeps its data and autosave under HOME/XDG; keep them in the temp folder.
      HOME: dir,
      XDG_DATA_HOME: join(dir, 'data'),
      XDG_CONFIG_HOME: join(dir, 'config'),
      OTEL_SERVICE_NAME: options.serviceName ?? 'caddy',
      OTEL_PROPAGATORS: propagators.join(','),
      // Spans leave within a fifth of a second instead of the batch processor's 5 s.
      OTEL_BSP_SCHEDULE_DELAY: '200',
      ...(options.otlpEndpoint === undefined
        ? { OTEL_TRACES_EXPORTER: 'none' }
        : {
            OTEL_TRACES_EXPORTER: 'otlp',
            OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
            OTEL_EXPORTER_OTLP_ENDPOINT: options.otlpEndpoint,
          }),
      ...(options.sampler === undefined ? {} : { OTEL_TRACES_SAMPLER: options.sampler }),
      ...(options.samplerArg === undefined ? {} : { OTEL_TRACES_SAMPLER_ARG: String(options.samplerArg) }),
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_LOGS_EXPORTER: 'none',
    });
    const peer = await launch({
      name: 'caddy',
      command: caddy,
      args: ['run', '--config', config, '--adapter', 'caddyfile'],
      env,
      cwd: dir,
      ready: () => portAccepts(port),
      cleanup: () => rmSync(dir, { recursive: true, force: true }),
    });
    return { port, url: `http://127.0.0.1:${port}`, output: peer.output, stop: peer.stop };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
