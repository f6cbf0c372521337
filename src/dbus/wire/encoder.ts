/**
 * Marshalling a dbus-next `Message` into D-Bus wire bytes (little-endian),
 * straight into one growing buffer.
 *
 * It accepts the JS shapes dbus-next's own marshaller accepts (see
 * `marshall-compat.js` and `marshallers.js`) and writes the same bytes, header
 * fields in the same order and only when truthy, as dbus-next does. Where
 * dbus-next would throw, this throws an EncodeError; it is stricter in a few
 * places where dbus-next would send something the bus rejects, which would
 * cost the whole connection: an invalid object path or signature, a variant
 * signature of more than one type, a Variant where another type is expected,
 * containers nested deeper than 64, arrays over 64 MiB, messages over 128 MiB,
 * an 'ay' that is neither an array nor a typed array (dbus-next sends `{}` or
 * `''` as an empty array). It accepts the smallest int64, -2^63, which
 * dbus-next refuses by an off-by-one. It does not rewrite the message's body
 * into marshaller form as dbus-next's marshaller does.
 *
 * vmdevd sends no unix fds: a value of type 'h' is an EncodeError (a message
 * with 'h' and no fd attached is one the bus would drop us for).
 */
import { Buffer } from 'node:buffer';
import dbus from 'dbus-next';
import { isObjectPath, parseSignature, parseSingleType, SignatureError, type TypeNode } from './signature.js';

const { Variant } = dbus;

export class EncodeError extends Error {
  override readonly name = 'EncodeError';
}

/** Spec limits. */
export const MAX_ARRAY_LENGTH = 1 << 26;
export const MAX_MESSAGE_LENGTH = 1 << 27;
/** Containers (arrays, structs, dict entries, variants) nested in a body, as libdbus counts them. */
export const MAX_TOTAL_DEPTH = 64;

/** What dbus-next hands its connection: a `Message`, or a plain object with the same fields. */
export interface OutgoingMessage {
  readonly type?: number;
  readonly flags?: number;
  readonly serial?: number | null;
  readonly path?: string;
  readonly interface?: string;
  readonly member?: string;
  readonly errorName?: string;
  readonly replySerial?: number | string;
  readonly destination?: string;
  readonly sender?: string;
  readonly signature?: string;
  readonly body?: readonly unknown[];
  readonly unixFd?: number;
  /**
   * The body already encoded (by {@link encodeBody}) for `signature`; it is
   * copied instead of encoding `body`, or (see {@link encodeHeaderInto})
   * written from this buffer as it is, so it must not change once sent.
   * With it, `body` may be left out.
   */
  readonly rawBody?: Buffer;
}

/** Methods every Node Buffer has but @types/node does not declare. */
interface FastBuffer extends Buffer {
  utf8Write(value: string, offset: number): number;
}

/** A byte buffer that grows; alignment is relative to `base`, the start of the message being written. */
export class WireWriter {
  buf: FastBuffer;
  pos = 0;
  base = 0;

  constructor(private readonly initialSize = 4096) {
    this.buf = Buffer.allocUnsafe(initialSize) as FastBuffer;
  }

  reserve(n: number): void {
    if (this.pos + n > this.buf.length) this.grow(n);
  }

  /** Hands out what was written (one Buffer) and starts over. */
  take(): Buffer {
    let out: Buffer;
    if (this.pos > 65536) {
      // Large: give the buffer away rather than copy it.
      out = this.buf.subarray(0, this.pos);
      this.buf = Buffer.allocUnsafe(this.initialSize) as FastBuffer;
    } else {
      out = Buffer.allocUnsafe(this.pos);
      this.buf.copy(out, 0, 0, this.pos);
    }
    this.pos = 0;
    return out;
  }

  private grow(n: number): void {
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size) as FastBuffer;
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }
}

/** Appends one message to `w`. On an error nothing is appended. */
export function encodeMessageInto(w: WireWriter, msg: OutgoingMessage): void {
  const start = w.pos;
  try {
    writeMessage(w, msg, true);
  } catch (err) {
    w.pos = start;
    throw err;
  }
}

