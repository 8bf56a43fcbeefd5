import { ROOT_CONTEXT, context, trace } from '@opentelemetry/api';
import { setupTestTracing } from '@meshtrace/testkit';
import { MAX_FRAME_HEADER_BYTES, decodeFrame, encodeFrame } from '@meshtrace/frames';
import type { Frame, FrameData, FrameError, FrameHeaderInput } from '@meshtrace/frames';

const tracing = setupTestTracing();
afterAll(() => tracing.shutdown());

/** One header entry as the format lays it out. */
function entry(key: Buffer | string, value: Buffer | string): Buffer {
  const k = Buffer.from(key);
  const v = Buffer.from(value);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(v.length);
  return Buffer.concat([Buffer.from([k.length]), k, len, v]);
}

/** A frame built by hand, with lengths that can lie. */
function raw(
  block: Buffer,
  payload: Buffer,
  o: { version?: number; headerBytes?: number; payloadBytes?: number } = {},
): Buffer {
  const prefix = Buffer.from([0x4d, 0x54, o.version ?? 1, 0, 0, 0, 0, 0, 0]);
  prefix.writeUInt16BE(o.headerBytes ?? block.length, 3);
  prefix.writeUInt32BE(o.payloadBytes ?? payload.length, 5);
  return Buffer.concat([prefix, block, payload]);
}

/** Decoded headers as `[key, values]` pairs in wire order (pairs, so "__proto__" compares as a key). */
function text(frame: Frame | FrameError): Array<[string, string[]]> | FrameError {
  if (typeof frame === 'string') return frame;
  return Object.entries(frame.headers).map(([k, v]) => [
    k,
    (Array.isArray(v) ? v : [v]).map((b) => b.toString('latin1')),
  ]);
}

describe('round trip', () => {
  const cases: ReadonlyArray<{
    name: string;
    payload: string | Uint8Array;
    headers?: FrameHeaderInput;
    want: Array<[string, string[]]>;
  }> = [
    { name: 'empty payload, no headers', payload: '', want: [] },
    {
      name: 'text payload and one header',
      payload: 'héllo',
      headers: { 'content-type': 'text/plain' },
      want: [['content-type', ['text/plain']]],
    },
    {
      name: 'repeated key keeps order',
      payload: 'x',
      headers: { via: ['a', 'b', 'c'] },
      want: [['via', ['a', 'b', 'c']]],
    },
    {
      name: 'binary and empty values',
      payload: new Uint8Array([0, 255, 1]),
      headers: { bin: new Uint8Array([0, 0xff, 0x80]), empty: '' },
      want: [
        ['bin', ['\x00\xff\x80']],
        ['empty', ['']],
      ],
    },
    { name: 'undefined values are left out', payload: 'x', headers: { a: undefined, b: '1' }, want: [['b', ['1']]] },
    {
      name: 'prototype-looking keys are plain keys',
      payload: 'x',
      headers: JSON.parse('{"__proto__":"p","constructor":"c"}'),
      want: [
        ['__proto__', ['p']],
        ['constructor', ['c']],
      ],
    },
    {
      name: 'header block at the limit',
      payload: 'x',
      headers: { big: 'y'.repeat(MAX_FRAME_HEADER_BYTES - 6) },
      want: [['big', ['y'.repeat(MAX_FRAME_HEADER_BYTES - 6)]]],
    },
  ];
  test.each(cases.map((c) => [c.name, c] as const))('%s', (name, c) => {
    const encoded = encodeFrame(c.payload, c.headers, ROOT_CONTEXT);
    const frame = decodeFrame(encoded);
    expect({ name, headers: text(frame) }).toEqual({ name, headers: c.want });
    expect({ name, payload: (frame as Frame).payload }).toEqual({ name, payload: Buffer.from(c.payload) });
  });

  test('every way a transport hands the bytes over decodes the same', () => {
    const encoded = encodeFrame('payload', { k: 'v' }, ROOT_CONTEXT);
    const offset = new Uint8Array(encoded.length + 7);
    offset.set(encoded, 7);
    const inputs: Array<[string, FrameData]> = [
      ['Buffer', encoded],
      ['Uint8Array view at an offset', offset.subarray(7)],
      ['ArrayBuffer', Uint8Array.from(encoded).buffer],
    ];
    for (let cut = 0; cut <= encoded.length; cut++)
      inputs.push([`fragments cut at ${cut}`, [encoded.subarray(0, cut), encoded.subarray(cut)]]);
    for (const [name, data] of inputs) {
      const frame = decodeFrame(data);
      expect({ name, headers: text(frame), payload: (frame as Frame).payload?.toString() }).toEqual({
        name,
        headers: [['k', ['v']]],
        payload: 'payload',
      });
    }
  });

  test('the context goes into the header block and replaces same-named headers', () => {
    const span = trace.getTracer('test').startSpan('send');
    const ctx = trace.setSpan(context.active(), span);
    const sc = span.spanContext();
    const frame = decodeFrame(encodeFrame('x', { traceparent: 'stale', other: '1' }, ctx)) as Frame;
    span.end();
    expect(text(frame)).toEqual([
      ['traceparent', [`00-${sc.traceId}-${sc.spanId}-01`]],
      ['other', ['1']],
    ]);
    expect(context.with(ctx, () => text(decodeFrame(encodeFrame('x'))))).toEqual([
      ['traceparent', [`00-${sc.traceId}-${sc.spanId}-01`]],
    ]);
  });
});

