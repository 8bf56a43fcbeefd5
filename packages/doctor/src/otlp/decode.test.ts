import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { OtlpDecodeError, decodeTraces, otlpEncoding, spansFromOtlpJson } from './decode';
import { decodeStatus, statusBody, successBody } from './response';

const PACKAGE = join(__dirname, '..', '..');

test('otlp.json is what scripts/otlp-descriptor.js makes of the official .proto files', () => {
  const run = spawnSync(process.execPath, [join(PACKAGE, 'scripts', 'otlp-descriptor.js'), '--stdout'], {
    encoding: 'utf8',
  });
  expect(run.stderr).toBe('');
  expect(run.stdout).toBe(readFileSync(join(__dirname, 'otlp.json'), 'utf8'));
});

/** Spans a real SDK made: a SERVER parent with every attribute type and an error status, a CLIENT child. */
function sdkSpans(): ReadableSpan[] {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'orders', 'k8s.pod.name': 'orders-1' }),
    spanProcessors: [new SimpleSpanProcessor({ exporter })],
  });
  const tracer = provider.getTracer('test');
  const parent = tracer.startSpan('GET /orders/:id', {
    kind: SpanKind.SERVER,
    attributes: {
      'url.path': '/orders/42',
      'server.port': 8080,
      ratio: 0.25,
      sampled: true,
      'http.request.header.x-request-id': ['abc-123'],
    },
  });
  const child = tracer.startSpan(
    'GET',
    { kind: SpanKind.CLIENT, attributes: { 'url.full': 'http://inventory:80/stock/sku-42' } },
    trace.setSpan(ROOT_CONTEXT, parent),
  );
  child.end();
  parent.setStatus({ code: SpanStatusCode.ERROR, message: 'boom' });
  parent.end();
  return exporter.getFinishedSpans();
}

const ms = (t: [number, number]): number => t[0] * 1e3 + t[1] / 1e6;

describe('decodeTraces on bodies made by @opentelemetry/otlp-transformer', () => {
  const made = sdkSpans();
  test.each([
    ['protobuf', 'application/x-protobuf', ProtobufTraceSerializer.serializeRequest(made)!],
    ['JSON', 'application/json; charset=utf-8', JsonTraceSerializer.serializeRequest(made)!],
  ])('%s: ids, parent, kind, attributes, service, status and times round-trip', (_name, type, body) => {
    const spans = decodeTraces(body, type);
    expect(spans).toHaveLength(2);
    for (const sdk of made) {
      const span = spans.find((s) => s.spanId === sdk.spanContext().spanId)!;
      expect(span).toMatchObject({
        traceId: sdk.spanContext().traceId,
        parentSpanId: sdk.parentSpanContext?.spanId,
        name: sdk.name,
        service: 'orders',
        resource: { 'service.name': 'orders', 'k8s.pod.name': 'orders-1' },
      });
      // Within a microsecond: epoch milliseconds as doubles cannot keep every nanosecond.
      expect(Math.abs(span.startMs - ms(sdk.startTime))).toBeLessThan(1e-3);
      expect(Math.abs(span.endMs - ms(sdk.endTime))).toBeLessThan(1e-3);
    }
    const server = spans.find((s) => s.kind === 'server')!;
    expect(server.parentSpanId).toBeUndefined();
    expect(server.attributes).toEqual({
      'url.path': '/orders/42',
      'server.port': 8080,
      ratio: 0.25,
      sampled: true,
      'http.request.header.x-request-id': ['abc-123'],
    });
    expect(server.status).toEqual({ code: 'error', message: 'boom' });
    const client = spans.find((s) => s.kind === 'client')!;
    expect(client.parentSpanId).toBe(server.spanId);
    expect(client.status).toEqual({ code: 'unset' });
  });
});

