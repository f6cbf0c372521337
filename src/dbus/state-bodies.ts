/**
 * The three messages that carry the state map, encoded from one encoding
 * of it: `TestSignal` (`a{ss}`), the `PropertiesChanged` of `TestProperty`
 * (`sa{sv}as`) and the reply to `Get TestProperty` (`v`). A change is
 * encoded once, on the path from a hypervisor's event to the bus, with what
 * does not depend on the map prepared beforehand; the other two bodies copy
 * its bytes when first asked for (`PropertiesChanged` after the
 * `TestSignal` is written, a `Get` reply at the first `Get`).
 *
 * In all three bodies the map's dict entries start 8-aligned (a body starts
 * 8-aligned in its message), so their bytes are the same: the entries of
 * the `TestSignal` body are copied behind the other two's headers.
 *
 * The map's keys and values come from the state hub, which holds only
 * names that may go on the bus (no NUL, no lone surrogate: see the backend
 * registry's checks); they are not checked again here.
 */
import { Buffer } from 'node:buffer';
import { putU32 } from './wire/encoder.js';

/** Methods every Node Buffer has but @types/node does not declare. */
interface FastBuffer extends Buffer {
  utf8Write(value: string, offset: number): number;
}

const VARIANT_SIGNATURE = Buffer.from([5, ...Buffer.from('a{ss}'), 0]);
const PROPERTY_NAME = 'TestProperty';

const align = (n: number, to: number) => (n + to - 1) & ~(to - 1);

/** The encoded bodies of one state map. */
export class StateBodies {
  // Fields declared, not defined, and set in the constructor: one is made
  // on the path of every change, where defined fields cost a call of their
  // own (V8 runs them in an initializer function).
  /** `a{ss}`: [u32 length][4 bytes of padding][entries]. */
  declare readonly testSignal: Buffer;
  declare private readonly encoder: StateBodyEncoder;
  declare private propertiesChangedBody: Buffer | undefined;
  declare private getReplyBody: Buffer | undefined;

  constructor(testSignal: Buffer, encoder: StateBodyEncoder) {
    this.testSignal = testSignal;
    this.encoder = encoder;
    this.propertiesChangedBody = undefined;
    this.getReplyBody = undefined;
  }

  /** `sa{sv}as`; made when first asked for, after the TestSignal has gone out. */
  get propertiesChanged(): Buffer {
    if (this.propertiesChangedBody === undefined)
      this.propertiesChangedBody = this.encoder.propertiesChanged(this.testSignal);
    return this.propertiesChangedBody;
  }

  /** `v`: [signature a{ss}][padding to 4][u32 length][padding to 8][entries]; made at the first Get. */
  get getReply(): Buffer {
    if (this.getReplyBody === undefined) {
      const entries = this.testSignal.subarray(8);
      const body = Buffer.alloc(16 + entries.length);
      VARIANT_SIGNATURE.copy(body, 0);
      body.writeUInt32LE(entries.length, 8);
      entries.copy(body, 16);
      this.getReplyBody = body;
    }
    return this.getReplyBody;
  }
}

/** Encodes state maps for an interface whose `PropertiesChanged` lists `invalidated`. */
export class StateBodyEncoder {
  /** `PropertiesChanged` up to the map's length: the interface, the array's start, TestProperty, the variant's signature. */
  readonly #prefix: Buffer;
  /** Where in the prefix the outer array's length and the map's length go. */
  readonly #outerLengthAt: number;
  readonly #entryAt: number;
  readonly #innerLengthAt: number;
  /** The invalidated list (`as`), from its length on. */
  readonly #list: Buffer;

