import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Koa from 'koa';
import { HEADER_CASES, observe, runHttpCase, setupTestTracing } from '@meshtrace/testkit';
import { meshTrace } from '@meshtrace/koa';

// Koa 2 has no types of its own; its API is the one @types/koa describes.
const Koa2 = require('koa2') as typeof Koa;
const MAJORS = [
  ['koa 2', Koa2],
  ['koa 3', Koa],
] as const;

const tracing = setupTestTracing();
afterAll(() => tracing.shutdown());

describe.each(MAJORS)('%s', (_major, KoaApp) => {
  let server: Server;
  let base: string;

  beforeAll(async () => {
    const app = new KoaApp();
    app.use(meshTrace());
    app.use(async (ctx) => {
      await new Promise((r) => setImmediate(r));
      ctx.body = observe();
    });
    server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise((resolve) => server.close(resolve)));

  test.each(HEADER_CASES.map((c) => [c.name, c] as const))('header case: %s', async (_name, c) => {
    expect(await runHttpCase(tracing, c, `${base}/cases?q=1`)).toEqual([]);
  });
});
