import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { get } from 'node:https';
import { selfSignedCert, startNginx } from '@meshtrace/testkit';

const server = createServer((req, res) => res.end(JSON.stringify(req.headers)));
beforeAll(() => new Promise<void>((r) => server.listen(0, '127.0.0.1', r)));
afterAll(() => new Promise((r) => server.close(r)));
const upstreamPort = () => (server.address() as AddressInfo).port;
const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

test('forwards trace headers and adds x-request-id', async () => {
  const nginx = await startNginx({ upstreamPort: upstreamPort() });
  try {
    const headers = (await (await fetch(nginx.url, { headers: { traceparent: TP, baggage: 'a=1' } })).json()) as Record<
      string,
      string
    >;
    expect(headers).toMatchObject({ traceparent: TP, baggage: 'a=1' });
    expect(headers['x-request-id']).toMatch(/^[0-9a-f]{32}$/);
    expect(nginx.accessLog()).toContain(`traceparent="${TP}"`);
  } finally {
    await nginx.stop();
  }
});

test('a stripping sidecar drops them', async () => {
  const nginx = await startNginx({ upstreamPort: upstreamPort(), stripTraceContext: true });
  try {
    const headers = (await (await fetch(nginx.url, { headers: { traceparent: TP } })).json()) as Record<string, string>;
    expect(headers.traceparent).toBeUndefined();
  } finally {
    await nginx.stop();
  }
});

test('terminates TLS with a certificate made at test time', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cert-'));
  const nginx = await startNginx({ upstreamPort: upstreamPort(), tls: selfSignedCert(dir) });
  try {
    expect(nginx.url.startsWith('https://')).toBe(true);
    const body = await new Promise<string>((resolve, reject) => {
      get(nginx.url, { headers: { traceparent: TP }, rejectUnauthorized: false }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve(text));
      }).on('error', reject);
    });
    expect((JSON.parse(body) as Record<string, string>).traceparent).toBe(TP);
  } finally {
    await nginx.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
