'use strict';
// One service of a process mesh, configured by its environment (see ../src/mesh.ts):
//   MESH_SERVICE   the service name (service.name of its spans)
//   MESH_KIND      express | fastify | koa | http (meshtrace on that adapter), official (NodeSDK with
//                  auto-instrumentations, no meshtrace), external (plain node:http, no OpenTelemetry)
//   MESH_CLIENT    meshtrace (meshFetch) | plain-fetch (globalThis.fetch, nothing injected)
//   MESH_FORWARD   nothing | request-id: inbound headers copied onto each downstream call by hand
//   MESH_CALLS     JSON list of base URLs called in turn on every request
//   MESH_DELAY_MS  how long a request waits before calling downstream
//   PORT           where to listen on 127.0.0.1
// Spans go to OTEL_EXPORTER_OTLP_ENDPOINT over OTLP/HTTP, in batches every OTEL_BSP_SCHEDULE_DELAY ms.
// Every service answers GET /healthz (a kube-probe) without calling anyone.

const name = process.env.MESH_SERVICE || 'service';
const kind = process.env.MESH_KIND || 'http';
const clientKind = process.env.MESH_CLIENT || 'meshtrace';
const forward = process.env.MESH_FORWARD || 'nothing';
const calls = JSON.parse(process.env.MESH_CALLS || '[]');
const delayMs = Number(process.env.MESH_DELAY_MS || 0);
const port = Number(process.env.PORT);

const ADAPTERS = ['express', 'fastify', 'koa', 'http'];
if (!ADAPTERS.includes(kind) && kind !== 'official' && kind !== 'external') {
  throw new TypeError(`mesh service ${name}: unknown MESH_KIND ${JSON.stringify(kind)}`);
}

// Tracing starts before any module it instruments is loaded.
let shutdown = async () => undefined;
if (ADAPTERS.includes(kind)) {
  const { setupMeshTracing } = require('@meshtrace/node');
  shutdown = setupMeshTracing({ serviceName: name, log: false }).shutdown;
} else if (kind === 'official') {
  const { NodeSDK } = require('@opentelemetry/sdk-node');
  const { getNodeAutoInstrumentations } = require('@opentelemetry/auto-instrumentations-node');
  const sdk = new NodeSDK({
    serviceName: name,
    instrumentations: [getNodeAutoInstrumentations({ '@opentelemetry/instrumentation-fs': { enabled: false } })],
  });
  sdk.start();
  shutdown = () => sdk.shutdown();
}

const client =
  ADAPTERS.includes(kind) && clientKind === 'meshtrace' ? require('@meshtrace/http').meshFetch : globalThis.fetch;

/** The headers of one downstream call: only what this service forwards by hand. */
function outboundHeaders(inbound) {
  const headers = { accept: 'application/json' };
  const requestId = inbound['x-request-id'];
  if (forward === 'request-id' && typeof requestId === 'string') headers['x-request-id'] = requestId;
  return headers;
}

/** Waits, calls every downstream in turn and returns the answer's status and body. */
async function work(inbound) {
  if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
  const answers = [];
  for (const base of calls) {
    try {
      const res = await client(`${base}/work`, { headers: outboundHeaders(inbound) });
      await res.arrayBuffer();
      answers.push({ url: base, status: res.status });
    } catch (err) {
      answers.push({ url: base, error: String(err?.cause ? err.cause.code || err.cause : err) });
    }
  }
  const ok = answers.every((a) => a.status === 200);
  return { status: ok ? 200 : 502, body: { service: name, calls: answers } };
}

function plainListener(req, res) {
  if (req.url === '/healthz') return void res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
  work(req.headers).then(
    (answer) => res.writeHead(answer.status, { 'content-type': 'application/json' }).end(JSON.stringify(answer.body)),
    (err) => res.writeHead(500).end(String(err)),
  );
}

async function listen() {
  if (kind === 'express') {
    const express = require('express');
    const { meshTrace } = require('@meshtrace/express');
    const app = express();
    app.use(meshTrace());
    app.get('/healthz', (_req, res) => res.type('text/plain').send('ok'));
    app.get('/work', async (req, res) => {
      const answer = await work(req.headers);
      res.status(answer.status).json(answer.body);
    });
    const server = app.listen(port, '127.0.0.1');
    return () => new Promise((resolve) => server.close(resolve));
  }
  if (kind === 'fastify') {
    const { fastify } = require('fastify');
    const { meshTrace } = require('@meshtrace/fastify');
    const app = fastify();
    await app.register(meshTrace);
    app.get('/healthz', async () => 'ok');
    app.get('/work', async (request, reply) => {
      const answer = await work(request.headers);
      return reply.code(answer.status).send(answer.body);
    });
    await app.listen({ port, host: '127.0.0.1' });
    return () => app.close();
  }
  if (kind === 'koa') {
    const Koa = require('koa');
    const { meshTrace } = require('@meshtrace/koa');
    const app = new Koa();
    app.use(meshTrace());
    app.use(async (ctx) => {
      if (ctx.path === '/healthz') {
        ctx.body = 'ok';
        return;
      }
      const answer = await work(ctx.headers);
      ctx.status = answer.status;
      ctx.body = answer.body;
    });
    const server = app.listen(port, '127.0.0.1');
    return () => new Promise((resolve) => server.close(resolve));
  }
  const { createServer } = require('node:http');
  const listener = kind === 'http' ? require('@meshtrace/http').meshHttp(plainListener) : plainListener;
  const server = createServer(listener).listen(port, '127.0.0.1');
  return () => new Promise((resolve) => server.close(resolve));
}

listen().then(
  (close) => {
    process.once('SIGTERM', () => {
      const exit = setTimeout(() => process.exit(0), 1000);
      Promise.resolve(close())
        .finally(() => shutdown())
        .finally(() => {
          clearTimeout(exit);
          process.exit(0);
        });
    });
  },
  (err) => {
    process.stderr.write(`mesh service ${name} failed to start: ${err?.stack ?? err}\n`);
    process.exit(1);
  },
);
