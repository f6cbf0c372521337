/**
 * Parsing D-Bus wire bytes into dbus-next `Message` objects, with the JS
 * values dbus-next's own connection produces (`unmarshalMessages`, then
 * `messageToJsFmt`, then `new Message`): a Variant for 'v', a plain object
 * for a dict, a Buffer (a view of the received bytes) for 'ay', a BigInt for
 * 'x' and 't', an array for a struct, a boolean for 'b'. dbus-next's JSBI
 * mode (`setBigIntCompat(true)`) is not followed: 'x' and 't' are always
 * native BigInts.
 *
 * Unlike dbus-next it validates what the spec requires of a message (the bus
 * already did, so this costs nothing on a healthy bus and turns a broken one
 * into an error instead of garbage): lengths within the message and the spec
 * limits, zero padding, NUL-terminated UTF-8 strings without NUL, booleans 0
 * or 1, object paths, signatures, nesting depth, a body exactly as long as its
 * signature says, the header fields' types and the fields each message type
 * requires. A message of an unknown type is skipped, as the spec says (dbus-next
 * reports an error). vmdevd takes no unix fds: a message with 'h' anywhere in
 * its body does not decode (and is answered InvalidArgs by its owner, see
 * MessageFramer), where dbus-next would fail the whole connection.
 */
import { Buffer, isUtf8 } from 'node:buffer';
import dbus from 'dbus-next';
import { MAX_ARRAY_LENGTH, MAX_MESSAGE_LENGTH, MAX_TOTAL_DEPTH } from './encoder.js';
import {
  isBusName,
  isInterfaceName,
  isObjectPath,
  parseSignature,
  parseSingleType,
  SignatureError,
  type TypeNode,
} from './signature.js';

const { Message, Variant } = dbus;
type Message = dbus.Message;

export class DecodeError extends Error {
  override readonly name = 'DecodeError';
}

const LITTLE = 0x6c; // 'l'
const BIG = 0x42; // 'B'
/** The fixed part of the header: endianness, type, flags, version, body length, serial, fields length. */
export const FIXED_HEADER_LENGTH = 16;

/** Methods every Node Buffer has but @types/node does not declare. */
interface FastBuffer extends Buffer {
  latin1Slice(start: number, end: number): string;
}

/**
 * The length of the whole message starting at `off`, from its fixed header
 * (`buf` must hold the 16 bytes there). Throws DecodeError for a header that
 * cannot start a message.
 */
export function messageLength(buf: Buffer, off: number): number {
  const endian = buf[off];
  if (endian !== LITTLE && endian !== BIG) throw new DecodeError(`not a message: endianness byte ${endian}`);
  if (buf[off + 3] !== 1) throw new DecodeError(`unsupported protocol version ${buf[off + 3]}`);
  const le = endian === LITTLE;
  const bodyLength = le ? buf.readUInt32LE(off + 4) : buf.readUInt32BE(off + 4);
  const fieldsLength = le ? buf.readUInt32LE(off + 12) : buf.readUInt32BE(off + 12);
  if (fieldsLength > MAX_ARRAY_LENGTH)
    throw new DecodeError(`header fields of ${fieldsLength} bytes (at most ${MAX_ARRAY_LENGTH})`);
  const total = FIXED_HEADER_LENGTH + ((fieldsLength + 7) & ~7) + bodyLength;
  if (total > MAX_MESSAGE_LENGTH) throw new DecodeError(`a message of ${total} bytes (at most ${MAX_MESSAGE_LENGTH})`);
  return total;
}

/**
 * Decodes the message in `buf[off, off + length)`, `length` from
 * messageLength. Returns undefined for a message of an unknown type.
 */
export function decodeMessage(buf: Buffer, off: number, length: number): Message | undefined {
  const r = new Reader(buf as FastBuffer, off, buf[off] === LITTLE);
  const { type, flags, serial, path, iface, member, errorName, replySerial, destination, sender, signature } =
    readHeader(r, buf, off);

  r.end = off + length;
  r.align(8);
  const body: unknown[] = [];
  if (signature) {
    const types = parseSignature(signature);
    for (let i = 0; i < types.length; i++) body.push(r.value(types[i]!, 0));
  }
  if (r.pos !== r.end)
    throw new DecodeError(`the body is longer than its signature ${JSON.stringify(signature ?? '')} says`);

  if (type > 4) return undefined;
  checkFields(type, path, iface, member, errorName, replySerial, destination);

  // The fields dbus-next's Message constructor sets, in its order; its
  // validation is done above (and cached), so it is not run again.
  const msg = Object.create(Message.prototype) as Record<string, unknown>;
  msg['type'] = type;
  msg['_sent'] = false;
  msg['_serial'] = serial;
  msg['path'] = path;
  msg['interface'] = iface;
  msg['member'] = member;
  msg['errorName'] = errorName;
  msg['replySerial'] = replySerial;
  msg['destination'] = destination;
  msg['sender'] = sender;
  msg['signature'] = signature || '';
  msg['body'] = body;
  msg['flags'] = flags;
  return msg as unknown as Message;
}

