import { SpanKind, SpanStatusCode, context, diag, DiagLogLevel, trace } from '@opentelemetry/api';
import type { Span, TracerProvider } from '@opentelemetry/api';
import { suppressTracing } from '@opentelemetry/core';
import { extractRequestContext } from '@meshtrace/core';
import { HEADER_CASES, PARENT_ID, TRACE_ID, checkCase, delta, observe, setupTestTracing } from '@meshtrace/testkit';
import type { Observed } from '@meshtrace/testkit';
import { injectHeaders, meshClient, meshFetch, meshHttp, meshRequest } from '@meshtrace/http';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage, RequestListener, Server } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const tracing = setupTestTracing();
type FinishedSpan = ReturnType<typeof tracing.spans>[number];

// The SDK reports a second end() or a write to an ended span through diag: any such line is a bug here.
const spanMisuse: string[] = [];
const onDiag = (message: string) => {
  if (/only call end\(\)|ended Span/.test(message)) spanMisuse.push(message);
};
diag.setLogger(
  { error: onDiag, warn: onDiag, info: () => undefined, debug: () => undefined, verbose: () => undefined },
  DiagLogLevel.WARN,
);

const INBOUND = {
  traceparent: `00-${TRACE_ID}-${PARENT_ID}-01`,
  tracestate: 'congo=t61rcWkgMzE',
  baggage: 'tenant=acme',
};

/** Downstream: answers with the headers it received; `/status/NNN`, `/slow`, `/big` and `/cut` on purpose. */
const downstream: RequestListener = (req, res) => {
  const url = req.url ?? '/';
  if (url === '/slow') {
    setTimeout(() => res.end('late'), 2000).unref();
    return;
  }
  if (url === '/big') {
    res.end(Buffer.alloc(4 << 20));
    return;
  }
  if (url === '/cut') {
    res.writeHead(200, { 'content-length': '1000' });
    res.write('partial');
    setTimeout(() => req.socket.destroy(), 20);
    return;
  }
  const status = url.startsWith('/status/') ? Number(url.slice(8, 11)) : 200;
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(req.headers));
};

const servers: Server[] = [];
let down: string;
let downPort: number;
let tlsPort: number;
let closedPort: number;
let front: string;
let certDir: string;
let cert: Buffer;

async function listen(server: Server): Promise<number> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

beforeAll(async () => {
  downPort = await listen(createServer(downstream));
  down = `http://127.0.0.1:${downPort}`;

  certDir = mkdtempSync(join(tmpdir(), 'meshtrace-tls-'));
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-keyout',
      join(certDir, 'key.pem'),
      '-out',
      join(certDir, 'cert.pem'),
    ],
    { stdio: 'ignore' },
  );
  cert = readFileSync(join(certDir, 'cert.pem'));
  tlsPort = await listen(createTlsServer({ key: readFileSync(join(certDir, 'key.pem')), cert }, downstream));

  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  closedPort = (closed.address() as AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));

  // The service under test: continues the caller's trace and calls downstream with meshFetch.
  const frontPort = await listen(
    createServer(
      meshHttp(async (req, res) => {
        const seen = observe();
        const calls = req.url === '/fan-out' ? 10 : 1;
        const received = await Promise.all(
          Array.from({ length: calls }, async () => (await meshFetch(`${down}/echo`)).json()),
        );
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ seen, received }));
      }),
    ),
  );
  front = `http://127.0.0.1:${frontPort}`;
});

afterAll(async () => {
  for (const server of servers) server.closeAllConnections();
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  rmSync(certDir, { recursive: true, force: true });
  await tracing.shutdown();
});

beforeEach(() => tracing.reset());
afterEach(() => {
  expect(spanMisuse).toEqual([]);
  spanMisuse.length = 0;
});

/** Runs `fn` as a request handler would: inside a SERVER span continuing {@link INBOUND}. */
async function inServerSpan<T>(fn: () => Promise<T>): Promise<{ value: T; server: Span }> {
  const { context: ctx } = extractRequestContext(INBOUND);
  const server = trace.getTracer('test').startSpan('GET /front', { kind: SpanKind.SERVER }, ctx);
  try {
    return { value: await context.with(trace.setSpan(ctx, server), fn), server };
  } finally {
    server.end();
  }
}

