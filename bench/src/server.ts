// One benchmark server per child process: `node server.js <framework> <candidate>`.
// OpenTelemetry instrumentations patch modules as they are required, so each candidate gets a
// fresh process, and nothing that could load node:http or a framework is required before its
// tracing is set up. The handler, span processor and exporter are the same for every candidate.
// `floor` is not a tracer but the least one can do per request (see floorListener), so a tracer's
// cost can be read against it as well as against the bare framework.
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { SpanExporter, ReadableSpan } from '@opentelemetry/sdk-trace';
import type { ExportResult } from '@opentelemetry/core';

export const FRAMEWORKS = ['express', 'fastify', 'koa', 'http'] as const;
export type Framework = (typeof FRAMEWORKS)[number];
export const CANDIDATES = [
  'bare',
  'context',
  'floor',
  'meshtrace',
  'public-api',
  'sdk-disabled',
  'in-nodesdk',
  'otel',
] as const;
export type Candidate = (typeof CANDIDATES)[number];
/**
 * Candidates only the steady-state count runs: the attribute floor (the floor plus the span content
 * meshtrace records), NodeSDK alone, and NodeSDK with instrumentation-http's server side off and
 * meshtrace making the SERVER span.
 */
export const STEADY_ONLY = ['attr-floor', 'nodesdk', 'nodesdk-own'] as const;
export type AnyCandidate = Candidate | (typeof STEADY_ONLY)[number];
export const ALL_CANDIDATES: readonly AnyCandidate[] = [...CANDIDATES, ...STEADY_ONLY];

/** Parent to child. */
export type ToServer = { type: 'stats'; flush: boolean } | { type: 'stop' } | { type: 'gc' };
/** Child to parent. */
export type FromServer =
  | { type: 'ready'; port: number }
  | { type: 'stats'; served: number; spans: number; rssBytes: number; cpuMicros: number }
  | { type: 'error'; message: string }
  | { type: 'gc' };

export const ROUTE = '/users/:id';
export const PATH = '/users/42';

/** Counts what it is given and sends it nowhere, so export costs the same for every candidate. */
class DiscardingExporter implements SpanExporter {
  spans = 0;
  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    this.spans += spans.length;
    resultCallback({ code: 0 /* ExportResultCode.SUCCESS */ });
  }
  shutdown(): Promise<void> {
    return Promise.resolve();
  }
  forceFlush(): Promise<void> {
    return Promise.resolve();
  }
}

interface Tracing {
  readonly exporter: DiscardingExporter;
  forceFlush(): Promise<void>;
}

/**
 * The batch processor of every candidate: SDK defaults, except in a steady-state count (`MESHTRACE_BENCH_STEADY=1`),
 * where the 5 s timer never fires so every export happens when maxExportBatchSize (512) spans are queued, at the
 * same request in every run whatever the machine's speed.
 */
function batchProcessor(exporter: SpanExporter): import('@opentelemetry/sdk-trace').SpanProcessor {
  const { BatchSpanProcessor } = require('@opentelemetry/sdk-trace') as typeof import('@opentelemetry/sdk-trace');
  return process.env.MESHTRACE_BENCH_STEADY === '1'
    ? new BatchSpanProcessor({ exporter, scheduledDelayMillis: 3_600_000 })
    : new BatchSpanProcessor({ exporter });
}

/** The SDK as every traced candidate uses it: one provider, a BatchSpanProcessor with its defaults, the discarding exporter. */
function provider(propagator: 'meshtrace' | 'default'): Tracing {
  const { TracerProvider } = require('@opentelemetry/sdk-trace') as typeof import('@opentelemetry/sdk-trace');
  const { AsyncLocalStorageContextManager } =
    require('@opentelemetry/context-async-hooks') as typeof import('@opentelemetry/context-async-hooks');
  const api = require('@opentelemetry/api') as typeof import('@opentelemetry/api');
  const exporter = new DiscardingExporter();
  const p = new TracerProvider({ spanProcessors: [batchProcessor(exporter)] });
  // What NodeTracerProvider.register() did before SDK 3: context manager, propagator, provider.
  api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  if (propagator === 'meshtrace') {
    const { MeshPropagator } = require('@meshtrace/core') as typeof import('@meshtrace/core');
    api.propagation.setGlobalPropagator(new MeshPropagator());
  } else {
    // The SDK's default: W3C trace context and baggage.
    const { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } =
      require('@opentelemetry/core') as typeof import('@opentelemetry/core');
    api.propagation.setGlobalPropagator(
      new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
    );
  }
  api.trace.setGlobalTracerProvider(p);
  return { exporter, forceFlush: () => p.forceFlush() };
}

