import { context, propagation } from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import { headerSetter } from '@meshtrace/core';
import type { HeaderCarrier } from '@meshtrace/core';

/*
 * Frame format, version 1. Integers are unsigned big-endian.
 *
 *   offset  size  field
 *   0       2     magic "MT" (0x4d 0x54)
 *   2       1     version: 1
 *   3       2     header block length H, at most MAX_FRAME_HEADER_BYTES
 *   5       4     payload length P
 *   9       H     header block: entries of
 *                   key length (1 byte, 1-255) | key (visible ASCII, 0x21-0x7e) |
 *                   value length (2 bytes) | value (any bytes; UTF-8 text by convention)
 *   9+H     P     payload
 *
 * A key may repeat; its values keep their order. Lengths let a stream transport cut frames
 * apart, and let a message transport (WebSocket) tell a truncated frame from a complete one.
 * A version-1 reader rejects any other version, so receivers must be upgraded before senders.
 */

/** The format version {@link encodeFrame} writes and {@link decodeFrame} reads. */
export const FRAME_VERSION = 1;
/**
 * The largest header block a frame may carry (16 KiB): W3C baggage (8192) and tracestate (512) fit with room to spare.
 */
export const MAX_FRAME_HEADER_BYTES = 16384;

const PKG = '@meshtrace/frames';
const MAGIC_0 = 0x4d;
const MAGIC_1 = 0x54;
const PREFIX = 9;
const MAX_KEY = 255;
const MAX_VALUE = 0xffff;
const MAX_PAYLOAD = 0xffffffff;

/** Bytes as transports deliver them: one buffer, an `ArrayBuffer`, or fragments (`ws` gives all three). */
export type FrameData = Uint8Array | ArrayBuffer | readonly Uint8Array[];

/** Headers to write: text is written as UTF-8, bytes as they are, a list as one entry per value. */
export type FrameHeaderInput = Readonly<
  Record<string, string | Uint8Array | ReadonlyArray<string | Uint8Array> | undefined>
>;

/** Decoded headers, keys as sent: a key sent once maps to its bytes, a repeated key to all of them. */
export type FrameHeaders = Readonly<Record<string, Buffer | Buffer[]>>;

/** A decoded frame; `headers` reads with core's `headerGetter` (case-insensitive, UTF-8). */
export interface Frame {
  readonly headers: FrameHeaders;
  readonly payload: Buffer;
}

/** Why bytes are not a frame. */
export type FrameError =
  | 'not-a-frame'
  | 'unsupported-version'
  | 'truncated'
  | 'trailing-bytes'
  | 'header-too-large'
  | 'bad-header';

function isKeyByte(c: number): boolean {
  return c >= 0x21 && c <= 0x7e;
}

function asBuffer(data: FrameData): Buffer | undefined {
  if (data instanceof Uint8Array)
    return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return Buffer.from(data);
  if (Array.isArray(data)) {
    for (const part of data) if (!(part instanceof Uint8Array)) return undefined;
    return Buffer.concat(data);
  }
  return undefined;
}

/**
 * Decodes one complete frame. Never throws: bytes that are not exactly one well-formed frame give
 * the reason instead. Header values and the payload are views into `data`, not copies.
 * @example
 * const frame = decodeFrame(data);
 * if (typeof frame === 'string') return ws.close(1002, frame);
 */
