import { createServer } from 'node:http';
import type { IncomingHttpHeaders, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, propagation, trace } from '@opentelemetry/api';
import type { TracerProvider } from '@opentelemetry/api';
import Router from '@koa/router';
import express from 'express';
import { fastify } from 'fastify';
import Koa from 'koa';
import { meshTrace as expressMeshTrace } from '@meshtrace/express';
import { meshTrace as fastifyMeshTrace } from '@meshtrace/fastify';
import { meshClient } from '@meshtrace/http';
import { meshTrace as koaMeshTrace } from '@meshtrace/koa';
import type { ServiceName } from './telemetry';

/** How one service is built. */
export interface ServiceOptions {
  /** The service's own provider: its spans carry its `service.name`. */
  tracerProvider: TracerProvider;
  /**
   * `true`: outbound calls go through meshtrace's client (CLIENT span, `traceparent` sent).
   * `false`: plain `fetch`, as in a service whose inbound side is traced but whose HTTP client is not.
   */
  propagate: boolean;
  /** The base URL of the next service's sidecar; read per request, since sidecars start after services. */
  downstream?: () => string;
  /**
   * Forward the inbound trace headers by hand with plain `fetch`, the `traceparent` upper-cased, as
   * code that "normalises" header values does (upper-case hex is invalid, W3C trace-context §3.2.2.3).
   */
  uppercaseTraceparent?: boolean;
}

/** A service listening on 127.0.0.1. */
export interface RunningService {
  readonly name: ServiceName;
  readonly port: number;
  stop(): Promise<void>;
}

/** The client a service calls the next one with. */
function outbound(options: ServiceOptions): typeof fetch {
  return options.propagate && !options.uppercaseTraceparent
    ? meshClient({ tracerProvider: options.tracerProvider }).fetch
    : globalThis.fetch;
}

/** The headers of a call downstream: `x-request-id` goes on, as Envoy-based meshes ask applications to, so one request's spans share it. */
function downstreamHeaders(options: ServiceOptions, inbound: IncomingHttpHeaders): Record<string, string> {
  const headers: Record<string, string> = { accept: 'application/json' };
  const forwarded = options.uppercaseTraceparent
    ? ['x-request-id', 'traceparent', 'tracestate', 'baggage']
    : ['x-request-id'];
  for (const name of forwarded) {
    const value = inbound[name];
    if (typeof value === 'string') headers[name] = name === 'traceparent' ? value.toUpperCase() : value;
  }
  return headers;
}

/** GET `path` on the downstream sidecar and return its JSON body; a failed call is an Error with the status. */
async function callDownstream(
  client: typeof fetch,
  options: ServiceOptions,
  path: string,
  inbound: IncomingHttpHeaders,
): Promise<unknown> {
  const base = options.downstream?.();
  if (base === undefined) throw new Error('no downstream configured');
  const res = await client(`${base}${path}`, { headers: downstreamHeaders(options, inbound) });
  if (!res.ok) throw Object.assign(new Error(`downstream answered ${res.status}`), { status: 502 });
  return res.json();
}

async function listen(server: Server): Promise<number> {
  if (!server.listening)
    await new Promise<void>((resolve, reject) => server.once('listening', resolve).once('error', reject));
  return (server.address() as AddressInfo).port;
}

function closer(server: Server): () => Promise<void> {
  return async () => {
    const closed = new Promise((resolve) => server.close(resolve));
    server.closeAllConnections();
    await closed;
  };
}

/** The entry service, Express 5: `GET /checkout/:id` asks orders for the order. */
export async function startGateway(options: ServiceOptions): Promise<RunningService> {
  const client = outbound(options);
  const app = express();
  app.use(expressMeshTrace({ tracerProvider: options.tracerProvider }));
  app.get('/checkout/:id', async (req, res) => {
    const order = await callDownstream(client, options, `/orders/${encodeURIComponent(req.params.id)}`, req.headers);
    res.json({ checkout: req.params.id, order });
  });
  const server = app.listen(0, '127.0.0.1');
  return { name: 'gateway', port: await listen(server), stop: closer(server) };
}

