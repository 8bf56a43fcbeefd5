import type { Message } from 'protobufjs';
import type { AttributeValue, Attributes, Span, SpanKindName } from '../model';
import { ExportTraceServiceRequest } from './schema';

/** The two OTLP/HTTP body encodings. */
export type OtlpEncoding = 'protobuf' | 'json';

/** A body that is not an OTLP trace export request. */
export class OtlpDecodeError extends Error {
  override readonly name = 'OtlpDecodeError';
}

/**
 * The OTLP encoding a `Content-Type` names (parameters such as `charset` ignored), or `undefined` for any other type.
 */
export function otlpEncoding(contentType: string | undefined): OtlpEncoding | undefined {
  const media = contentType?.split(';')[0].trim().toLowerCase();
  if (media === 'application/x-protobuf') return 'protobuf';
  if (media === 'application/json') return 'json';
  return undefined;
}

/** The spans of an OTLP/HTTP trace export body; throws {@link OtlpDecodeError} when it is not one. */
export function decodeTraces(body: Uint8Array, contentType: string): Span[] {
  const encoding = otlpEncoding(contentType);
  if (encoding === undefined) throw new OtlpDecodeError(`not an OTLP content type: ${JSON.stringify(contentType)}`);
  if (encoding === 'json') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8'));
    } catch (err) {
      throw new OtlpDecodeError(`invalid JSON: ${(err as Error).message}`);
    }
    return spansFromOtlpJson(parsed);
  }
  let message: Message;
  try {
    message = ExportTraceServiceRequest.decode(body);
  } catch (err) {
    throw new OtlpDecodeError(`invalid protobuf: ${(err as Error).message}`);
  }
  // A decoded message has the shape of OTLP/JSON, with bytes for ids and Long for 64-bit integers.
  return spansOf(message as unknown as Loose, 'resourceSpans');
}

/**
 * The spans of a parsed OTLP/JSON trace document: an export request (`{resourceSpans: [...]}`) or
 * Tempo's older `{batches: [...]}`; ids in hex (OTLP/JSON) or base64 (protojson), 64-bit integers
 * as strings or numbers, enums as numbers or names. Throws {@link OtlpDecodeError} on anything else.
 */
export function spansFromOtlpJson(obj: unknown): Span[] {
  if (!isObject(obj)) throw new OtlpDecodeError('not a JSON object');
  return spansOf(obj, Array.isArray(obj.batches) && !Array.isArray(obj.resourceSpans) ? 'batches' : 'resourceSpans');
}

type Loose = Record<string, unknown>;

function isObject(value: unknown): value is Loose {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function list(value: unknown, what: string): Loose[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || !value.every(isObject)) throw new OtlpDecodeError(`${what} is not a list of objects`);
  return value;
}

// Own properties only: a decoded protobuf message keeps the defaults of unset fields on its prototype.
const has = (o: Loose, key: string): boolean => Object.hasOwn(o, key);

function spansOf(request: Loose, key: 'resourceSpans' | 'batches'): Span[] {
  const spans: Span[] = [];
  for (const rs of list(request[key], key)) {
    const resource = attributesOf(isObject(rs.resource) ? rs.resource.attributes : undefined);
    const name = resource['service.name'];
    const service = typeof name === 'string' && name !== '' ? name : 'unknown';
    // `instrumentationLibrarySpans` is what OTLP before 0.15 sent; some agents still do.
    const scopes = [
      ...list(rs.scopeSpans, 'scopeSpans'),
      ...list(rs.instrumentationLibrarySpans, 'instrumentationLibrarySpans'),
    ];
    for (const scope of scopes)
      for (const span of list(scope.spans, 'spans')) spans.push(spanOf(span, service, resource));
  }
  return spans;
}

const KINDS: readonly SpanKindName[] = ['unspecified', 'internal', 'server', 'client', 'producer', 'consumer'];
const STATUS = ['unset', 'ok', 'error'] as const;

function spanOf(span: Loose, service: string, resource: Attributes): Span {
  const traceId = id(span.traceId, 16, 'traceId');
  const spanId = id(span.spanId, 8, 'spanId');
  // A root has no parent id, or an empty one; a decoded message's unset field is only on its prototype.
  const parent =
    !has(span, 'parentSpanId') ||
    span.parentSpanId === undefined ||
    span.parentSpanId === null ||
    isEmpty(span.parentSpanId)
      ? undefined
      : id(span.parentSpanId, 8, 'parentSpanId');
  const status = isObject(span.status) ? span.status : {};
  const message = typeof status.message === 'string' && status.message !== '' ? status.message : undefined;
  return {
    traceId,
    spanId,
    parentSpanId: parent,
    name: typeof span.name === 'string' ? span.name : '',
    kind: enumName(span.kind, KINDS, 'SPAN_KIND_', 'kind'),
    service,
    startMs: nanosToMs(span.startTimeUnixNano, 'startTimeUnixNano'),
    endMs: nanosToMs(span.endTimeUnixNano, 'endTimeUnixNano'),
    attributes: attributesOf(span.attributes),
    resource,
    status:
      message === undefined
        ? { code: enumName(status.code, STATUS, 'STATUS_CODE_', 'status.code') }
        : { code: enumName(status.code, STATUS, 'STATUS_CODE_', 'status.code'), message },
  };
}