export function decodeFrame(data: FrameData): Frame | FrameError {
  const buf = asBuffer(data);
  if (buf === undefined) return 'not-a-frame';
  const n = buf.length;
  if ((n > 0 && buf[0] !== MAGIC_0) || (n > 1 && buf[1] !== MAGIC_1)) return 'not-a-frame';
  if (n > 2 && buf[2] !== FRAME_VERSION) return 'unsupported-version';
  if (n < PREFIX) return 'truncated';
  const headerBytes = buf.readUInt16BE(3);
  // Checked before anything else is read, so a hostile length costs nothing.
  if (headerBytes > MAX_FRAME_HEADER_BYTES) return 'header-too-large';
  const stop = PREFIX + headerBytes;
  const end = stop + buf.readUInt32BE(5);
  if (n < end) return 'truncated';
  if (n > end) return 'trailing-bytes';
  // No prototype: a peer's "__proto__" or "constructor" key is just a key.
  const headers: Record<string, Buffer | Buffer[]> = Object.create(null);
  let i = PREFIX;
  while (i < stop) {
    const keyLength = buf[i++];
    if (keyLength === 0 || i + keyLength + 2 > stop) return 'bad-header';
    for (let k = i; k < i + keyLength; k++) if (!isKeyByte(buf[k])) return 'bad-header';
    const key = buf.toString('latin1', i, i + keyLength);
    i += keyLength;
    const valueLength = buf.readUInt16BE(i);
    i += 2;
    if (i + valueLength > stop) return 'bad-header';
    const value = buf.subarray(i, i + valueLength);
    i += valueLength;
    const seen = headers[key];
    if (seen === undefined) headers[key] = value;
    else if (Array.isArray(seen)) seen.push(value);
    else headers[key] = [seen, value];
  }
  return { headers, payload: buf.subarray(stop, end) };
}

function bytes(value: unknown): Uint8Array | undefined {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  return value instanceof Uint8Array ? value : undefined;
}

/**
 * Encodes a frame: `headers`, then the trace context of `ctx` (default: the active one) written by
 * the global propagator, which replaces same-named entries of `headers`. Pass `ROOT_CONTEXT` to send
 * `headers` alone. Throws `TypeError` for a bad key or value and `RangeError` past the format's limits.
 * @example
 * ws.send(encodeFrame(JSON.stringify(message), { 'content-type': 'application/json' }));
 */
export function encodeFrame(
  payload: Uint8Array | string,
  headers?: FrameHeaderInput,
  ctx: Context = context.active(),
): Buffer {
  const all: HeaderCarrier = Object.create(null);
  if (headers !== undefined) for (const key of Object.keys(headers)) all[key] = headers[key];
  propagation.inject(ctx, all, headerSetter);

  const entries: Array<[string, Uint8Array]> = [];
  let headerBytes = 0;
  for (const key of Object.keys(all)) {
    const value = all[key];
    if (value === undefined) continue;
    if (key.length === 0 || key.length > MAX_KEY)
      throw new TypeError(`${PKG}: frame header key must be 1 to ${MAX_KEY} characters, got ${JSON.stringify(key)}`);
    for (let k = 0; k < key.length; k++) {
      if (!isKeyByte(key.charCodeAt(k)))
        throw new TypeError(`${PKG}: frame header key must be visible ASCII, got ${JSON.stringify(key)}`);
    }
    for (const one of Array.isArray(value) ? value : [value]) {
      const b = bytes(one);
      if (b === undefined)
        throw new TypeError(
          `${PKG}: frame header "${key}" must be a string, a Uint8Array or a list of them, got ${typeof one}`,
        );
      if (b.byteLength > MAX_VALUE)
        throw new RangeError(`${PKG}: frame header "${key}" is ${b.byteLength} bytes, more than ${MAX_VALUE}`);
      entries.push([key, b]);
      headerBytes += 3 + key.length + b.byteLength;
    }
  }
  if (headerBytes > MAX_FRAME_HEADER_BYTES)
    throw new RangeError(`${PKG}: frame header block is ${headerBytes} bytes, more than ${MAX_FRAME_HEADER_BYTES}`);
  const body = bytes(payload);
  if (body === undefined)
    throw new TypeError(`${PKG}: frame payload must be a string or a Uint8Array, got ${typeof payload}`);
  if (body.byteLength > MAX_PAYLOAD)
    throw new RangeError(`${PKG}: frame payload is ${body.byteLength} bytes, more than ${MAX_PAYLOAD}`);

  const out = Buffer.allocUnsafe(PREFIX + headerBytes + body.byteLength);
  out[0] = MAGIC_0;
  out[1] = MAGIC_1;
  out[2] = FRAME_VERSION;
  out.writeUInt16BE(headerBytes, 3);
  out.writeUInt32BE(body.byteLength, 5);
  let i = PREFIX;
  for (const [key, value] of entries) {
    out[i++] = key.length;
    i += out.write(key, i, 'latin1');
    out.writeUInt16BE(value.byteLength, i);
    out.set(value, i + 2);
    i += 2 + value.byteLength;
  }
  out.set(body, i);
  return out;
}