/**
 * Appends the header of a message with a `rawBody`, for a sender that
 * writes the body from its own buffer right after it (a large body is not
 * copied). On an error nothing is appended.
 */
export function encodeHeaderInto(w: WireWriter, msg: OutgoingMessage & { readonly rawBody: Buffer }): void {
  const start = w.pos;
  try {
    writeMessage(w, msg, false);
  } catch (err) {
    w.pos = start;
    throw err;
  }
}

const scratch = new WireWriter();

/** One message as a Buffer of its own. */
export function encodeMessage(msg: OutgoingMessage): Buffer {
  encodeMessageInto(scratch, msg);
  return scratch.take();
}

/**
 * A message body encoded on its own, to be sent again and again as
 * `rawBody` (a property value that changes rarely and is read often).
 */
export function encodeBody(signature: string, body: readonly unknown[]): Buffer {
  const types = parseSignature(signature);
  if (body.length !== types.length)
    throw new EncodeError(`Expected ${types.length} body elements for signature '${signature}' (got ${body.length})`);
  const w = new WireWriter(256);
  for (let i = 0; i < types.length; i++) writeValue(w, types[i]!, body[i], 0);
  return w.take();
}

/**
 * A signal sent again and again with the same fields, its body encoded
 * beforehand (by {@link encodeBody} or an encoder of the same bytes): the
 * header is encoded once, and each message takes only its serial and its
 * body's length. For a signal whose latency counts (the state map, from a
 * hypervisor's event): nothing is looked up, parsed or checked on its way.
 */
export class SignalTemplate {
  /** The header, padded to 8, with serial 0 and body length 0. */
  readonly #header: Buffer;

  constructor(fields: {
    readonly path: string;
    readonly interface: string;
    readonly member: string;
    readonly signature: string;
  }) {
    const w = new WireWriter(256);
    parseSignature(fields.signature);
    writeHeader(w, { ...fields, type: SIGNAL, serial: 1 }, SIGNAL, 0, fields.signature);
    const header = w.take();
    putU32(header, 8, 0);
    this.#header = header;
  }

