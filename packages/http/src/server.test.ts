import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HEADER_CASES, checkCase, delta, observe, setupTestTracing } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';
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
  tracing.reset();
  const before = await tracing.outcomeCounts();
  const droppedBefore = await tracing.droppedCounts();
  const headers = new Headers();
  for (const [k, v] of Object.entries(c.headers)) for (const one of Array.isArray(v) ? v : [v]) headers.append(k, one);
  const res = await fetch(`${base}/cases?q=1`, { headers });
  const seen = (await res.json()) as Observed;
  await new Promise((r) => setImmediate(r));
  const problems = checkCase(c, seen, tracing.spans(), delta(before, await tracing.outcomeCounts()), delta(droppedBefore, await tracing.droppedCounts()));
  expect(problems).toEqual([]);
});