/** The header of a message, without its body. */
export interface MessageHeader {
  readonly type: number;
  readonly flags: number;
  readonly serial: number;
  readonly path: string | undefined;
  readonly iface: string | undefined;
  readonly member: string | undefined;
  readonly errorName: string | undefined;
  readonly replySerial: number | undefined;
  readonly destination: string | undefined;
  readonly sender: string | undefined;
  readonly signature: string | undefined;
}

/** The length of a message's fixed header and header fields (with their padding): where its body starts. */
export function headerLength(buf: Buffer, off: number): number {
  const fieldsLength = buf[off] === LITTLE ? buf.readUInt32LE(off + 12) : buf.readUInt32BE(off + 12);
  return FIXED_HEADER_LENGTH + ((fieldsLength + 7) & ~7);
}

/** Decodes the header of the message at `off`; `buf` must hold at least headerLength bytes there. */
export function decodeHeader(buf: Buffer, off: number): MessageHeader {
  return readHeader(new Reader(buf as FastBuffer, off, buf[off] === LITTLE), buf, off);
}

function readHeader(r: Reader, buf: Buffer, off: number): MessageHeader {
  const type = buf[off + 1]!;
  const flags = buf[off + 2]!;
  const serial = r.u32At(off + 8);
  const fieldsLength = r.u32At(off + 12);
  if (serial === 0) throw new DecodeError('a message with serial 0');
  if (type === 0) throw new DecodeError('a message of type 0 (invalid)');

  let path: string | undefined;
  let iface: string | undefined;
  let member: string | undefined;
  let errorName: string | undefined;
  let replySerial: number | undefined;
  let destination: string | undefined;
  let sender: string | undefined;
  let signature: string | undefined;
  const fieldsEnd = off + FIXED_HEADER_LENGTH + fieldsLength;
  r.pos = off + FIXED_HEADER_LENGTH;
  r.end = fieldsEnd;
  while (r.pos < fieldsEnd) {
    r.align(8);
    const code = r.byte();
    const sig = r.signature();
    switch (code) {
      case 1:
        r.expectFieldType(code, sig, 'o');
        path = r.string(true);
        break;
      case 2:
        r.expectFieldType(code, sig, 's');
        iface = r.string(false);
        break;
      case 3:
        r.expectFieldType(code, sig, 's');
        member = r.string(false);
        break;
      case 4:
        r.expectFieldType(code, sig, 's');
        errorName = r.string(false);
        break;
      case 5:
        r.expectFieldType(code, sig, 'u');
        replySerial = r.u32();
        break;
      case 6:
        r.expectFieldType(code, sig, 's');
        destination = r.string(false);
        break;
      case 7:
        r.expectFieldType(code, sig, 's');
        sender = r.string(false);
        break;
      case 8:
        r.expectFieldType(code, sig, 'g');
        signature = r.signature();
        break;
      case 0:
        throw new DecodeError('a header field with code 0 (invalid)');
      default:
        // Unknown fields (and unix fds, which this connection never negotiates) are skipped, as the spec says.
        r.value(r.singleType(sig), 1);
    }
  }
  if (r.pos !== fieldsEnd) throw new DecodeError('the header fields overrun their length');
  return { type, flags, serial, path, iface, member, errorName, replySerial, destination, sender, signature };
}

const METHOD_CALL = 1;
const METHOD_RETURN = 2;
const ERROR = 3;
const SIGNAL = 4;

/** What `new Message` checks, with the same validators; names seen valid once are remembered. */
function checkFields(
  type: number,
  path: string | undefined,
  iface: string | undefined,
  member: string | undefined,
  errorName: string | undefined,
  replySerial: number | undefined,
  destination: string | undefined,
): void {
  if (destination) checkName(destination, isBusName, 'bus name');
  if (iface) checkName(iface, isInterfaceName, 'interface name');
  if (errorName) checkName(errorName, isInterfaceName, 'error name');
  const missing =
    type === METHOD_CALL
      ? path === undefined
        ? 'path'
        : member === undefined
          ? 'member'
          : undefined
      : type === SIGNAL
        ? path === undefined
          ? 'path'
          : member === undefined
            ? 'member'
            : iface === undefined
              ? 'interface'
              : undefined
        : type === ERROR
          ? errorName === undefined
            ? 'errorName'
            : replySerial === undefined
              ? 'replySerial'
              : undefined
          : type === METHOD_RETURN
            ? replySerial === undefined
              ? 'replySerial'
              : undefined
            : undefined;
  if (missing !== undefined) throw new DecodeError(`Message is missing a required field: ${missing}`);
}