/** The finished CLIENT spans under `server`. */
function clientSpans(server: Span): FinishedSpan[] {
  const id = server.spanContext().spanId;
  return tracing.spans().filter((s) => s.kind === SpanKind.CLIENT && s.parentSpanContext?.spanId === id);
}

function onlyClientSpan(name: string, server: Span): FinishedSpan {
  const spans = clientSpans(server);
  expect({ name, clientSpans: spans.length }).toEqual({ name, clientSpans: 1 });
  return spans[0];
}

/** What a caller's headers look like, to prove they were not changed. */
function snapshot(value: unknown): unknown {
  if (value instanceof Request) return [value.method, value.url, [...value.headers]];
  if (value instanceof Headers) return [...value];
  return JSON.parse(JSON.stringify(value ?? null));
}

function formOf(value: unknown): string {
  return value instanceof Headers ? 'Headers' : Array.isArray(value) ? 'array' : typeof value;
}

/** Waits until Node has run the events queued behind a response (span ends, 'close'). */
const settle = () => new Promise((resolve) => setImmediate(resolve));

function readBody(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => (body += chunk));
    res.on('end', () => resolve(body));
    res.on('error', reject);
  });
}

/** Sends one meshRequest and resolves with the response and its body, or rejects with the request's error. */
function request(
  send: (callback: (res: IncomingMessage) => void) => ReturnType<typeof meshRequest>,
): Promise<{ status: number; headers: IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = send((res) => {
      readBody(res).then(
        (body) => resolve({ status: res.statusCode ?? 0, headers: JSON.parse(body) as IncomingHttpHeaders }),
        reject,
      );
    });
    req.on('error', reject);
    req.end();
  });
}

function expectPropagated(
  name: string,
  received: Record<string, unknown>,
  client: FinishedSpan,
  baggage = INBOUND.baggage,
): void {
  expect({
    name,
    traceparent: received.traceparent,
    tracestate: received.tracestate,
    baggage: received.baggage,
  }).toEqual({
    name,
    traceparent: `00-${TRACE_ID}-${client.spanContext().spanId}-01`,
    tracestate: INBOUND.tracestate,
    baggage,
  });
}

describe('meshFetch injects into every header form without touching the caller', () => {
  const STALE = `00-${'1'.repeat(32)}-${'2'.repeat(16)}-01`;
  const forms: ReadonlyArray<readonly [string, () => [string | URL | Request, RequestInit?]]> = [
    ['no init', () => [`${down}/echo`]],
    ['URL input', () => [new URL(`${down}/echo`), { headers: { 'x-custom': 'kept' } }]],
    ['plain object', () => [`${down}/echo`, { headers: { 'x-custom': 'kept', accept: 'application/json' } }]],
    [
      'plain object with a stale Traceparent and a BAGGAGE of its own',
      () => [`${down}/echo`, { headers: { 'x-custom': 'kept', Traceparent: STALE, BAGGAGE: 'stale=1' } }],
    ],
    [
      'array of tuples',
      () => [
        `${down}/echo`,
        {
          headers: [
            ['x-custom', 'kept'],
            ['traceparent', STALE],
          ],
        },
      ],
    ],
    ['Headers', () => [`${down}/echo`, { headers: new Headers({ 'x-custom': 'kept', traceparent: STALE }) }]],
    ['Request', () => [new Request(`${down}/echo`, { headers: { 'x-custom': 'kept', traceparent: STALE } })]],
    [
      'Request with init headers',
      () => [new Request(`${down}/echo`, { headers: { 'x-replaced': 'yes' } }), { headers: { 'x-custom': 'kept' } }],
    ],
  ];

  test.each(forms)('%s', async (name, make) => {
    const [input, init] = make();
    const callerHeaders = input instanceof Request ? input : init?.headers;
    const before = snapshot(callerHeaders);
    const { value: received, server } = await inServerSpan(
      async () => (await meshFetch(input, init)).json() as Promise<Record<string, string>>,
    );
    const client = onlyClientSpan(name, server);
    // The caller's own baggage entries join the context's (see outbound.test.ts for the rule).
    expectPropagated(name, received, client, name.includes('BAGGAGE') ? `${INBOUND.baggage},stale=1` : INBOUND.baggage);
    const custom = name === 'no init' ? undefined : 'kept';
    expect({
      name,
      custom: received['x-custom'],
      replaced: received['x-replaced'],
      headers: snapshot(callerHeaders),
    }).toEqual({ name, custom, replaced: undefined, headers: before });
  });
});

