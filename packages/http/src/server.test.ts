import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HEADER_CASES, observe, runHttpCase, setupTestTracing } from '@meshtrace/testkit';
import { meshHttp } from '@meshtrace/http';

const tracing = setupTestTracing();
let server: Server;
let base: string;

beforeAll(async () => {
  server = createServer(
    meshHttp((req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(observe()));
    }),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  await tracing.shutdown();
});

test.each(HEADER_CASES.map((c) => [c.name, c] as const))('header case: %s', async (_name, c) => {
  expect(await runHttpCase(tracing, c, `${base}/cases?q=1`)).toEqual([]);
});
