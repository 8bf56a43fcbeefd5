import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { get } from 'node:https';
import { selfSignedCert, startNginx } from '@meshtrace/testkit';

// Echoes the header lines as received: a header sent twice appears twice.
const server = createServer((req, res) => res.end(JSON.stringify(req.rawHeaders)));
beforeAll(() => new Promise<void>((r) => server.listen(0, '127.0.0.1', r)));
afterAll(() => new Promise((r) => server.close(r)));
const upstreamPort = () => (server.address() as AddressInfo).port;
const TP = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

/** The header lines the upstream received, by lower-case name. */
async function forwarded(url: string, headers: Record<string, string>): Promise<Record<string, string[]>> {
  const raw = (await (await fetch(url, { headers })).json()) as string[];
  const lines: Record<string, string[]> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    lines[name] = [...(lines[name] ?? []), raw[i + 1]];
  }
  return lines;
}

test('forwards trace headers and adds x-request-id', async () => {
  const nginx = await startNginx({ upstreamPort: upstreamPort() });
  try {
    const headers = await forwarded(nginx.url, { traceparent: TP, baggage: 'a=1' });
    expect(headers).toMatchObject({ traceparent: [TP], baggage: ['a=1'] });
    expect(headers['x-request-id']).toEqual([expect.stringMatching(/^[0-9a-f]{32}$/)]);
    // The client's authority, port included, as Envoy keeps :authority.
    expect(headers.host).toEqual([new URL(nginx.url).host]);
    expect(nginx.accessLog()).toContain(`traceparent="${TP}"`);
  } finally {
    await nginx.stop();
  }
});

test('a stripping sidecar drops them', async () => {
  const nginx = await startNginx({ upstreamPort: upstreamPort(), stripTraceContext: true });
  try {
    const headers = await forwarded(nginx.url, { traceparent: TP });
    expect(headers.traceparent).toBeUndefined();
  } finally {
    await nginx.stop();
  }
});

test.each([
  ['strip', undefined],
  ['uppercase', [TP.toUpperCase()]],
  ['duplicate', [TP, TP]],
  ['pass', [TP]],
] as const)('traceparent mode %s forwards %j', async (mode, expected) => {
  const nginx = await startNginx({ upstreamPort: upstreamPort(), traceparent: mode });
  try {
    const headers = await forwarded(nginx.url, { traceparent: TP, tracestate: 'a=1', baggage: 'b=2' });
    expect(headers.traceparent).toEqual(expected);
    expect(headers).toMatchObject({ tracestate: ['a=1'], baggage: ['b=2'] });
  } finally {
    await nginx.stop();
  }
});

test('an unknown traceparent mode is a TypeError', async () => {
  await expect(startNginx({ upstreamPort: upstreamPort(), traceparent: 'lower' as 'pass' })).rejects.toThrow(
    '@meshtrace/testkit: traceparent must be pass, strip, uppercase or duplicate, not "lower"',
  );
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
    const raw = JSON.parse(body) as string[];
    expect(raw[raw.indexOf('traceparent') + 1]).toBe(TP);
  } finally {
    await nginx.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