const NAME_CACHE_LIMIT = 1024;
const validNames = new Set<string>();

function checkName(name: string, valid: (name: string) => boolean, what: string): void {
  if (validNames.has(name)) return;
  if (!valid(name)) throw new DecodeError(`Invalid ${what}: ${name}`);
  if (validNames.size >= NAME_CACHE_LIMIT) validNames.clear();
  validNames.add(name);
}

/** A cursor over one message; alignment is relative to the message's start. */
class Reader {
  pos = 0;
  end = 0;

  constructor(
    private readonly buf: FastBuffer,
    private readonly base: number,
    private readonly le: boolean,
  ) {}

  u32At(at: number): number {
    const b = this.buf;
    return this.le
      ? (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16)) + b[at + 3]! * 0x1000000
      : (b[at + 3]! | (b[at + 2]! << 8) | (b[at + 1]! << 16)) + b[at]! * 0x1000000;
  }

  need(n: number): void {
    if (this.pos + n > this.end) throw new DecodeError('a value runs past the end of the message');
  }

  /** Skips to the next multiple of n; the padding must be zero. */
  align(n: number): void {
    const p = (n - ((this.pos - this.base) & (n - 1))) & (n - 1);
    if (p === 0) return;
    this.need(p);
    const b = this.buf;
    for (let i = 0; i < p; i++) if (b[this.pos++] !== 0) throw new DecodeError('non-zero alignment padding');
  }

  byte(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }

  u32(): number {
    this.align(4);
    this.need(4);
    const v = this.u32At(this.pos);
    this.pos += 4;
    return v;
  }

  expectFieldType(code: number, sig: string, expected: string): void {
    if (sig !== expected)
      throw new DecodeError(`header field ${code} has type ${JSON.stringify(sig)}, not ${JSON.stringify(expected)}`);
  }

  singleType(sig: string): TypeNode {
    try {
      return parseSingleType(sig);
    } catch (err) {
      throw err instanceof SignatureError ? new DecodeError(err.message) : err;
    }
  }

  /** A 'g': length byte, ASCII, NUL; validated as a signature. */
  signature(): string {
    const len = this.byte();
    this.need(len + 1);
    const start = this.pos;
    const b = this.buf;
    if (b[start + len] !== 0) throw new DecodeError('a signature is not NUL-terminated');
    let hash = len;
    for (let i = start; i < start + len; i++) hash = (Math.imul(hash, 31) + b[i]!) | 0;
    // Any byte that is not a type code (NUL, non-ASCII) fails the parse below.
    const s = interned(b, start, len, hash & INTERN_MASK);
    this.pos = start + len + 1;
    try {
      parseSignature(s);
    } catch (err) {
      throw err instanceof SignatureError ? new DecodeError(err.message) : err;
    }
    return s;
  }

  /** An 's' or an 'o': u32 length, UTF-8 without NUL, NUL. */
  string(objectPath: boolean): string {
    const len = this.u32();
    this.need(len + 1);
    const b = this.buf;
    const start = this.pos;
    const end = start + len;
    if (b[end] !== 0) throw new DecodeError('a string is not NUL-terminated');
    let s: string | undefined;
    if (len <= MAX_INTERNED_LENGTH) {
      // Short ASCII strings are the common case: one pass checks for NUL and
      // non-ASCII and hashes, and a string seen before is reused.
      let ascii = true;
      let hash = len;
      for (let i = start; i < end; i++) {
        const c = b[i]!;
        if (c === 0) throw new DecodeError('a string contains a NUL byte');
        if (c > 0x7f) ascii = false;
        hash = (Math.imul(hash, 31) + c) | 0;
      }
      if (ascii) s = interned(b, start, len, hash & INTERN_MASK);
    } else if (b.indexOf(0, start) < end) {
      throw new DecodeError('a string contains a NUL byte');
    }
    if (s === undefined) {
      if (!isUtf8(b.subarray(start, end))) throw new DecodeError('a string is not valid UTF-8');
      s = b.toString('utf8', start, end);
    }
    this.pos = end + 1;
    if (objectPath && !isObjectPath(s)) throw new DecodeError(`Invalid object path: ${s}`);
    return s;
  }

  value(t: TypeNode, depth: number): unknown {
    const b = this.buf;
    switch (t.type) {
      case 's':
        return this.string(false);
      case 'u':
        return this.u32();
      case 'b': {
        const v = this.u32();
        if (v > 1) throw new DecodeError(`a boolean of ${v}`);
        return v === 1;
      }
      case 'y':
        return this.byte();
      case 'i': {
        const v = this.u32();
        return v | 0;
      }
      case 'n':
      case 'q': {
        this.align(2);
        this.need(2);
        const p = this.pos;
        this.pos += 2;
        const v = this.le ? b[p]! | (b[p + 1]! << 8) : b[p + 1]! | (b[p]! << 8);
        return t.type === 'n' ? (v << 16) >> 16 : v;
      }
      case 'x':
      case 't': {
        this.align(8);
        this.need(8);
        const p = this.pos;
        this.pos += 8;
        if (t.type === 'x') return this.le ? b.readBigInt64LE(p) : b.readBigInt64BE(p);
        return this.le ? b.readBigUInt64LE(p) : b.readBigUInt64BE(p);
      }
      case 'd': {
        this.align(8);
        this.need(8);
        const p = this.pos;
        this.pos += 8;
        return this.le ? b.readDoubleLE(p) : b.readDoubleBE(p);
      }
      case 'o':
        return this.string(true);
      case 'g':
        return this.signature();
      case 'h':
        throw new DecodeError("a unix fd ('h'): vmdevd takes no file descriptors");
      case 'v': {
        if (depth >= MAX_TOTAL_DEPTH) throw tooDeep();
        const inner = this.singleType(this.signature());
        return new Variant(inner.signature, this.value(inner, depth + 1));
      }
      case '(': {
        if (depth >= MAX_TOTAL_DEPTH) throw tooDeep();
        this.align(8);
        const members = t.children;
        const out = new Array<unknown>(members.length);
        for (let i = 0; i < members.length; i++) out[i] = this.value(members[i]!, depth + 1);
        return out;
      }
      case 'a':
        return this.array(t, depth);
      default:
        throw new DecodeError(`cannot read type '${t.signature}'`);
    }
  }

  private array(t: TypeNode, depth: number): unknown {
    if (depth >= MAX_TOTAL_DEPTH) throw tooDeep();
    const length = this.u32();
    if (length > MAX_ARRAY_LENGTH) throw new DecodeError(`an array of ${length} bytes (at most ${MAX_ARRAY_LENGTH})`);
    const el = t.children[0]!;
    this.align(el.align); // present even when the array is empty
    const start = this.pos;
    const end = start + length;
    if (end > this.end) throw new DecodeError('an array runs past the end of the message');
    if (el.type === 'y') {
      this.pos = end;
      return this.buf.subarray(start, end);
    }
    if (el.type === '{') {
      if (depth + 1 >= MAX_TOTAL_DEPTH) throw tooDeep();
      const [kt, vt] = el.children as [TypeNode, TypeNode];
      const out: Record<string, unknown> = {};
      while (this.pos < end) {
        this.align(8);
        const key = String(this.value(kt, depth + 2));
        const value = this.value(vt, depth + 2);
        // An own property even for "__proto__" (dbus-next would set the object's prototype).
        if (key === '__proto__')
          Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
        else out[key] = value;
      }
      if (this.pos !== end) throw new DecodeError('an array element overruns the array');
      return out;
    }
    const out: unknown[] = [];
    while (this.pos < end) out.push(this.value(el, depth + 1));
    if (this.pos !== end) throw new DecodeError('an array element overruns the array');
    return out;
  }
}

