import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import type { OutgoingHttpHeaders, Server } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, selfSignedCert } from '@meshtrace/testkit';
import { startSidecar } from './sidecar';
import type { Sidecar, SidecarKind, SidecarOptions } from './sidecar';

interface Echo {
  readonly method: string;
  readonly url: string;
  /** Header pairs as the upstream received them, names lower-cased. */
  readonly headers: Array<[string, string]>;
  readonly body: string;
}

// The service behind the sidecar: answers with what reached it.
const upstream: Server = createServer((req, res) => {
  let body = '';
  req.setEncoding('utf8').on('data', (c: string) => (body += c));
  req.on('end', () => {
    const headers: Array<[string, string]> = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      headers.push([req.rawHeaders[i].toLowerCase(), req.rawHeaders[i + 1]]);
    res.setHeader('x-upstream', 'yes');
    res.end(JSON.stringify({ method: req.method ?? '', url: req.url ?? '', headers, body } satisfies Echo));
  });
});
let certDir: string;
let cert: { cert: string; key: string };
beforeAll(async () => {
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  certDir = mkdtempSync(join(tmpdir(), 'meshtrace-sidecar-cert-'));
  cert = selfSignedCert(certDir);
});
afterAll(async () => {
  await new Promise((resolve) => upstream.close(resolve));
  rmSync(certDir, { recursive: true, force: true });
});
const upstreamPort = (): number => (upstream.address() as AddressInfo).port;

async function withSidecar(
  kind: SidecarKind,
  options: Partial<SidecarOptions>,
  body: (sidecar: Sidecar) => Promise<void>,
): Promise<void> {
  const sidecar = await startSidecar(kind, { upstreamPort: upstreamPort(), ...options });
  try {
    await body(sidecar);
  } finally {
    await sidecar.stop();
  }
}

/** Sends a request (raw header pairs keep duplicates) and returns status, response headers and the upstream's echo. */
function send(
  url: string,
  init: { method?: string; headers?: string[]; body?: string; ca?: string } = {},
): Promise<{ status: number; headers: Record<string, unknown>; echo: Echo | undefined }> {
  const go = url.startsWith('https:') ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    // Node adds no Host header to a raw header list.
    const headers = ['host', new URL(url).host, ...(init.headers ?? [])];
    const req = go(
      url,
      { method: init.method ?? 'GET', headers: headers as unknown as OutgoingHttpHeaders, ca: init.ca },
      (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (c: string) => (text += c));
        res.on('end', () => {
          let echo: Echo | undefined;
          try {
            echo = JSON.parse(text) as Echo;
          } catch {
            echo = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, echo });
        });
      },
    );
    req.once('error', reject);
    req.end(init.body);
  });
}

const values = (echo: Echo | undefined, name: string): string[] =>
  (echo?.headers ?? []).filter(([n]) => n === name).map(([, v]) => v);

const TRACE = [
  'traceparent',
  '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  'TraceState',
  'congo=t61rcWkgMzE',
  'baggage',
  'tenant=acme',
];

describe.each(['nginx', 'node'] as const)('%s sidecar', (kind) => {
  test('forwards every end-to-end header untouched, duplicates included, and adds x-request-id and x-forwarded-for', async () => {
    await withSidecar(kind, {}, async (sidecar) => {
      const { status, headers, echo } = await send(`${sidecar.url}/a/b?c=d`, {
        headers: [...TRACE, 'X-Custom', 'One', 'x-dup', '1', 'x-dup', '2'],
      });
      expect({ status, upstream: headers['x-upstream'], url: echo?.url }).toEqual({
        status: 200,
        upstream: 'yes',
        url: '/a/b?c=d',
      });
      expect({
        traceparent: values(echo, 'traceparent'),
        tracestate: values(echo, 'tracestate'),
        baggage: values(echo, 'baggage'),
        custom: values(echo, 'x-custom'),
        dup: values(echo, 'x-dup'),
        forwardedFor: values(echo, 'x-forwarded-for'),
      }).toEqual({
        traceparent: [TRACE[1]],
        tracestate: [TRACE[3]],
        baggage: [TRACE[5]],
        custom: ['One'],
        dup: ['1', '2'],
        forwardedFor: ['127.0.0.1'],
      });
      expect(values(echo, 'x-request-id')).toEqual([expect.stringMatching(/^[0-9a-f-]{32,36}$/)]);
    });
  });

  test('with stripTraceContext drops traceparent, tracestate and baggage, and nothing else', async () => {
    await withSidecar(kind, { stripTraceContext: true }, async (sidecar) => {
      const { echo } = await send(sidecar.url, { headers: [...TRACE, 'x-custom', 'kept'] });
      expect({
        traceparent: values(echo, 'traceparent'),
        tracestate: values(echo, 'tracestate'),
        baggage: values(echo, 'baggage'),
        custom: values(echo, 'x-custom'),
      }).toEqual({
        traceparent: [],
        tracestate: [],
        baggage: [],
        custom: ['kept'],
      });
    });
  });

  test('streams a request body through', async () => {
    await withSidecar(kind, {}, async (sidecar) => {
      const body = 'x'.repeat(100_000);
      const { echo } = await send(sidecar.url, { method: 'POST', headers: ['content-type', 'text/plain'], body });
      expect({ method: echo?.method, length: echo?.body.length }).toEqual({ method: 'POST', length: body.length });
    });
  });

  test('terminates TLS when given a certificate', async () => {
    await withSidecar(kind, { tls: cert }, async (sidecar) => {
      expect(sidecar.url).toMatch(/^https:/);
      const { status, echo } = await send(sidecar.url, { headers: TRACE, ca: readFileSync(cert.cert, 'utf8') });
      expect({ status, traceparent: values(echo, 'traceparent') }).toEqual({ status: 200, traceparent: [TRACE[1]] });
    });
  });

  test('answers 502 when the service is down', async () => {
    const sidecar = await startSidecar(kind, { upstreamPort: await freePort() });
    try {
      expect((await send(sidecar.url)).status).toBe(502);
    } finally {
      await sidecar.stop();
    }
  });
});

describe('node sidecar', () => {
  test('drops hop-by-hop headers and those the Connection header names (RFC 9110 §7.6.1), keeps an inbound x-request-id', async () => {
    await withSidecar('node', {}, async (sidecar) => {
      const { echo } = await send(sidecar.url, {
        headers: [
          'Connection',
          'keep-alive, x-hop',
          'Keep-Alive',
          'timeout=5',
          'x-hop',
          'secret',
          'TE',
          'trailers',
          'x-request-id',
          'abc',
          'x-forwarded-for',
          '10.0.0.1',
        ],
      });
      expect({
        hop: values(echo, 'x-hop'),
        keepAlive: values(echo, 'keep-alive'),
        te: values(echo, 'te'),
        requestId: values(echo, 'x-request-id'),
        forwardedFor: values(echo, 'x-forwarded-for'),
      }).toEqual({
        hop: [],
        keepAlive: [],
        te: [],
        requestId: ['abc'],
        forwardedFor: ['10.0.0.1, 127.0.0.1'],
      });
      expect(sidecar.accessLog()).toMatch(/^abc "GET \/ HTTP\/1\.1" 200 traceparent=""\n$/);
    });
  });
});