/**
 * An application that starts NodeSDK with instrumentation-http and instrumentation-undici and the same processor
 * and exporter. `alone`: the SDK's default propagator and no meshtrace. `enrich`: `MeshPropagator` as its
 * propagator, and meshtrace's adapter enriches instrumentation-http's SERVER span. `own`: the same, with
 * instrumentation-http's server side off (`disableIncomingRequestInstrumentation`), so meshtrace makes the SERVER span.
 */
function inNodeSdk(mode: 'alone' | 'enrich' | 'own' = 'enrich'): Tracing {
  // Tracing only, like the other candidates: NodeSDK otherwise starts an OTLP metrics reader (a collection every
  // 60 s, whose first one loads and compiles the exporter) and an OTLP logs pipeline, work by the clock, not per request.
  process.env.OTEL_METRICS_EXPORTER ??= 'none';
  process.env.OTEL_LOGS_EXPORTER ??= 'none';
  const { NodeSDK } = require('@opentelemetry/sdk-node') as typeof import('@opentelemetry/sdk-node');
  const { HttpInstrumentation } =
    require('@opentelemetry/instrumentation-http') as typeof import('@opentelemetry/instrumentation-http');
  const { UndiciInstrumentation } =
    require('@opentelemetry/instrumentation-undici') as typeof import('@opentelemetry/instrumentation-undici');
  const { MeshPropagator } = require('@meshtrace/core') as typeof import('@meshtrace/core');
  const api = require('@opentelemetry/api') as typeof import('@opentelemetry/api');
  const exporter = new DiscardingExporter();
  const sdk = new NodeSDK({
    spanProcessors: [batchProcessor(exporter)],
    ...(mode === 'alone' ? {} : { textMapPropagator: new MeshPropagator() }),
    instrumentations: [
      new HttpInstrumentation(mode === 'own' ? { disableIncomingRequestInstrumentation: true } : {}),
      new UndiciInstrumentation(),
    ],
  });
  sdk.start();
  const provider = api.trace.getTracerProvider() as {
    forceFlush?: () => Promise<void>;
    getDelegate?: () => { forceFlush?: () => Promise<void> };
  };
  return { exporter, forceFlush: async () => void (await provider.getDelegate?.().forceFlush?.()) };
}

/** meshtrace with `OTEL_SDK_DISABLED=true`: `setupMeshTracing` registers the context manager and propagator and no SDK, so context flows and no span is made. */
function sdkDisabled(): undefined {
  const { setupMeshTracing } = require('@meshtrace/node') as typeof import('@meshtrace/node');
  setupMeshTracing({ log: false, env: { OTEL_SDK_DISABLED: 'true' } });
  return undefined;
}

/** The official route: the HTTP instrumentation plus the framework's own, registered before anything is required. */
function otelInstrumentations(framework: Framework): { fastifyPlugin?: unknown } {
  const { registerInstrumentations } =
    require('@opentelemetry/instrumentation') as typeof import('@opentelemetry/instrumentation');
  const { HttpInstrumentation } =
    require('@opentelemetry/instrumentation-http') as typeof import('@opentelemetry/instrumentation-http');
  const instrumentations: import('@opentelemetry/instrumentation').Instrumentation[] = [new HttpInstrumentation()];
  let fastifyPlugin: unknown;
  if (framework === 'express') {
    const { ExpressInstrumentation } =
      require('@opentelemetry/instrumentation-express') as typeof import('@opentelemetry/instrumentation-express');
    instrumentations.push(new ExpressInstrumentation());
  } else if (framework === 'koa') {
    const { KoaInstrumentation } =
      require('@opentelemetry/instrumentation-koa') as typeof import('@opentelemetry/instrumentation-koa');
    instrumentations.push(new KoaInstrumentation());
  } else if (framework === 'fastify') {
    const { FastifyOtelInstrumentation } = require('@fastify/otel') as typeof import('@fastify/otel');
    const fastifyOtel = new FastifyOtelInstrumentation();
    instrumentations.push(fastifyOtel);
    fastifyPlugin = fastifyOtel.plugin();
  }
  registerInstrumentations({ instrumentations });
  return { fastifyPlugin };
}

type Listener = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * The floor under any tracer that carries the request's context through AsyncLocalStorage and
 * records one SERVER span per request: extract, start the span, end it on `finish`, run the
 * listener in its context. Nothing more (no attributes, no route, no binding of req/res), so it
 * costs less than any such tracer can; a yardstick, not a tracer to use.
 */
