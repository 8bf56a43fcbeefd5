import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
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
}

/** A service listening on 127.0.0.1. */
export interface RunningService {
  readonly name: ServiceName;
  readonly port: number;
  stop(): Promise<void>;
}

/** The client a service calls the next one with. */
function outbound(options: ServiceOptions): typeof fetch {
  return options.propagate ? meshClient({ tracerProvider: options.tracerProvider }).fetch : globalThis.fetch;
}

/** GET `path` on the downstream sidecar and return its JSON body; a failed call is an Error with the status. */
async function callDownstream(client: typeof fetch, options: ServiceOptions, path: string): Promise<unknown> {
  const base = options.downstream?.();
  if (base === undefined) throw new Error('no downstream configured');
  const res = await client(`${base}${path}`, { headers: { accept: 'application/json' } });
  if (!res.ok) throw Object.assign(new Error(`downstream answered ${res.status}`), { status: 502 });
  return res.json();
}

async function listen(server: Server): Promise<number> {
  if (!server.listening) await new Promise<void>((resolve, reject) => server.once('listening', resolve).once('error', reject));
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
    const order = await callDownstream(client, options, `/orders/${encodeURIComponent(req.params.id)}`);
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
    const stock = await callDownstream(client, options, `/stock/sku-${encodeURIComponent(request.params.id)}`);
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