  constructor(iface: string, invalidated: readonly string[]) {
    const ifaceBytes = Buffer.from(iface);
    this.#outerLengthAt = align(4 + ifaceBytes.length + 1, 4);
    this.#entryAt = align(this.#outerLengthAt + 4, 8);
    const signatureAt = this.#entryAt + 4 + PROPERTY_NAME.length + 1;
    this.#innerLengthAt = align(signatureAt + VARIANT_SIGNATURE.length, 4);
    // Up to the padding after the map's length: the entries start 8-aligned.
    const prefix = Buffer.alloc(align(this.#innerLengthAt + 4, 8));
    prefix.writeUInt32LE(ifaceBytes.length, 0);
    ifaceBytes.copy(prefix, 4);
    prefix.writeUInt32LE(PROPERTY_NAME.length, this.#entryAt);
    prefix.write(PROPERTY_NAME, this.#entryAt + 4, 'latin1');
    VARIANT_SIGNATURE.copy(prefix, signatureAt);
    this.#prefix = prefix;

    const names = invalidated.map((s) => Buffer.from(s));
    let size = 4;
    for (const name of names) size = align(size, 4) + 4 + name.length + 1;
    // Laid out from a 4-aligned start, which is where it goes.
    const list = Buffer.alloc(size);
    let at = 4;
    for (const name of names) {
      at = align(at, 4);
      list.writeUInt32LE(name.length, at);
      name.copy(list, at + 4);
      at += 4 + name.length + 1;
    }
    list.writeUInt32LE(size - 4, 0);
    this.#list = list;
  }

  encode(map: Readonly<Record<string, string>>): StateBodies {
    return new StateBodies(encodeMap(map), this);
  }

  /** The `PropertiesChanged` body around the entries of a `TestSignal` body. */
  propertiesChanged(testSignal: Buffer): Buffer {
    const n = testSignal.length - 8;
    const prefix = this.#prefix;
    const arrayEnd = prefix.length + n;
    const listAt = align(arrayEnd, 4);
    const propertiesChanged = Buffer.allocUnsafe(listAt + this.#list.length);
    propertiesChanged.set(prefix, 0);
    putU32(propertiesChanged, this.#outerLengthAt, arrayEnd - this.#entryAt);
    putU32(propertiesChanged, this.#innerLengthAt, n);
    propertiesChanged.set(testSignal.subarray(8), prefix.length);
    for (let i = arrayEnd; i < listAt; i++) propertiesChanged[i] = 0;
    propertiesChanged.set(this.#list, listAt);
    return propertiesChanged;
  }
}

/*
 * The encoding below runs once per change, and a change mostly comes to a
 * daemon that has been idle: the code runs cold, not yet optimized, with
 * the CPU's caches taken by others meanwhile. So it keeps to what V8 runs
 * itself (typed-array writes and `set`) and leaves Buffer's methods that
 * call into Node's C++ (`fill`, `copy`, `utf8Write`) to names that are not
 * ASCII: a 2-entry map took about a third of the time this way, timed
 * every 50 ms in an otherwise idle process.
 */

/** `a{ss}` of `map`, in one buffer of the size it needs. */
function encodeMap(map: Readonly<Record<string, string>>): Buffer {
  const keys = Object.keys(map);
  // UTF-8 takes at most 3 bytes per UTF-16 unit; each entry at most 7 bytes of padding.
  let bound = 8;
  for (const key of keys) bound += 7 + 4 + 3 * key.length + 1 + 3 + 4 + 3 * map[key]!.length + 1;
  const b = Buffer.allocUnsafe(bound) as FastBuffer;
  let pos = 8;
  for (const key of keys) {
    while ((pos & 7) !== 0) b[pos++] = 0;
    pos = putString(b, pos, key);
    while ((pos & 3) !== 0) b[pos++] = 0;
    pos = putString(b, pos, map[key]!);
  }
  putU32(b, 0, pos - 8);
  putU32(b, 4, 0);
  return b.subarray(0, pos);
}

/** A string at `at` (4-aligned): its length, its UTF-8, NUL. Returns the position after it. */
function putString(b: FastBuffer, at: number, s: string): number {
  const n = s.length;
  let p = at + 4;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) {
      // Not ASCII: Node's encoder, from the start of the string.
      const length = b.utf8Write(s, at + 4);
      putU32(b, at, length);
      b[at + 4 + length] = 0;
      return at + 5 + length;
    }
    b[p++] = c;
  }
  putU32(b, at, n);
  b[p] = 0;
  return p + 1;
}