describe('injectHeaders', () => {
  const cases: ReadonlyArray<readonly [string, () => unknown]> = [
    ['nothing', () => undefined],
    ['plain object', () => ({ accept: 'text/plain', TraceParent: 'stale' })],
    ['Headers', () => new Headers({ accept: 'text/plain', traceparent: 'stale' })],
    [
      'array of tuples',
      () =>
        [
          ['accept', 'text/plain'],
          ['traceparent', 'stale'],
        ] as Array<[string, string]>,
    ],
  ];

  test.each(cases)('%s: active context merged into a copy of the same form', async (name, make) => {
    const input = make();
    const before = snapshot(input);
    const { value: out, server } = await inServerSpan(
      async () => injectHeaders(input as Record<string, string>) as unknown,
    );
    const entries =
      out instanceof Headers
        ? [...out]
        : Array.isArray(out)
          ? (out as Array<[string, string]>)
          : Object.entries(out as Record<string, string>);
    const got = Object.fromEntries(entries.map(([k, v]) => [k.toLowerCase(), v]));
    expect({ name, form: formOf(out), copied: out !== input, input: snapshot(input) }).toEqual({
      name,
      form: input === undefined ? 'object' : formOf(input),
      copied: true,
      input: before,
    });
    expect({ name, count: entries.length, ...got }).toEqual({
      name,
      count: input === undefined ? 3 : 4,
      ...(input === undefined ? {} : { accept: 'text/plain' }),
      // No CLIENT span here: the parent downstream is the active (server) span.
      traceparent: `00-${TRACE_ID}-${server.spanContext().spanId}-01`,
      tracestate: INBOUND.tracestate,
      baggage: INBOUND.baggage,
    });
  });
});