/** Fastify 5: `GET /orders/:id` asks inventory for the stock of the order's item. */
export async function startOrders(options: ServiceOptions): Promise<RunningService> {
  const client = outbound(options);
  const app = fastify();
  await app.register(fastifyMeshTrace, { tracerProvider: options.tracerProvider });
  app.get<{ Params: { id: string } }>('/orders/:id', async (request) => {
    const stock = await callDownstream(
      client,
      options,
      `/stock/sku-${encodeURIComponent(request.params.id)}`,
      request.headers,
    );
    return { order: request.params.id, items: [{ sku: `sku-${request.params.id}`, quantity: 1 }], stock };
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  return { name: 'orders', port: (app.server.address() as AddressInfo).port, stop: () => app.close() };
}

/** Koa 3 with @koa/router: `GET /stock/:sku`, the end of the chain. */
export async function startInventory(options: ServiceOptions): Promise<RunningService> {
  const app = new Koa();
  const router = new Router();
  router.get('/stock/:sku', (ctx) => {
    ctx.body = { sku: ctx.params.sku, available: 7 };
  });
  app.use(koaMeshTrace({ tracerProvider: options.tracerProvider }));
  app.use(router.routes());
  const server = app.listen(0, '127.0.0.1');
  return { name: 'inventory', port: await listen(server), stop: closer(server) };
}

/**
 * Orders without meshtrace: plain node:http with its own OpenTelemetry tracer that does not extract,
 * so every request starts a new trace, which its CLIENT span carries on to inventory.
 */
export async function startPlainOrders(options: ServiceOptions): Promise<RunningService> {
  const tracer = options.tracerProvider.getTracer('plain-orders');
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const match = /^\/orders\/([^/]+)$/.exec(path);
    if (req.method !== 'GET' || match === null) return void res.writeHead(404).end();
    const requestId = typeof req.headers['x-request-id'] === 'string' ? req.headers['x-request-id'] : undefined;
    // What instrumentation-http records with headersToSpanAttributes: the header as a one-element array.
    // And where it was called, from Host, as instrumentation-http records it: the doctor ties a caller's call by it.
    const [host, port] = (req.headers.host ?? '').split(':');
    const attributes = {
      'http.request.method': 'GET',
      'url.path': path,
      'server.address': host,
      'server.port': Number(port || 80),
      ...(requestId === undefined ? {} : { 'http.request.header.x-request-id': [requestId] }),
    };
    const span = tracer.startSpan('GET /orders/:id', { kind: SpanKind.SERVER, attributes }, ROOT_CONTEXT);
    const url = `${options.downstream?.() ?? ''}/stock/sku-${match[1]}`;
    const client = tracer.startSpan(
      'GET',
      { kind: SpanKind.CLIENT, attributes: { 'http.request.method': 'GET', 'url.full': url } },
      trace.setSpan(ROOT_CONTEXT, span),
    );
    const headers: Record<string, string> = {
      accept: 'application/json',
      ...(requestId === undefined ? {} : { 'x-request-id': requestId }),
    };
    propagation.inject(trace.setSpan(ROOT_CONTEXT, client), headers);
    void fetch(url, { headers })
      .then(async (answer) => {
        client.setAttribute('http.response.status_code', answer.status);
        const stock: unknown = await answer.json();
        res
          .writeHead(answer.ok ? 200 : 502, { 'content-type': 'application/json' })
          .end(JSON.stringify({ order: match[1], stock }));
      })
      .catch((err: unknown) => {
        client.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
        res.writeHead(502).end();
      })
      .finally(() => {
        client.end();
        span.setAttribute('http.response.status_code', res.statusCode);
        span.end();
      });
  });
  server.listen(0, '127.0.0.1');
  return { name: 'orders', port: await listen(server), stop: closer(server) };
}