/**
 * Short ASCII strings recently decoded, by hash: names, paths, dict keys and
 * values repeat from message to message, and comparing bytes with a kept
 * string is several times cheaper than making a new string. Direct-mapped
 * and bounded: a collision just replaces the entry.
 */
const MAX_INTERNED_LENGTH = 64;
const INTERN_MASK = 511;
const internTable = new Array<string>(INTERN_MASK + 1).fill('');

function interned(b: FastBuffer, start: number, len: number, slot: number): string {
  const kept = internTable[slot]!;
  if (kept.length === len) {
    let i = 0;
    while (i < len && kept.charCodeAt(i) === b[start + i]) i++;
    if (i === len) return kept;
  }
  const s = b.latin1Slice(start, start + len);
  internTable[slot] = s;
  return s;
}

function tooDeep(): DecodeError {
  return new DecodeError(`containers nested deeper than ${MAX_TOTAL_DEPTH}`);
}

/** The longest header an oversized message may have: only its body is dropped unread. */
const MAX_OVERSIZED_HEADER = 65536;

/**
 * Cuts a byte stream into messages. A message that arrives whole in one
 * chunk is decoded in place; one split over chunks is assembled once, when
 * its last byte is in (so a large message costs one copy, not one per chunk).
 *
 * A bad message is that message's problem: once its fixed header gave a
 * length that can be trusted (a known byte order, version 1, lengths within
 * the spec's limits), a message that does not decode is skipped and reported
 * to `onUndecodable`, with its header when the header itself decodes, and
 * the stream goes on after it. Only a fixed header that cannot frame a
 * message throws (a DecodeError from `push`): then nothing after it can be
 * trusted, and the framer is unusable.
 */