describe('bytes that are not a frame', () => {
  const good = encodeFrame(
    'payload',
    { traceparent: `00-${'a'.repeat(32)}-${'b'.repeat(16)}-01`, k: 'v' },
    ROOT_CONTEXT,
  );
  const cases: ReadonlyArray<[string, unknown, FrameError]> = [
    ['trailing bytes', Buffer.concat([good, Buffer.from([0])]), 'trailing-bytes'],
    ['an HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), 'not-a-frame'],
    ['JSON text', Buffer.from('{"traceparent":"00-…"}'), 'not-a-frame'],
    ['right first byte, wrong second', Buffer.from('MX'), 'not-a-frame'],
    ['a number array', [1, 2, 3], 'not-a-frame'],
    ['a string', 'MT\u0001', 'not-a-frame'],
    ['undefined', undefined, 'not-a-frame'],
    ['version 0', raw(Buffer.alloc(0), Buffer.alloc(0), { version: 0 }), 'unsupported-version'],
    ['version 2', raw(Buffer.alloc(0), Buffer.alloc(0), { version: 2 }), 'unsupported-version'],
    [
      'header block one byte over the limit',
      raw(entry('big', 'y'.repeat(MAX_FRAME_HEADER_BYTES - 5)), Buffer.alloc(0)),
      'header-too-large',
    ],
    [
      'declared 64 KiB header block in a 9-byte frame',
      raw(Buffer.alloc(0), Buffer.alloc(0), { headerBytes: 0xffff }),
      'header-too-large',
    ],
    ['declared 4 GiB payload', raw(Buffer.alloc(0), Buffer.alloc(0), { payloadBytes: 0xffffffff }), 'truncated'],
    ['empty key', raw(entry('', 'v'), Buffer.alloc(0)), 'bad-header'],
    ['key with a space', raw(entry('a b', 'v'), Buffer.alloc(0)), 'bad-header'],
    ['non-ASCII key', raw(entry(Buffer.from('clé'), 'v'), Buffer.alloc(0)), 'bad-header'],
    ['key with a control byte', raw(entry(Buffer.from([0x61, 0x00]), 'v'), Buffer.alloc(0)), 'bad-header'],
    ['value running past the block', raw(entry('k', 'value').subarray(0, 6), Buffer.from('payload')), 'bad-header'],
    ['key running past the block', raw(Buffer.from([9, 0x61]), Buffer.alloc(0)), 'bad-header'],
  ];
  test.each(cases)('%s', (name, data, reason) => {
    expect({ name, got: decodeFrame(data as FrameData) }).toEqual({ name, got: reason });
  });

  test('every truncation of a valid frame is reported as truncated', () => {
    for (let n = 0; n < good.length; n++)
      expect({ n, got: decodeFrame(good.subarray(0, n)) }).toEqual({ n, got: 'truncated' });
  });

  test('random and mutated bytes never throw', () => {
    // A fixed seed keeps a failure reproducible.
    let seed = 0x2545f491;
    const rand = (n: number) => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const reasons = new Set([
      'not-a-frame',
      'unsupported-version',
      'truncated',
      'trailing-bytes',
      'header-too-large',
      'bad-header',
    ]);
    for (let i = 0; i < 5000; i++) {
      let data: Buffer;
      if (i % 2 === 0) {
        data = Buffer.from(good);
        for (let m = rand(4) + 1; m > 0; m--) data[rand(data.length)] = rand(256);
        data = data.subarray(0, data.length - rand(3));
      } else {
        data = Buffer.concat([
          Buffer.from([0x4d, 0x54, 1]),
          Buffer.from(Array.from({ length: rand(64) }, () => rand(256))),
        ]);
      }
      const got = decodeFrame(data);
      if (typeof got === 'string') expect({ i, known: reasons.has(got) }).toEqual({ i, known: true });
      else {
        // A decoded frame accounts for every byte it was given.
        let size = 9 + got.payload.length;
        for (const [k, v] of Object.entries(got.headers))
          for (const one of Array.isArray(v) ? v : [v]) size += 3 + k.length + one.length;
        expect({ i, size }).toEqual({ i, size: data.length });
      }
    }
  });
});

describe('encodeFrame refuses what the format cannot carry', () => {
  const cases: ReadonlyArray<[string, () => unknown, RegExp]> = [
    [
      'empty key',
      () => encodeFrame('x', { '': 'v' }, ROOT_CONTEXT),
      /^TypeError: @meshtrace\/frames: frame header key must be 1 to 255/,
    ],
    [
      'key of 256 characters',
      () => encodeFrame('x', { ['k'.repeat(256)]: 'v' }, ROOT_CONTEXT),
      /^TypeError: @meshtrace\/frames: frame header key must be 1 to 255/,
    ],
    [
      'key with a space',
      () => encodeFrame('x', { 'a b': 'v' }, ROOT_CONTEXT),
      /^TypeError: @meshtrace\/frames: frame header key must be visible ASCII/,
    ],
    [
      'non-ASCII key',
      () => encodeFrame('x', { clé: 'v' }, ROOT_CONTEXT),
      /^TypeError: @meshtrace\/frames: frame header key must be visible ASCII/,
    ],
    [
      'number value',
      () => encodeFrame('x', { n: 1 } as unknown as FrameHeaderInput, ROOT_CONTEXT),
      /^TypeError: @meshtrace\/frames: frame header "n" must be a string/,
    ],
    [
      'value over 65535 bytes',
      () => encodeFrame('x', { v: 'x'.repeat(65536) }, ROOT_CONTEXT),
      /^RangeError: @meshtrace\/frames: frame header "v" is 65536 bytes/,
    ],
    [
      'header block over the limit',
      () => encodeFrame('x', { a: 'x'.repeat(9000), b: 'y'.repeat(9000) }, ROOT_CONTEXT),
      /^RangeError: @meshtrace\/frames: frame header block is 18008 bytes, more than 16384/,
    ],
    [
      'object payload',
      () => encodeFrame({} as unknown as string),
      /^TypeError: @meshtrace\/frames: frame payload must be a string or a Uint8Array/,
    ],
  ];
  test.each(cases)('%s', (name, encode, message) => {
    let error: unknown;
    try {
      encode();
    } catch (err) {
      error = err;
    }
    expect({ name, error: String(error) }).toEqual({ name, error: expect.stringMatching(message) });
  });
});