function floorListener(listener: Listener): Listener {
  const { context, propagation, trace, ROOT_CONTEXT, SpanKind } =
    require('@opentelemetry/api') as typeof import('@opentelemetry/api');
  const tracer = trace.getTracer('bench-floor');
  return function floor(req, res) {
    const ctx = propagation.extract(ROOT_CONTEXT, req.headers);
    const span = tracer.startSpan('GET', { kind: SpanKind.SERVER }, ctx);
    res.once('finish', () => span.end());
    context.with(trace.setSpan(ctx, span), listener, undefined, req, res);
  };
}

/**
 * The attribute floor: the floor plus the span content meshtrace records on its SERVER span for the same request
 * (HTTP semantic conventions and the propagation outcome at start; route, name and status code at the end), read
 * the plainest way, with the route a constant. What meshtrace adds over it is mechanism (route lookup, emitter
 * binding, outcome counting, hooks), not content.
 */
function attributeFloorListener(listener: Listener): Listener {
  const { context, propagation, trace, ROOT_CONTEXT, SpanKind } =
    require('@opentelemetry/api') as typeof import('@opentelemetry/api');
  const tracer = trace.getTracer('bench-attribute-floor');
  return function attributeFloor(req, res) {
    const ctx = propagation.extract(ROOT_CONTEXT, req.headers);
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const host = req.headers.host ?? '';
    const colon = host.lastIndexOf(':');
    const peer = req.socket.remoteAddress;
    const attributes: import('@opentelemetry/api').Attributes = {
      'http.request.method': req.method,
      'url.path': q < 0 ? url : url.slice(0, q),
      'url.scheme': 'http',
      'server.port': colon < 0 ? 80 : Number(host.slice(colon + 1)),
      'network.protocol.version': req.httpVersion,
      'meshtrace.propagation.outcome': 'continued',
      'meshtrace.propagation.format': 'w3c',
      'server.address': colon < 0 ? host : host.slice(0, colon),
      'client.address': peer,
      'network.peer.address': peer,
      'user_agent.original': req.headers['user-agent'],
    };
    const span = tracer.startSpan(req.method ?? 'GET', { kind: SpanKind.SERVER, attributes }, ctx);
    res.once('finish', () => {
      span.setAttribute('http.route', ROUTE);
      span.updateName(`${req.method} ${ROUTE}`);
      span.setAttribute('http.response.status_code', res.statusCode);
      span.end();
    });
    context.with(trace.setSpan(ctx, span), listener, undefined, req, res);
  };
}

/** Fastify's server as Fastify makes it without a serverFactory (same timeouts), its request handler wrapped in the floor. */
function floorFastifyServer(handler: Listener, opts: Record<string, unknown>): Server {
  return fastifyServer(floorListener(handler), opts);
}

/** The same with the attribute floor. */
function attributeFloorFastifyServer(handler: Listener, opts: Record<string, unknown>): Server {
  return fastifyServer(attributeFloorListener(handler), opts);
}

function fastifyServer(listener: Listener, opts: Record<string, unknown>): Server {
  const http = require('node:http') as typeof import('node:http');
  const server = http.createServer(listener);
  server.keepAliveTimeout = opts.keepAliveTimeout as number;
  server.requestTimeout = opts.requestTimeout as number;
  server.setTimeout(opts.connectionTimeout as number);
  return server;
}

let served = 0;

function httpHandler(req: IncomingMessage, res: ServerResponse): void {
  served++;
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.end(JSON.stringify({ id: (req.url ?? '').slice(7) }));
}

