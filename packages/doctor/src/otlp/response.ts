import * as protobuf from 'protobufjs';
import type { OtlpEncoding } from './decode';
import { ExportTraceServiceResponse } from './schema';

// google.rpc.Status (googleapis google/rpc/status.proto) without `details`, which the receiver never
// sends: the message OTLP/HTTP puts in the body of a 4xx answer (OTLP spec, "Failures").
const Status = new protobuf.Type('Status')
  .add(new protobuf.Field('code', 1, 'int32'))
  .add(new protobuf.Field('message', 2, 'string'));
new protobuf.Root().define('google.rpc').add(Status);

/** google.rpc.Code values the receiver answers with (googleapis google/rpc/code.proto). */
export const RPC_CODE = { invalidArgument: 3, notFound: 5, resourceExhausted: 8, unimplemented: 12 } as const;

/** An encoded answer: the body and its content type. */
export interface OtlpBody {
  readonly contentType: string;
  readonly body: Buffer;
}

const CONTENT_TYPE: Record<OtlpEncoding, string> = { protobuf: 'application/x-protobuf', json: 'application/json' };

/** A google.rpc.Status body in `encoding`. */
export function statusBody(encoding: OtlpEncoding, code: number, message: string): OtlpBody {
  const status = Status.fromObject({ code, message });
  const body =
    encoding === 'json'
      ? Buffer.from(JSON.stringify(Status.toObject(status)))
      : Buffer.from(Status.encode(status).finish());
  return { contentType: CONTENT_TYPE[encoding], body };
}

/** Decodes a google.rpc.Status body (for clients and tests of the receiver). */
export function decodeStatus(encoding: OtlpEncoding, body: Uint8Array): { code: number; message: string } {
  const status =
    encoding === 'json'
      ? Status.fromObject(JSON.parse(Buffer.from(body).toString('utf8')) as Record<string, unknown>)
      : Status.decode(body);
  return Status.toObject(status, { defaults: true }) as { code: number; message: string };
}

/**
 * The answer to an accepted export: an empty ExportTraceServiceResponse (the vendored OTLP definitions predate
 * `partial_success`).
 */
export function successBody(encoding: OtlpEncoding): OtlpBody {
  const response = ExportTraceServiceResponse.create();
  const body =
    encoding === 'json'
      ? Buffer.from(JSON.stringify(ExportTraceServiceResponse.toObject(response)))
      : Buffer.from(ExportTraceServiceResponse.encode(response).finish());
  return { contentType: CONTENT_TYPE[encoding], body };
}