  /** The header of the message with `serial` and a body of `bodyLength` bytes, in a buffer of its own. */
  header(serial: number, bodyLength: number): Buffer {
    const header = Buffer.allocUnsafe(this.#header.length);
    this.#put(header, serial, bodyLength);
    return header;
  }

  /** The whole message with `serial` and `body`, in one buffer. */
  message(serial: number, body: Uint8Array): Buffer {
    const out = Buffer.allocUnsafe(this.#header.length + body.length);
    this.#put(out, serial, body.length);
    out.set(body, this.#header.length);
    return out;
  }

  #put(out: Buffer, serial: number, bodyLength: number): void {
    if (this.#header.length + bodyLength > MAX_MESSAGE_LENGTH)
      throw new EncodeError(`the message is longer than ${MAX_MESSAGE_LENGTH} bytes`);
    // TypedArray's set runs in V8 itself; Buffer's copy calls into Node's C++.
    out.set(this.#header, 0);
    putU32(out, 4, bodyLength);
    putU32(out, 8, serial);
  }
}

const FIELD_PATH = 1;
const FIELD_INTERFACE = 2;
const FIELD_MEMBER = 3;
const FIELD_ERROR_NAME = 4;
const FIELD_REPLY_SERIAL = 5;
const FIELD_DESTINATION = 6;
const FIELD_SENDER = 7;
const FIELD_SIGNATURE = 8;
const FIELD_UNIX_FDS = 9;
const CH_O = 0x6f;
const CH_S = 0x73;
const CH_U = 0x75;
const CH_G = 0x67;

function writeMessage(w: WireWriter, msg: OutgoingMessage, withBody: boolean): void {
  if (!msg.serial) throw new EncodeError('Missing or invalid serial');
  const signature = msg.signature === undefined ? '' : msg.signature;
  const types = parseSignature(signature);
  const body = msg.body === undefined ? [] : msg.body;
  // A body already encoded stands for the values, which may be left out.
  if (msg.rawBody === undefined && (!Array.isArray(body) || body.length !== types.length)) {
    throw new EncodeError(
      `Expected ${types.length} body elements for signature '${signature}' (got ${Array.isArray(body) ? body.length : typeof body})`,
    );
  }
  const type = msg.type || 1;
  const flags = msg.flags || 0;
  checkInteger(type, 0, 0xff, 'the message type');
  checkInteger(flags, 0, 0xff, 'the message flags');
  checkInteger(msg.serial, 0, 0xffffffff, 'the serial');

  const start = w.pos;
  w.base = start;
  // A signal's header is the same bytes but for its serial every time it
  // is sent (vmdevd sends four kinds): copied, not encoded again.
  const key =
    type === SIGNAL && !msg.destination && !msg.sender && !msg.replySerial && !msg.errorName && !msg.unixFd
      ? `${flags}\0${String(msg.path)}\0${String(msg.interface)}\0${String(msg.member)}\0${signature}`
      : undefined;
  const cached = key !== undefined ? signalHeaders.get(key) : undefined;
  if (cached !== undefined) {
    w.reserve(cached.length);
    // TypedArray's set runs in V8 itself; Buffer's copy calls into Node's C++,
    // which costs more on a signal sent by an idle daemon (cold code).
    w.buf.set(cached, start);
    putU32(w.buf, start + 8, msg.serial);
    w.pos = start + cached.length;
  } else {
    writeHeader(w, msg, type, flags, signature);
    if (key !== undefined) {
      if (signalHeaders.size >= SIGNAL_HEADER_CACHE_SIZE) signalHeaders.clear();
      signalHeaders.set(key, Buffer.from(w.buf.subarray(start, w.pos)));
    }
  }

  const bodyStart = w.pos;
  let bodyLength: number;
  if (msg.rawBody !== undefined && !withBody) {
    // The sender writes the body right after this header.
    bodyLength = msg.rawBody.length;
  } else if (msg.rawBody !== undefined) {
    // The body starts 8-aligned, as it did when it was encoded: alignment holds.
    w.reserve(msg.rawBody.length);
    w.buf.set(msg.rawBody, w.pos);
    w.pos += msg.rawBody.length;
    bodyLength = msg.rawBody.length;
  } else {
    for (let i = 0; i < types.length; i++) writeValue(w, types[i]!, body[i], 0);
    bodyLength = w.pos - bodyStart;
  }
  if (bodyStart - start + bodyLength > MAX_MESSAGE_LENGTH)
    throw new EncodeError(`the message is longer than ${MAX_MESSAGE_LENGTH} bytes`);
  putU32(w.buf, start + 4, bodyLength);
}

/** Signal headers by their fields; a handful in practice. */
const signalHeaders = new Map<string, Buffer>();
const SIGNAL_HEADER_CACHE_SIZE = 64;
const SIGNAL = 4;

/** The fixed part and the header fields, padded to 8: where the body starts. */
function writeHeader(w: WireWriter, msg: OutgoingMessage, type: number, flags: number, signature: string): void {
  const start = w.pos;
  w.reserve(16);
  const b = w.buf;
  b[start] = 0x6c; // 'l': little-endian
  b[start + 1] = type;
  b[start + 2] = flags;
  b[start + 3] = 1; // protocol version
  putU32(b, start + 8, msg.serial as number);
  w.pos = start + 16;

  // Header fields in dbus-next's order, each only when truthy, as dbus-next does.
  if (msg.path) {
    const path = stringValue(msg.path, 'o');
    if (!isObjectPath(path)) throw new EncodeError(`Invalid object path: ${path}`);
    stringField(w, FIELD_PATH, CH_O, path);
  }
  if (msg.interface) stringField(w, FIELD_INTERFACE, CH_S, stringValue(msg.interface, 's'));
  if (msg.member) stringField(w, FIELD_MEMBER, CH_S, stringValue(msg.member, 's'));
  if (msg.errorName) stringField(w, FIELD_ERROR_NAME, CH_S, stringValue(msg.errorName, 's'));
  if (msg.replySerial) u32Field(w, FIELD_REPLY_SERIAL, msg.replySerial);
  if (msg.destination) stringField(w, FIELD_DESTINATION, CH_S, stringValue(msg.destination, 's'));
  if (msg.sender) stringField(w, FIELD_SENDER, CH_S, stringValue(msg.sender, 's'));
  if (signature) {
    fieldStart(w, FIELD_SIGNATURE, CH_G);
    writeSignature(w, signature);
  }
  if (msg.unixFd) u32Field(w, FIELD_UNIX_FDS, msg.unixFd);
  putU32(w.buf, start + 12, w.pos - start - 16);
  pad(w, 8);
}

function fieldStart(w: WireWriter, code: number, sigChar: number): void {
  pad(w, 8);
  w.reserve(4);
  const b = w.buf;
  const p = w.pos;
  b[p] = code;
  b[p + 1] = 1;
  b[p + 2] = sigChar;
  b[p + 3] = 0;
  w.pos = p + 4;
}

function stringField(w: WireWriter, code: number, sigChar: number, value: string): void {
  fieldStart(w, code, sigChar);
  writeString(w, value);
}

function u32Field(w: WireWriter, code: number, value: unknown): void {
  checkInteger(value, 0, 0xffffffff, "a header field of type 'u'");
  fieldStart(w, code, CH_U);
  pad(w, 4);
  w.reserve(4);
  putU32(w.buf, w.pos, value as number);
  w.pos += 4;
}

// ---- values -----------------------------------------------------------------

function writeValue(w: WireWriter, t: TypeNode, v: unknown, depth: number): void {
  switch (t.type) {
    case 's': {
      writeString(w, stringValue(v, 's'));
      return;
    }
    case 'b': {
      if (v !== true && v !== false && v !== 0 && v !== 1) throw typeError(t, v, 'true, false, 0 or 1');
      pad(w, 4);
      w.reserve(4);
      putU32(w.buf, w.pos, v ? 1 : 0);
      w.pos += 4;
      return;
    }
    case 'u':
    case 'i': {
      if (t.type === 'u') checkInteger(v, 0, 0xffffffff, "type 'u'");
      else checkInteger(v, -0x80000000, 0x7fffffff, "type 'i'");
      pad(w, 4);
      w.reserve(4);
      putU32(w.buf, w.pos, v as number);
      w.pos += 4;
      return;
    }
    case 'y': {
      checkInteger(v, 0, 0xff, "type 'y'");
      w.reserve(1);
      w.buf[w.pos++] = v as number;
      return;
    }
    case 'n':
    case 'q': {
      if (t.type === 'q') checkInteger(v, 0, 0xffff, "type 'q'");
      else checkInteger(v, -0x8000, 0x7fff, "type 'n'");
      pad(w, 2);
      w.reserve(2);
      const n = v as number;
      w.buf[w.pos] = n & 0xff;
      w.buf[w.pos + 1] = (n >> 8) & 0xff;
      w.pos += 2;
      return;
    }
    case 'x':
    case 't': {
      const n = bigIntValue(v, t);
      pad(w, 8);
      w.reserve(8);
      if (t.type === 'x') w.buf.writeBigInt64LE(n, w.pos);
      else w.buf.writeBigUInt64LE(n, w.pos);
      w.pos += 8;
      return;
    }
    case 'd': {
      if (typeof v !== 'number' || !Number.isFinite(v)) throw typeError(t, v, 'a finite number');
      pad(w, 8);
      w.reserve(8);
      // dbus-next writes parseFloat(v), which turns -0 into 0.
      w.buf.writeDoubleLE(v === 0 ? 0 : v, w.pos);
      w.pos += 8;
      return;
    }
    case 'o': {
      const path = stringValue(v, 'o');
      if (!isObjectPath(path)) throw new EncodeError(`Invalid object path: ${path}`);
      writeString(w, path);
      return;
    }
    case 'g': {
      writeSignature(w, stringValue(v, 'g'));
      return;
    }
    case 'h':
      throw new EncodeError("vmdevd sends no unix fds ('h')");
    case 'v': {
      if (v === null || v === undefined || v.constructor !== Variant) throw typeError(t, v, 'a Variant');
      if (depth >= MAX_TOTAL_DEPTH) throw tooDeep();
      const { signature, value } = v as { signature: string; value: unknown };
      let inner: TypeNode;
      try {
        inner = parseSingleType(signature);
      } catch (err) {
        throw new EncodeError(`a Variant's signature: ${(err as Error).message}`);
      }
      writeSignature(w, inner.signature);
      writeValue(w, inner, value, depth + 1);
      return;
    }
    case 'a':
      writeArray(w, t, v, depth);
      return;
    case '(': {
      if (!Array.isArray(v)) throw typeError(t, v, 'an array');
      if (v.length !== t.children.length)
        throw new EncodeError(`expecting struct to have ${t.children.length} members (got ${v.length} members)`);
      if (depth >= MAX_TOTAL_DEPTH) throw tooDeep();
      pad(w, 8);
      for (let i = 0; i < v.length; i++) writeValue(w, t.children[i]!, v[i], depth + 1);
      return;
    }
    default:
      throw new EncodeError(`cannot marshal type '${t.signature}'`);
  }
}

function writeArray(w: WireWriter, t: TypeNode, v: unknown, depth: number): void {
  if (depth >= MAX_TOTAL_DEPTH) throw tooDeep();
  const el = t.children[0]!;
  // Check the shape before writing anything, as dbus-next does.
  const isDict = el.type === '{';
  if (isDict) {
    if (v === null || v === undefined || v.constructor !== Object) throw typeError(t, v, 'a plain object');
  } else if (el.type === 'y') {
    if (!Array.isArray(v) && !ArrayBuffer.isView(v)) throw typeError(t, v, 'a Buffer or an array of bytes');
  } else if (!Array.isArray(v)) {
    throw typeError(t, v, 'an array');
  }
  pad(w, 4);
  w.reserve(4);
  const lengthAt = w.pos;
  w.pos += 4;
  pad(w, el.align); // an empty array is padded too
  const start = w.pos;
  if (isDict) {
    const obj = v as Record<string, unknown>;
    const [kt, vt] = el.children as [TypeNode, TypeNode];
    if (depth + 1 >= MAX_TOTAL_DEPTH) throw tooDeep();
    for (const k of Object.keys(obj)) {
      pad(w, 8);
      writeValue(w, kt, k, depth + 2);
      writeValue(w, vt, obj[k], depth + 2);
    }
  } else if (el.type === 'y') {
    writeBytes(w, v as ArrayLike<unknown>);
  } else {
    const arr = v as unknown[];
    for (let i = 0; i < arr.length; i++) writeValue(w, el, arr[i], depth + 1);
  }
  const length = w.pos - start;
  if (length > MAX_ARRAY_LENGTH)
    throw new EncodeError(`an array of type '${t.signature}' is longer than ${MAX_ARRAY_LENGTH} bytes`);
  putU32(w.buf, lengthAt, length);
}

function writeBytes(w: WireWriter, v: ArrayLike<unknown>): void {
  w.reserve(v.length);
  if (v instanceof Uint8Array) {
    w.buf.set(v, w.pos);
    w.pos += v.length;
    return;
  }
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    checkInteger(x, 0, 0xff, "an element of 'ay'");
    w.buf[w.pos++] = x as number;
  }
}

function writeString(w: WireWriter, s: string): void {
  if (s.indexOf('\0') !== -1) throw new EncodeError('String contains null byte');
  pad(w, 4);
  const n = s.length;
  w.reserve(n * 3 + 5);
  const b = w.buf;
  const at = w.pos + 4;
  let len = 0;
  // Short ASCII strings are the common case; copying them here beats the native call.
  if (n <= 32) {
    for (; len < n; len++) {
      const c = s.charCodeAt(len);
      if (c > 0x7f) break;
      b[at + len] = c;
    }
    if (len < n) len = b.utf8Write(s, at);
  } else {
    len = b.utf8Write(s, at);
  }
  putU32(b, w.pos, len);
  b[at + len] = 0;
  w.pos = at + len + 1;
}

function writeSignature(w: WireWriter, s: string): void {
  if (s.indexOf('\0') !== -1) throw new EncodeError('String contains null byte');
  try {
    parseSignature(s);
  } catch (err) {
    if (err instanceof SignatureError) throw new EncodeError(err.message);
    throw err;
  }
  const n = s.length;
  w.reserve(n + 2);
  const b = w.buf;
  let p = w.pos;
  b[p++] = n;
  for (let i = 0; i < n; i++) b[p++] = s.charCodeAt(i);
  b[p++] = 0;
  w.pos = p;
}

function pad(w: WireWriter, n: number): void {
  const p = (n - ((w.pos - w.base) & (n - 1))) & (n - 1);
  if (p === 0) return;
  w.reserve(p);
  const b = w.buf;
  for (let i = 0; i < p; i++) b[w.pos++] = 0;
}

/** A u32, little-endian, at `at`. */
export function putU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
  b[at + 2] = (v >>> 16) & 0xff;
  b[at + 3] = (v >>> 24) & 0xff;
}

// ---- the JS shapes dbus-next accepts ----------------------------------------

/** dbus-next turns a Buffer into a string for every simple type. */
function stringValue(v: unknown, type: string): string {
  if (typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return v.toString();
  throw new EncodeError(`Expected string or buffer argument, got ${valueText(v)} of type '${type}'`);
}

function checkInteger(v: unknown, min: number, max: number, what: string): void {
  if (typeof v !== 'number' || !Number.isInteger(v))
    throw new EncodeError(`expected an integer for ${what}, got ${valueText(v)}`);
  if (v < min || v > max) throw new EncodeError(`${v} is out of range for ${what} (${min} to ${max})`);
}

const MIN_INT64 = -(2n ** 63n);
const MAX_INT64 = 2n ** 63n - 1n;
const MAX_UINT64 = 2n ** 64n - 1n;

/** A BigInt, or whatever `BigInt(value.toString())` accepts (numbers, decimal strings), as dbus-next does. */
function bigIntValue(v: unknown, t: TypeNode): bigint {
  let n: bigint;
  if (typeof v === 'bigint') {
    n = v;
  } else {
    if (v === null || v === undefined) throw typeError(t, v, 'a BigInt or an integer');
    try {
      // As dbus-next: anything whose string is an integer (a Long, say).
      // eslint-disable-next-line @typescript-eslint/no-base-to-string
      n = BigInt((Buffer.isBuffer(v) ? v.toString() : v).toString());
    } catch {
      throw typeError(t, v, 'a BigInt or an integer');
    }
  }
  if (t.type === 'x' ? n < MIN_INT64 || n > MAX_INT64 : n < 0n || n > MAX_UINT64) {
    throw new EncodeError(`${n} is out of range for type '${t.type}'`);
  }
  return n;
}

function typeError(t: TypeNode, v: unknown, expected: string): EncodeError {
  return new EncodeError(`expected ${expected} for type '${t.signature}', got ${valueText(v)}`);
}

function tooDeep(): EncodeError {
  return new EncodeError(`containers nested deeper than ${MAX_TOTAL_DEPTH}`);
}

function valueText(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'number' || typeof v === 'boolean') return `${typeof v} ${v}`;
  if (typeof v !== 'object') return typeof v;
  const name = v.constructor?.name;
  return Array.isArray(v) ? `an array of ${v.length}` : `${name ?? 'an object'}`;
}