async function start(
  framework: Framework,
  candidate: AnyCandidate,
): Promise<{ server: Server; tracing: Tracing | undefined }> {
  if (candidate === 'context') {
    // The floor under any tracer: a context manager carrying the request's context across await.
    const { AsyncLocalStorageContextManager } =
      require('@opentelemetry/context-async-hooks') as typeof import('@opentelemetry/context-async-hooks');
    const api = require('@opentelemetry/api') as typeof import('@opentelemetry/api');
    api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    // AsyncLocalStorage installs its async hooks on first use; from then on every async resource pays for them.
    api.context.with(api.ROOT_CONTEXT.setValue(api.createContextKey('bench'), true), () => undefined);
  }
  if (candidate === 'public-api') process.env.MESHTRACE_PUBLIC_API_ONLY = '1';
  let tracing: Tracing | undefined;
  if (candidate === 'in-nodesdk') tracing = inNodeSdk('enrich');
  else if (candidate === 'nodesdk') tracing = inNodeSdk('alone');
  else if (candidate === 'nodesdk-own') tracing = inNodeSdk('own');
  else if (candidate === 'sdk-disabled') tracing = sdkDisabled();
  else if (candidate !== 'bare' && candidate !== 'context')
    tracing = provider(
      candidate === 'otel' || candidate === 'floor' || candidate === 'attr-floor' ? 'default' : 'meshtrace',
    );
  const otel = candidate === 'otel' ? otelInstrumentations(framework) : undefined;
  // Every candidate but the yardsticks and the official route runs meshtrace's adapter.
  const mesh =
    candidate === 'meshtrace' ||
    candidate === 'public-api' ||
    candidate === 'sdk-disabled' ||
    candidate === 'in-nodesdk' ||
    candidate === 'nodesdk-own';
  const floor = candidate === 'floor';
  const attributeFloor = candidate === 'attr-floor';
  const http = require('node:http') as typeof import('node:http');

  if (framework === 'fastify') {
    const { fastify } = require('fastify') as typeof import('fastify');
    // Fastify makes its own server; serverFactory is where its request handler can be wrapped like the other listeners.
    const app = floor
      ? fastify({ serverFactory: floorFastifyServer })
      : attributeFloor
        ? fastify({ serverFactory: attributeFloorFastifyServer })
        : fastify();
    if (mesh) await app.register((require('@meshtrace/fastify') as typeof import('@meshtrace/fastify')).meshTrace);
    if (otel?.fastifyPlugin !== undefined) await app.register(otel.fastifyPlugin as Parameters<typeof app.register>[0]);
    app.get<{ Params: { id: string } }>(ROUTE, (request, reply) => {
      served++;
      reply.send({ id: request.params.id });
    });
    await app.listen({ port: 0, host: '127.0.0.1' });
    return { server: app.server, tracing };
  }

  let listener: Listener;
  if (framework === 'express') {
    const express = require('express') as typeof import('express');
    const app = express();
    if (mesh) app.use((require('@meshtrace/express') as typeof import('@meshtrace/express')).meshTrace());
    app.get(ROUTE, (req, res) => {
      served++;
      res.json({ id: req.params.id });
    });
    listener = app;
  } else if (framework === 'koa') {
    const Koa = require('koa') as typeof import('koa');
    const Router = require('@koa/router') as typeof import('@koa/router');
    const app = new Koa();
    if (mesh) app.use((require('@meshtrace/koa') as typeof import('@meshtrace/koa')).meshTrace());
    const router = new Router();
    router.get(ROUTE, (ctx) => {
      served++;
      ctx.body = { id: ctx.params.id };
    });
    app.use(router.routes());
    listener = app.callback();
  } else {
    listener = mesh
      ? (require('@meshtrace/http') as typeof import('@meshtrace/http')).meshHttp(httpHandler)
      : httpHandler;
  }
  const server = http.createServer(
    floor ? floorListener(listener) : attributeFloor ? attributeFloorListener(listener) : listener,
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, tracing };
}

function send(message: FromServer): void {
  process.send?.(message);
}

async function main(): Promise<void> {
  const [framework, candidate] = process.argv.slice(2) as [Framework, AnyCandidate];
  if (!FRAMEWORKS.includes(framework) || !ALL_CANDIDATES.includes(candidate))
    throw new Error(`usage: server.js <${FRAMEWORKS.join('|')}> <${ALL_CANDIDATES.join('|')}>`);
  const { server, tracing } = await start(framework, candidate);
  // A steady-state count keeps one connection open while valgrind is told to start counting, which can take
  // longer than the 5 s keep-alive default on a loaded machine.
  if (process.env.MESHTRACE_BENCH_STEADY === '1') server.keepAliveTimeout = 600_000;
  // Never outlive the runner, whatever happens to it.
  process.on('disconnect', () => process.exit(0));
  process.on('message', (message: ToServer) => {
    if (message.type === 'stop') {
      server.closeAllConnections();
      server.close(() => process.exit(0));
    } else if (message.type === 'gc') {
      // A steady-state window starts from a collected heap (the process runs with --expose-gc).
      (globalThis as { gc?: () => void }).gc?.();
      send({ type: 'gc' });
    } else if (message.type === 'stats') {
      const report = () => {
        const cpu = process.cpuUsage();
        send({
          type: 'stats',
          served,
          spans: tracing?.exporter.spans ?? 0,
          rssBytes: process.memoryUsage.rss(),
          cpuMicros: cpu.user + cpu.system,
        });
      };
      if (message.flush && tracing !== undefined) void tracing.forceFlush().then(report);
      else report();
    }
  });
  send({ type: 'ready', port: (server.address() as AddressInfo).port });
}

if (require.main === module) {
  main().catch((err: unknown) => {
    send({ type: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    process.exit(1);
  });
}