describe('meshFetch CLIENT span', () => {
  test.each([
    ['GET 200', '/echo?x=1', undefined, 200, SpanStatusCode.UNSET, undefined],
    ['lower-case post', '/echo', { method: 'post', body: 'hi' }, 200, SpanStatusCode.UNSET, undefined],
    ['404 (an error for a client, HTTP semconv)', '/status/404', undefined, 404, SpanStatusCode.ERROR, '404'],
    ['503', '/status/503', undefined, 503, SpanStatusCode.ERROR, '503'],
  ] as const)('%s', async (name, path, init, status, code, errorType) => {
    const { value: res, server } = await inServerSpan(() => meshFetch(`${down}${path}`, init));
    await res.arrayBuffer();
    const span = onlyClientSpan(name, server);
    const method = init?.method.toUpperCase() ?? 'GET';
    const attributes: Record<string, unknown> = {
      'http.request.method': method,
      'url.full': `${down}${path}`,
      'server.address': '127.0.0.1',
      'server.port': downPort,
      'http.response.status_code': status,
    };
    if (errorType !== undefined) attributes['error.type'] = errorType;
    expect({
      name,
      kind: span.kind,
      spanName: span.name,
      trace: span.spanContext().traceId,
      status: span.status.code,
      attributes: span.attributes,
    }).toEqual({
      name,
      kind: SpanKind.CLIENT,
      spanName: method,
      trace: TRACE_ID,
      status: code,
      attributes,
    });
  });

  test('an unknown method is _OTHER, named HTTP, with the original kept', async () => {
    const { server } = await inServerSpan(async () =>
      (await meshFetch(`${down}/echo`, { method: 'PURGE' })).arrayBuffer(),
    );
    const span = onlyClientSpan('PURGE', server);
    expect([
      span.name,
      span.attributes['http.request.method'],
      span.attributes['http.request.method_original'],
    ]).toEqual(['HTTP', '_OTHER', 'PURGE']);
  });

  test('connection refused: ERROR, ECONNREFUSED, fetch’s own error re-thrown', async () => {
    let caught: unknown;
    const { server } = await inServerSpan(() =>
      meshFetch(`http://127.0.0.1:${closedPort}/x`).catch((err: unknown) => (caught = err)),
    );
    // fetch's errors come from Node's realm, not the test's: compare by name.
    expect([(caught as Error).name, (caught as { cause?: { code?: string } }).cause?.code]).toEqual([
      'TypeError',
      'ECONNREFUSED',
    ]);
    const span = onlyClientSpan('refused', server);
    expect({
      status: span.status.code,
      type: span.attributes['error.type'],
      exception: span.events.map((e) => e.name),
    }).toEqual({
      status: SpanStatusCode.ERROR,
      type: 'ECONNREFUSED',
      exception: ['exception'],
    });
  });

  test.each([
    ['an Error', new Error('stop')],
    ['a string', 'stop'],
    ['a plain object', { why: 'stop' }],
    ['an object that cannot be printed', Object.create(null) as object],
  ])('abort reason %s: the very same value is re-thrown, the span ends in ERROR', async (name, reason) => {
    let caught: unknown = 'nothing';
    const { server } = await inServerSpan(() =>
      meshFetch(`${down}/echo`, { signal: AbortSignal.abort(reason) }).catch((err: unknown) => (caught = err)),
    );
    expect({ name, same: caught === reason }).toEqual({ name, same: true });
    expect({ name, status: onlyClientSpan(name, server).status.code }).toEqual({ name, status: SpanStatusCode.ERROR });
  });

  test('url.full never carries credentials or signatures', async () => {
    // fetch itself refuses URLs with credentials; the span must still not leak them.
    const url = `http://user:secret@127.0.0.1:${downPort}/echo?sig=abc&x=1&X-Goog-Signature=def#frag`;
    const { server } = await inServerSpan(() => meshFetch(url).catch(() => undefined));
    const span = onlyClientSpan('credentials', server);
    expect(span.attributes['url.full']).toBe(
      `http://REDACTED:REDACTED@127.0.0.1:${downPort}/echo?sig=REDACTED&x=1&X-Goog-Signature=REDACTED#frag`,
    );
    expect(span.status.code).toBe(SpanStatusCode.ERROR);
  });

  test('outside any trace: a root CLIENT span, its ids sent', async () => {
    const received = (await (await meshFetch(`${down}/echo`)).json()) as Record<string, string>;
    const spans = tracing.spans().filter((s) => s.kind === SpanKind.CLIENT);
    expect(spans.length).toBe(1);
    expect(spans[0].parentSpanContext).toBeUndefined();
    expect(received.traceparent).toBe(`00-${spans[0].spanContext().traceId}-${spans[0].spanContext().spanId}-01`);
  });

  test('suppressed tracing: no span, nothing injected, the call still made', async () => {
    const { value: received, server } = await inServerSpan(() =>
      context.with(
        suppressTracing(context.active()),
        async () =>
          (await meshFetch(`${down}/echo`, { headers: { 'x-custom': 'kept' } })).json() as Promise<
            Record<string, string>
          >,
      ),
    );
    expect(clientSpans(server)).toEqual([]);
    expect([received.traceparent, received.baggage, received['x-custom']]).toEqual([undefined, undefined, 'kept']);
  });

  test('a drop-in for the global fetch: installing it there does not recurse', async () => {
    const original = globalThis.fetch;
    globalThis.fetch = meshFetch;
    try {
      const { value: received, server } = await inServerSpan(
        async () => (await fetch(`${down}/echo`)).json() as Promise<Record<string, string>>,
      );
      expectPropagated('global', received, onlyClientSpan('global', server));
    } finally {
      globalThis.fetch = original;
    }
  });
});