export type UndecodableListener = (header: MessageHeader | undefined, error: DecodeError) => void;

export class MessageFramer {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** The length of the message at the head, once its fixed header is in. */
  private headLength = 0;
  /** Bytes of an oversized message's body still to be dropped. */
  private skipping = 0;

  /**
   * `maxLength`: a message longer than this is not assembled: its header is
   * read (for `onOversized`, which can answer it) and its body dropped as it
   * arrives, so a huge message costs no memory.
   */
  constructor(
    private readonly maxLength = MAX_MESSAGE_LENGTH,
    private readonly onOversized: (header: MessageHeader, length: number) => void = () => {},
    private readonly onUndecodable: UndecodableListener = () => {},
  ) {}

  /** Calls `onMessage` for each complete message; it must not throw. Throws DecodeError. */
  push(chunk: Buffer, onMessage: (msg: Message) => void): void {
    if (this.skipping > 0) {
      if (chunk.length <= this.skipping) {
        this.skipping -= chunk.length;
        return;
      }
      chunk = chunk.subarray(this.skipping);
      this.skipping = 0;
    }
    if (this.buffered === 0) {
      this.consume(chunk, onMessage);
      return;
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.headLength === 0) {
      if (this.buffered < FIXED_HEADER_LENGTH) return;
      if (this.chunks[0]!.length < FIXED_HEADER_LENGTH) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
      this.headLength = messageLength(this.chunks[0]!, 0);
    }
    if (this.headLength > this.maxLength) {
      this.dropOversized(onMessage);
      return;
    }
    if (this.buffered < this.headLength) return;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    this.chunks = [];
    this.buffered = 0;
    this.headLength = 0;
    this.consume(all, onMessage);
  }

  /** Bytes received but not yet part of a complete message. */
  get pending(): number {
    return this.buffered;
  }

  /** Once the header of the oversized message at the head is in: report it, then drop the rest. */
  private dropOversized(onMessage: (msg: Message) => void): void {
    const head = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.buffered);
    const bodyStart = headerLength(head, 0);
    if (bodyStart > MAX_OVERSIZED_HEADER) throw new DecodeError(`header fields of ${bodyStart} bytes`);
    if (head.length < bodyStart) {
      this.chunks = [head];
      return;
    }
    const length = this.headLength;
    this.onOversized(decodeHeader(head, 0), length);
    this.chunks = [];
    this.buffered = 0;
    this.headLength = 0;
    if (head.length >= length) this.consume(head.subarray(length), onMessage);
    else this.skipping = length - head.length;
  }

  private consume(buf: Buffer, onMessage: (msg: Message) => void): void {
    let off = 0;
    while (buf.length - off >= FIXED_HEADER_LENGTH) {
      const length = messageLength(buf, off);
      if (length > this.maxLength) {
        this.chunks = [buf.subarray(off)];
        this.buffered = buf.length - off;
        this.headLength = length;
        this.dropOversized(onMessage);
        return;
      }
      if (buf.length - off < length) {
        this.headLength = length;
        break;
      }
      let msg: Message | undefined;
      try {
        msg = decodeMessage(buf, off, length);
      } catch (err) {
        if (!(err instanceof DecodeError)) throw err;
        const header = headerOrUndefined(buf, off);
        off += length;
        this.onUndecodable(header, err);
        continue;
      }
      off += length;
      if (msg !== undefined) onMessage(msg);
    }
    if (off < buf.length) {
      this.chunks = [buf.subarray(off)];
      this.buffered = buf.length - off;
    }
  }
}

/** The header of a message whose body did not decode, if the header itself does. */
function headerOrUndefined(buf: Buffer, off: number): MessageHeader | undefined {
  try {
    return decodeHeader(buf, off);
  } catch {
    return undefined;
  }
}