// ArrayBuffer.isView, not instanceof: a Buffer made in another realm (a vm context, a test runner) is bytes too.
function isBytes(value: unknown): value is Uint8Array {
  return ArrayBuffer.isView(value) && !(value instanceof DataView);
}

const hexOf = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');

function isEmpty(value: unknown): boolean {
  return (typeof value === 'string' || isBytes(value)) && value.length === 0;
}

const HEX = /^[0-9a-fA-F]*$/;

/** Lower-case hex of an id: bytes (protobuf), hex (OTLP/JSON) or base64 (protojson), `bytes` long. */
function id(value: unknown, bytes: number, field: string): string {
  let hex: string | undefined;
  if (isBytes(value)) hex = hexOf(value);
  else if (typeof value === 'string')
    hex =
      value.length === 2 * bytes && HEX.test(value)
        ? value.toLowerCase()
        : Buffer.from(value, 'base64').toString('hex');
  if (hex === undefined || hex.length !== 2 * bytes)
    throw new OtlpDecodeError(`${field} is not ${bytes} bytes: ${JSON.stringify(String(value))}`);
  return hex;
}

function enumName<T extends string>(value: unknown, names: readonly T[], prefix: string, field: string): T {
  if (value === undefined || value === null) return names[0];
  if (typeof value === 'number' && names[value] !== undefined) return names[value];
  if (typeof value === 'string') {
    const name = value.startsWith(prefix) ? value.slice(prefix.length).toLowerCase() : undefined;
    if (name !== undefined && (names as readonly string[]).includes(name)) return name as T;
  }
  throw new OtlpDecodeError(`${field} is not a known value: ${JSON.stringify(value)}`);
}

interface LongLike {
  readonly low: number;
  readonly high: number;
}

/** Milliseconds from a uint64 of nanoseconds: a Long (protobuf), a decimal string or a number (OTLP/JSON). */
function nanosToMs(value: unknown, field: string): number {
  // A double holds epoch nanoseconds to within 256 ns, well under what a waterfall shows.
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value / 1e6;
  if (typeof value === 'string' && /^\d{1,20}$/.test(value)) return Number(value) / 1e6;
  if (isObject(value) && typeof value.low === 'number' && typeof value.high === 'number') {
    const long = value as unknown as LongLike;
    return ((long.high >>> 0) * 4294967296 + (long.low >>> 0)) / 1e6;
  }
  if (value === undefined || value === null) return 0;
  throw new OtlpDecodeError(`${field} is not a number of nanoseconds: ${JSON.stringify(value)}`);
}

function attributesOf(value: unknown): Attributes {
  const out: Record<string, AttributeValue> = {};
  for (const kv of list(value, 'attributes')) {
    if (typeof kv.key !== 'string' || !isObject(kv.value)) continue;
    const plain = plainValue(kv.value);
    if (plain === undefined) continue;
    out[kv.key] = isAttributeValue(plain) ? plain : JSON.stringify(plain);
  }
  return out;
}

type Plain = string | number | boolean | null | readonly Plain[] | { readonly [key: string]: Plain };

function isScalar(value: unknown): value is string | number | boolean {
  return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean';
}

function isAttributeValue(value: Plain): value is AttributeValue {
  return isScalar(value) || (Array.isArray(value) && value.every(isScalar));
}

/** An OTLP AnyValue as plain JSON data; `undefined` for an empty one. */
function plainValue(any: Loose): Plain | undefined {
  if (has(any, 'stringValue')) return String(any.stringValue);
  if (has(any, 'boolValue')) return any.boolValue === true || any.boolValue === 'true';
  if (has(any, 'intValue')) return Number(String(any.intValue));
  if (has(any, 'doubleValue')) return Number(any.doubleValue);
  if (has(any, 'bytesValue')) {
    const bytes = any.bytesValue;
    return isBytes(bytes)
      ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64')
      : String(bytes);
  }
  if (has(any, 'arrayValue') && isObject(any.arrayValue)) {
    return list(any.arrayValue.values, 'arrayValue.values').map((v) => plainValue(v) ?? null);
  }
  if (has(any, 'kvlistValue') && isObject(any.kvlistValue)) {
    const entries: Record<string, Plain> = {};
    for (const kv of list(any.kvlistValue.values, 'kvlistValue.values'))
      if (typeof kv.key === 'string' && isObject(kv.value)) entries[kv.key] = plainValue(kv.value) ?? null;
    return entries;
  }
  return undefined;
}