describe('spansFromOtlpJson', () => {
  const TRACE = '5b8efff798038103d269b633813fc60c';
  const SPAN = 'eee19b7ec3c1b174';
  const span = (extra: Record<string, unknown>): Record<string, unknown> => ({
    traceId: TRACE,
    spanId: SPAN,
    name: 'x',
    startTimeUnixNano: '1700000000123456789',
    endTimeUnixNano: '1700000000223456789',
    ...extra,
  });
  const doc = (spans: unknown[], key = 'resourceSpans', scopes = 'scopeSpans'): unknown => ({
    [key]: [
      { resource: { attributes: [{ key: 'service.name', value: { stringValue: 'gateway' } }] }, [scopes]: [{ spans }] },
    ],
  });

  test.each<[string, unknown]>([
    ['OTLP/JSON: hex ids, int64 as strings, enums as numbers', doc([span({ kind: 2, status: { code: 2 } })])],
    [
      'protojson: base64 ids, enum names',
      doc([
        span({
          traceId: Buffer.from(TRACE, 'hex').toString('base64'),
          spanId: Buffer.from(SPAN, 'hex').toString('base64'),
          kind: 'SPAN_KIND_SERVER',
          status: { code: 'STATUS_CODE_ERROR' },
        }),
      ]),
    ],
    ["Tempo's older batches", doc([span({ kind: 2, status: { code: 2 } })], 'batches')],
    [
      'OTLP before 0.15: instrumentationLibrarySpans',
      doc([span({ kind: 2, status: { code: 2 } })], 'resourceSpans', 'instrumentationLibrarySpans'),
    ],
  ])('%s', (_name, input) => {
    expect(spansFromOtlpJson(input)).toEqual([
      {
        traceId: TRACE,
        spanId: SPAN,
        parentSpanId: undefined,
        name: 'x',
        kind: 'server',
        service: 'gateway',
        startMs: 1700000000123.4568,
        endMs: 1700000000223.4568,
        attributes: {},
        resource: { 'service.name': 'gateway' },
        status: { code: 'error' },
      },
    ]);
  });

  test('int64 as a number, nested values flattened to JSON text, no service.name', () => {
    const [s] = spansFromOtlpJson({
      resourceSpans: [
        {
          scopeSpans: [
            {
              spans: [
                span({
                  startTimeUnixNano: 1700000000000000000,
                  parentSpanId: '',
                  attributes: [
                    { key: 'n', value: { intValue: '42' } },
                    { key: 'kv', value: { kvlistValue: { values: [{ key: 'a', value: { intValue: 1 } }] } } },
                    {
                      key: 'mixed',
                      value: { arrayValue: { values: [{ stringValue: 'a' }, { arrayValue: { values: [] } }] } },
                    },
                  ],
                }),
              ],
            },
          ],
        },
      ],
    });
    expect({ start: s.startMs, parent: s.parentSpanId, service: s.service, attributes: s.attributes }).toEqual({
      start: 1700000000000,
      parent: undefined,
      service: 'unknown',
      attributes: { n: 42, kv: '{"a":1}', mixed: '["a",[]]' },
    });
  });

  test.each<[string, unknown, RegExp]>([
    ['not an object', [1, 2], /not a JSON object/],
    ['resourceSpans not a list', { resourceSpans: 3 }, /resourceSpans is not a list/],
    ['a trace id of 8 bytes', doc([span({ traceId: SPAN })]), /traceId is not 16 bytes/],
    ['no span id', doc([span({ spanId: undefined })]), /spanId is not 8 bytes/],
    ['an unknown kind name', doc([span({ kind: 'SERVER' })]), /kind is not a known value/],
    ['a time that is not a number', doc([span({ endTimeUnixNano: 'soon' })]), /endTimeUnixNano is not a number/],
  ])('rejects %s with OtlpDecodeError', (_name, input, message) => {
    expect(() => spansFromOtlpJson(input)).toThrow(OtlpDecodeError);
    expect(() => spansFromOtlpJson(input)).toThrow(message);
  });
});

describe('decodeTraces on bad bodies', () => {
  const good = Buffer.from(ProtobufTraceSerializer.serializeRequest(sdkSpans())!);
  test.each<[string, Buffer, string, RegExp]>([
    [
      'garbage protobuf',
      Buffer.from('this is not protobuf at all, just text'),
      'application/x-protobuf',
      /invalid protobuf/,
    ],
    ['truncated protobuf', good.subarray(0, good.length - 7), 'application/x-protobuf', /invalid protobuf/],
    ['invalid JSON', Buffer.from('{"resourceSpans": ['), 'application/json', /invalid JSON/],
    ['an unknown content type', good, 'text/plain', /not an OTLP content type/],
  ])('%s: OtlpDecodeError', (_name, body, type, message) => {
    expect(() => decodeTraces(body, type)).toThrow(message);
  });

  test('an empty body is an empty export', () => {
    expect(decodeTraces(Buffer.alloc(0), 'application/x-protobuf')).toEqual([]);
  });
});

test('otlpEncoding reads the media type, ignoring parameters and case', () => {
  expect([
    otlpEncoding('Application/JSON; charset=utf-8'),
    otlpEncoding('application/x-protobuf'),
    otlpEncoding('application/protobuf'),
    otlpEncoding(undefined),
  ]).toEqual(['json', 'protobuf', undefined, undefined]);
});

test('answers: google.rpc.Status and an empty ExportTraceServiceResponse in either encoding', () => {
  for (const encoding of ['protobuf', 'json'] as const) {
    const status = statusBody(encoding, 3, 'bad body');
    expect(decodeStatus(encoding, status.body)).toEqual({ code: 3, message: 'bad body' });
  }
  // protoc encodes Status{code: 3, message: "bad body"} as these bytes: field 1 varint, field 2 length-delimited.
  expect(statusBody('protobuf', 3, 'bad body').body).toEqual(
    Buffer.from([0x08, 0x03, 0x12, 0x08, ...Buffer.from('bad body')]),
  );
  expect(JSON.parse(statusBody('json', 3, 'bad body').body.toString())).toEqual({ code: 3, message: 'bad body' });
  expect([successBody('protobuf'), successBody('json')].map((b) => [b.contentType, b.body.toString()])).toEqual([
    ['application/x-protobuf', ''],
    ['application/json', '{}'],
  ]);
});