describe('meshRequest', () => {
  const forms: ReadonlyArray<
    readonly [string, (cb: (res: IncomingMessage) => void) => ReturnType<typeof meshRequest>]
  > = [
    ['url string', (cb) => meshRequest(`${down}/echo`, cb)],
    [
      'URL and options with headers',
      (cb) => meshRequest(new URL(`${down}/echo`), { headers: { 'x-custom': 'kept', Traceparent: 'stale' } }, cb),
    ],
    [
      'options only',
      (cb) =>
        meshRequest({ hostname: '127.0.0.1', port: downPort, path: '/echo', headers: { 'x-custom': 'kept' } }, cb),
    ],
    [
      'flat header array',
      (cb) =>
        meshRequest(
          {
            host: '127.0.0.1',
            port: downPort,
            path: '/echo',
            headers: ['host', `127.0.0.1:${downPort}`, 'x-custom', 'kept', 'traceparent', 'stale'],
          },
          cb,
        ),
    ],
  ];

  test.each(forms)('%s: propagates, leaves the caller’s options alone, CLIENT span ended once', async (name, send) => {
    const { value: res, server } = await inServerSpan(() => request(send));
    await settle();
    const span = onlyClientSpan(name, server);
    expectPropagated(name, res.headers, span);
    expect({ name, custom: res.headers['x-custom'] }).toEqual({
      name,
      custom: name === 'url string' ? undefined : 'kept',
    });
    expect({ name, spanName: span.name, attributes: span.attributes }).toEqual({
      name,
      spanName: 'GET',
      attributes: {
        'http.request.method': 'GET',
        'url.full': `${down}/echo`,
        'server.address': '127.0.0.1',
        'server.port': downPort,
        'http.response.status_code': 200,
      },
    });
  });

  test('options objects and their headers are not mutated', async () => {
    const headers = { 'x-custom': 'kept' };
    const options = { hostname: '127.0.0.1', port: downPort, path: '/echo', headers };
    const flat = ['host', `127.0.0.1:${downPort}`];
    const flatOptions = { hostname: '127.0.0.1', port: downPort, path: '/echo', headers: flat };
    const before = snapshot([options, flatOptions]);
    await inServerSpan(async () => {
      await request((cb) => meshRequest(options, cb));
      await request((cb) => meshRequest(`${down}/echo`, flatOptions, cb));
    });
    expect(snapshot([options, flatOptions])).toEqual(before);
    expect(options.headers).toBe(headers);
  });

  test('https with a self-signed certificate, by URL (CA) and by options (rejectUnauthorized: false)', async () => {
    const { value, server } = await inServerSpan(async () => [
      await request((cb) => meshRequest(`https://127.0.0.1:${tlsPort}/echo`, { ca: cert }, cb)),
      await request((cb) =>
        meshRequest(
          { protocol: 'https:', hostname: '127.0.0.1', port: tlsPort, path: '/echo', rejectUnauthorized: false },
          cb,
        ),
      ),
    ]);
    await settle();
    const spans = clientSpans(server);
    expect(spans.map((s) => s.attributes['url.full'])).toEqual([
      `https://127.0.0.1:${tlsPort}/echo`,
      `https://127.0.0.1:${tlsPort}/echo`,
    ]);
    for (const [i, res] of value.entries()) expectPropagated(`https ${i}`, res.headers, spans[i]);
  });

  test('5xx ends the span in ERROR with the status code', async () => {
    const { value, server } = await inServerSpan(() => request((cb) => meshRequest(`${down}/status/502`, cb)));
    await settle();
    const span = onlyClientSpan('502', server);
    expect([
      value.status,
      span.status.code,
      span.attributes['http.response.status_code'],
      span.attributes['error.type'],
    ]).toEqual([502, SpanStatusCode.ERROR, 502, '502']);
  });

  test('connection refused: the caller gets Node’s error, the span ends in ERROR', async () => {
    let caught: unknown;
    const { server } = await inServerSpan(() =>
      request((cb) => meshRequest(`http://127.0.0.1:${closedPort}/x`, cb)).catch((err: unknown) => (caught = err)),
    );
    await settle();
    expect((caught as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
    const span = onlyClientSpan('refused', server);
    expect([span.status.code, span.attributes['error.type']]).toEqual([SpanStatusCode.ERROR, 'ECONNREFUSED']);
  });

  test('aborted by the caller before any response: span ended in ERROR', async () => {
    const { server } = await inServerSpan(
      () =>
        new Promise<void>((resolve) => {
          const req = meshRequest(`${down}/slow`);
          req.on('error', () => undefined);
          req.on('close', () => resolve());
          req.end();
          setTimeout(() => req.destroy(), 50);
        }),
    );
    await settle();
    const span = onlyClientSpan('aborted', server);
    expect([span.status.code, span.attributes['error.type']]).toEqual([SpanStatusCode.ERROR, 'ECONNRESET']);
  });

  test('a body cut off by the server: span ended in ERROR, with or without an error listener', async () => {
    for (const listening of [false, true]) {
      const { server } = await inServerSpan(
        () =>
          new Promise<void>((resolve) => {
            meshRequest(`${down}/cut`, (res) => {
              if (listening) res.on('error', () => undefined);
              res.on('close', () => resolve());
              res.resume();
            }).end();
          }),
      );
      await settle();
      const span = onlyClientSpan(`cut, listening: ${listening}`, server);
      expect({ listening, status: span.status.code, type: span.attributes['error.type'] }).toEqual({
        listening,
        status: SpanStatusCode.ERROR,
        type: listening ? 'ECONNRESET' : 'aborted',
      });
    }
  });

  test('no response listener: a large body is drained as Node would, and the span ends', async () => {
    const { server } = await inServerSpan(
      () =>
        new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('the response was never drained')), 3000);
          meshRequest(`${down}/big`)
            .on('close', () => resolve(clearTimeout(timer)))
            .end();
        }),
    );
    await settle();
    expect(onlyClientSpan('no listener', server).attributes['http.response.status_code']).toBe(200);
  });

  test('the callback runs in the caller’s context, not inside the CLIENT span', async () => {
    const { value: active, server } = await inServerSpan(
      () =>
        new Promise<string | undefined>((resolve) => {
          meshRequest(`${down}/echo`, (res) => {
            res.resume();
            resolve(trace.getActiveSpan()?.spanContext().spanId);
          }).end();
        }),
    );
    expect(active).toBe(server.spanContext().spanId);
  });

  test.each([
    ['a bad method', { method: 'BAD METHOD' }, 'ERR_INVALID_HTTP_TOKEN'],
    ['a hostname that is not a string', { hostname: 42 as unknown as string }, 'ERR_INVALID_ARG_TYPE'],
  ])('%s: Node’s synchronous throw ends the span and reaches the caller', async (name, options, code) => {
    let caught: unknown;
    const { server } = await inServerSpan(async () => {
      try {
        meshRequest(`${down}/echo`, options);
      } catch (err) {
        caught = err;
      }
    });
    const span = onlyClientSpan(name, server);
    expect({
      name,
      thrown: (caught as NodeJS.ErrnoException | undefined)?.code,
      status: span.status.code,
      type: span.attributes['error.type'],
    }).toEqual({ name, thrown: code, status: SpanStatusCode.ERROR, type: code });
  });

  test('suppressed tracing: no span, nothing injected', async () => {
    const { value, server } = await inServerSpan(() =>
      context.with(suppressTracing(context.active()), () => request((cb) => meshRequest(`${down}/echo`, cb))),
    );
    expect(clientSpans(server)).toEqual([]);
    expect(value.headers.traceparent).toBeUndefined();
  });

  test('url.full redacts credentials and signatures', async () => {
    const { server } = await inServerSpan(() =>
      request((cb) =>
        meshRequest(`http://user:secret@127.0.0.1:${downPort}/echo?AWSAccessKeyId=k&Signature=s&x=1`, cb),
      ),
    );
    await settle();
    expect(onlyClientSpan('credentials', server).attributes['url.full']).toBe(
      `http://REDACTED:REDACTED@127.0.0.1:${downPort}/echo?AWSAccessKeyId=REDACTED&Signature=REDACTED&x=1`,
    );
  });
});

