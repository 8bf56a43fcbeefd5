import { ROOT_CONTEXT, defaultTextMapGetter, defaultTextMapSetter, trace } from '@opentelemetry/api';
import type { TextMapGetter } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { MeshPropagator } from '@meshtrace/core';
import { createServer } from 'node:http';
import type { IncomingHttpHeaders } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';

// What the README says of the SDK's own W3C propagator beside meshtrace's: which `traceparent` values
// each continues. `@opentelemetry/core` 2.x and 3.x read the header with the same expression,
// `^\s?((?!ff)[\da-f]{2})-((?![0]{32})[\da-f]{32})-((?![0]{16})[\da-f]{16})-([\da-f]{2})(-.*)?\s?$`
// (version 00 with extra fields refused), and take the first of a list of values.

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const P = '00f067aa0ba902b7';
const VALID = `00-${T}-${P}-01`;
const otel = new W3CTraceContextPropagator();
const mesh = new MeshPropagator({ extract: ['w3c'], baggage: false });

/** The trace id each propagator continues from `traceparent` (undefined: a fresh root). */
function continuedBy(traceparent: string | string[]): { otel: string | undefined; meshtrace: string | undefined } {
  // A getter that hands the value as the carrier holds it, a list included (as Kafka, AMQP or gRPC carriers can).
  const getter: TextMapGetter<Record<string, string | string[]>> = {
    get: (carrier, key) => carrier[key],
    keys: (carrier) => Object.keys(carrier),
  };
  const of = (p: typeof otel | typeof mesh) =>
    trace.getSpanContext(p.extract(ROOT_CONTEXT, { traceparent }, getter))?.traceId;
  return { otel: of(otel), meshtrace: of(mesh) };
}

/** Both refuse these: the SDK's propagator is as strict as meshtrace's parser here. */
const BOTH_REFUSE: ReadonlyArray<readonly [string, string]> = [
  ['upper-case hex in the trace id', `00-${T.toUpperCase()}-${P}-01`],
  ['upper-case hex in the parent id', `00-${T}-${P.toUpperCase()}-01`],
  ['upper-case hex in the flags', `00-${T}-${P}-0A`],
  ['upper-case version', `0A-${T}-${P}-01`],
  ['version ff', `ff-${T}-${P}-01`],
  ['an all-zero trace id', `00-${'0'.repeat(32)}-${P}-01`],
  ['an all-zero parent id', `00-${T}-${'0'.repeat(16)}-01`],
  ['a trace id one digit short', `00-${T.slice(1)}-${P}-01`],
  ['a parent id one digit long', `00-${T}-${P}0-01`],
  ['one flags digit', `00-${T}-${P}-1`],
  ['version 00 with an extra field', `${VALID}-what`],
  ['version 00 with a character after the flags', `${VALID}x`],
  ['a higher version with a character after the flags that is not -', `01-${T}-${P}-01x`],
  ['two values folded into one header line', `${VALID}, 00-${'a'.repeat(32)}-${P}-01`],
  ['a non-hex digit in the trace id', `00-${T.slice(0, 31)}g-${P}-01`],
  ['a missing separator', `00${T}-${P}-01`],
];

/** Both continue these (W3C trace-context §4.3: a higher version is read by version 00's rules). */
const BOTH_CONTINUE: ReadonlyArray<readonly [string, string]> = [
  ['version 00', VALID],
  ['a higher version', `01-${T}-${P}-01`],
  ['a higher version with extra fields', `cc-${T}-${P}-01-extra-fields`],
  ['unknown flag bits', `00-${T}-${P}-ff`],
];

/** Only the SDK's propagator continues these; meshtrace starts a fresh root (and counts why). */
const ONLY_OTEL: ReadonlyArray<readonly [string, string | string[]]> = [
  ['a space before the value', ` ${VALID}`],
  ['a tab after the value', `${VALID}\t`],
  ['a list of two values (the SDK takes the first)', [VALID, `00-${'a'.repeat(32)}-${P}-01`]],
];

describe("traceparent values: meshtrace's parser against @opentelemetry/core's W3CTraceContextPropagator", () => {
  test.each(BOTH_REFUSE)('both start a fresh root on %s', (_name, value) => {
    expect(continuedBy(value)).toEqual({ otel: undefined, meshtrace: undefined });
  });

  test.each(BOTH_CONTINUE)('both continue %s', (_name, value) => {
    expect(continuedBy(value)).toEqual({ otel: T, meshtrace: T });
  });

  test.each(ONLY_OTEL)('only the SDK propagator continues %s', (_name, value) => {
    expect(continuedBy(value)).toEqual({ otel: T, meshtrace: undefined });
  });

  test('re-injecting a continued context with unknown flag bits: the SDK propagator writes a three-digit flags field, meshtrace only the defined flags', () => {
    const out = (p: typeof otel | typeof mesh) => {
      const headers: Record<string, string> = {};
      const ctx = p.extract(ROOT_CONTEXT, { traceparent: `00-${T}-${P}-81` }, defaultTextMapGetter);
      p.inject(ctx, headers, defaultTextMapSetter);
      return headers.traceparent;
    };
    expect({ otel: out(otel), meshtrace: out(mesh) }).toEqual({
      otel: `00-${T}-${P}-081`,
      meshtrace: `00-${T}-${P}-01`,
    });
  });

  test("over HTTP the whitespace case cannot arise: Node's parser strips the spaces and tabs around a header value", async () => {
    let seen: IncomingHttpHeaders | undefined;
    const server = createServer((req, res) => {
      seen = req.headers;
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      await new Promise<void>((resolve, reject) => {
        const socket = connect(port, '127.0.0.1');
        socket.once('error', reject);
        socket.once('close', () => resolve());
        socket.on('data', () => undefined);
        socket.write(`GET / HTTP/1.1\r\nhost: x\r\ntraceparent: \t ${VALID} \t\r\nconnection: close\r\n\r\n`);
      });
    } finally {
      server.close();
    }
    expect(seen?.traceparent).toBe(VALID);
    expect(continuedBy(seen?.traceparent as string)).toEqual({ otel: T, meshtrace: T });
  });
});
