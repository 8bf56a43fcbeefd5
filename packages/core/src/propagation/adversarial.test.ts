import { createServer, request } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ROOT_CONTEXT, context, defaultTextMapGetter, defaultTextMapSetter } from '@opentelemetry/api';
import { MeshPropagator, extractRequestContext } from '@meshtrace/core';
import { createServerTracing } from '@meshtrace/core/adapter';
import { observe, setupTestTracing } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';

const tracing = setupTestTracing();
const T = '0af7651916cd43dd8448eb211c80319c';
const P = 'b7ad6b7169203331';
const VALID = `00-${T}-${P}-01`;
const members = (n: number, sep = ',') => Array.from({ length: n }, (_, i) => `k${i}=v${i}`).join(sep);

const cases: Array<
  [string, Record<string, string | string[]>, string, Partial<Record<'tracestate' | 'baggage', string | undefined>>]
> = [
  ['64 KiB traceparent', { traceparent: VALID + 'x'.repeat(65536) }, 'malformed', {}],
  [
    '64 KiB tracestate',
    { traceparent: VALID, tracestate: `a=${'x'.repeat(65536)}` },
    'continued',
    { tracestate: undefined },
  ],
  ['64 KiB baggage', { traceparent: VALID, baggage: `a=${'x'.repeat(65536)}` }, 'continued', { baggage: undefined }],
  [
    '10,000 tracestate members',
    { traceparent: VALID, tracestate: members(10000) },
    'continued',
    { tracestate: undefined },
  ],
  [
    '10,000 empty tracestate members',
    { traceparent: VALID, tracestate: `${','.repeat(10000)}a=1` },
    'continued',
    { tracestate: 'a=1' },
  ],
  ['10,000 baggage members', { traceparent: VALID, baggage: members(10000) }, 'continued', { baggage: undefined }],
  ['CR LF in traceparent', { traceparent: `${VALID}\r\nx-evil: 1` }, 'malformed', {}],
  ['NUL in traceparent', { traceparent: `00-${T}-${P}-0\u0000` }, 'malformed', {}],
  [
    'CR LF in tracestate',
    { traceparent: VALID, tracestate: 'a=1\r\nx-evil: 1' },
    'continued',
    { tracestate: undefined },
  ],
  ['CR LF in baggage', { traceparent: VALID, baggage: 'a=1\r\nx-evil: 1,b=2' }, 'continued', { baggage: 'b=2' }],
  ['multibyte UTF-8 in traceparent', { traceparent: `00-${T.slice(0, 31)}é-${P}-01` }, 'malformed', {}],
  ['multibyte UTF-8 in tracestate', { traceparent: VALID, tracestate: 'a=ü' }, 'continued', { tracestate: undefined }],
  ['multibyte UTF-8 in baggage value', { traceparent: VALID, baggage: 'a=ü,b=2' }, 'continued', { baggage: 'b=2' }],
  [
    'broken percent-encoding',
    { traceparent: VALID, baggage: 'a=%,b=%zz,c=%E2%82,d=ok' },
    'continued',
    { baggage: 'd=ok' },
  ],
  ['duplicated traceparent', { traceparent: [VALID, VALID] }, 'malformed', {}],
  [
    'duplicated tracestate is combined',
    { traceparent: VALID, tracestate: ['a=1', 'b=2'] },
    'continued',
    { tracestate: 'a=1,b=2' },
  ],
];

describe('adversarial headers, extracted directly', () => {
  const mesh = new MeshPropagator();
  test.each(cases)('%s', (_name, headers, outcome, expected) => {
    const result = extractRequestContext(headers);
    expect(result.outcome.outcome).toBe(outcome);
    const out: Record<string, string> = {};
    const ctx = mesh.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
    mesh.inject(ctx, out, defaultTextMapSetter);
    // biome-ignore lint/suspicious/noControlCharactersInRegex: a NUL smuggled into a header is what this looks for.
    for (const v of Object.values(out)) expect(v).not.toMatch(/[\r\n\u0000]|x-evil|xxxxxxxx/);
    if (outcome !== 'continued') expect(out.traceparent).toBeUndefined();
    else expect(out.traceparent).toBe(VALID);
    for (const [h, want] of Object.entries(expected)) expect(out[h]).toBe(want);
  });
});

describe('adversarial headers over a real socket', () => {
  let server: Server;
  let port: number;
  beforeAll(async () => {
    const t = createServerTracing<IncomingMessage, ServerResponse>({}, { name: '@meshtrace/core-test' });
    // Node's own limit is 16 KiB; a proxy in front may allow more, so test past it.
    server = createServer({ maxHeaderSize: 256 * 1024 }, (req, res) => {
      const rt = t.start(req, res);
      context.with(rt.context, () => res.end(JSON.stringify(observe())));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
    await tracing.shutdown();
  });

  const overHttp = cases.filter(([name]) => !/CR LF|NUL|UTF-8/.test(name));
  test.each(overHttp)('%s', async (_name, headers, outcome, expected) => {
    const seen = await new Promise<Observed>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: '/', headers, maxHeaderSize: 256 * 1024 }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () =>
          res.statusCode === 200
            ? resolve(JSON.parse(body) as Observed)
            : reject(new Error(`status ${res.statusCode}`)),
        );
      });
      req.on('error', reject);
      req.end();
    });
    expect(seen.traceId === T).toBe(outcome === 'continued');
    expect(seen.outbound.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]$/);
    for (const [h, want] of Object.entries(expected)) expect(seen.outbound[h]).toBe(want);
  });
});