describe('meshClient options', () => {
  test.each([
    ['options', 'not an object'],
    ['options', null],
    ['tracerProvider', {}],
    ['tracerProvider', 'global'],
  ])('bad %s (%p) is a TypeError naming the package and the option', (option, value) => {
    const options = option === 'options' ? value : { tracerProvider: value };
    expect(() => meshClient(options as never)).toThrow(TypeError);
    expect(() => meshClient(options as never)).toThrow(new RegExp(`^@meshtrace/http: option "${option}"`));
  });

  test('tracerProvider: asked once for a tracer, at setup, then used for every call', async () => {
    const asked: string[] = [];
    const provider: TracerProvider = {
      getTracer: (name, version, options) => (asked.push(name), tracing.provider.getTracer(name, version, options)),
    };
    const client = meshClient({ tracerProvider: provider });
    const { server } = await inServerSpan(async () => {
      await (await client.fetch(`${down}/echo`)).arrayBuffer();
      await request((cb) => client.request(`${down}/echo`, cb));
    });
    await settle();
    expect(asked).toEqual(['@meshtrace/http']);
    expect(clientSpans(server).map((s) => s.instrumentationScope.name)).toEqual(['@meshtrace/http', '@meshtrace/http']);
  });
});

describe('through a meshHttp service', () => {
  test('ten concurrent outbound calls from one request: ten CLIENT spans, ten span ids, one parent', async () => {
    const { seen, received } = (await (await fetch(`${front}/fan-out`, { headers: INBOUND })).json()) as {
      seen: Observed;
      received: Array<Record<string, string>>;
    };
    await settle();
    const parents = received.map((h) => h.traceparent.split('-')[2]);
    const clients = tracing.spans().filter((s) => s.kind === SpanKind.CLIENT);
    expect(new Set(parents).size).toBe(10);
    expect(clients.map((s) => s.spanContext().spanId).sort()).toEqual([...parents].sort());
    for (const s of clients)
      expect([s.spanContext().traceId, s.parentSpanContext?.spanId]).toEqual([TRACE_ID, seen.spanId]);
  });

  // Every inbound case of the shared table: what goes downstream is what the propagator would send
  // for the request, with the CLIENT span as parent, so a malformed inbound header never goes out.
  test.each(HEADER_CASES.map((c) => [c.name, c] as const))('inbound %s, then meshFetch downstream', async (name, c) => {
    const before = await tracing.outcomeCounts();
    const droppedBefore = await tracing.droppedCounts();
    const headers = new Headers();
    for (const [k, v] of Object.entries(c.headers))
      for (const one of Array.isArray(v) ? v : [v]) headers.append(k, one);
    const { seen, received } = (await (await fetch(`${front}/one`, { headers })).json()) as {
      seen: Observed;
      received: Array<Record<string, string>>;
    };
    await settle();
    const spans = tracing.spans();
    expect(
      checkCase(
        c,
        seen,
        spans,
        delta(before, await tracing.outcomeCounts()),
        delta(droppedBefore, await tracing.droppedCounts()),
      ),
    ).toEqual([]);

    const sent = received[0];
    const [version, traceId, parentId, flags] = (sent.traceparent ?? '').split('-');
    const client = spans.find((s) => s.kind === SpanKind.CLIENT && s.spanContext().traceId === seen.traceId);
    const sampled = (parseInt(flags, 16) & 1) === 1;
    expect({
      name,
      version,
      traceId,
      flags,
      parentIsClient: sampled
        ? parentId === client?.spanContext().spanId
        : /^[0-9a-f]{16}$/.test(parentId) && parentId !== seen.spanId,
    }).toEqual({
      name,
      version: '00',
      traceId: seen.traceId,
      flags: seen.outbound.traceparent.slice(-2),
      parentIsClient: true,
    });
    expect({ name, clientParent: client?.parentSpanContext?.spanId ?? (sampled ? 'missing' : seen.spanId) }).toEqual({
      name,
      clientParent: seen.spanId,
    });
    expect({ name, tracestate: sent.tracestate, baggage: sent.baggage }).toEqual({
      name,
      tracestate: seen.outbound.tracestate,
      baggage: seen.outbound.baggage,
    });
    if (c.outcome !== 'continued') {
      const inbound = ([] as string[]).concat(c.headers.traceparent ?? []);
      expect({ name, forwardedInbound: inbound.includes(sent.traceparent), sameTrace: traceId === TRACE_ID }).toEqual({
        name,
        forwardedInbound: false,
        sameTrace: false,
      });
    }
  });
});
