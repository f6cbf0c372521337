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
 * A map that differs from the last one in one value only (one VM changed
 * state: the state hub says so) is encoded from the last one's bytes: an
 * entry's layout depends only on its own bytes, as every entry starts
 * 8-aligned, so the entries before and after the changed one are copied as
 * they are. At 10,000 VMs that is a copy of some 300 KB instead of an
 * encoding of 20,000 strings, and no map object is built (`CurrentStateBodies`;
 * `bench/state-change.ts`).
 *
 * The map's keys and values come from the state hub, which holds only
 * names that may go on the bus (no NUL, no lone surrogate: see the backend
 * registry's checks); they are not checked again here.
 */
import { Buffer } from 'node:buffer';
import type { MapPatch } from '../core/state-hub.js';
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
  /** The map's keys in the order of its entries, when it was encoded whole (until `layout` is made from them). */
  declare keys: readonly string[] | undefined;
  /** Where each entry starts: made when a change is first encoded from these bodies. */
  declare layout: EntryLayout | undefined;

  constructor(testSignal: Buffer, encoder: StateBodyEncoder, keys?: readonly string[], layout?: EntryLayout) {
    this.testSignal = testSignal;
    this.encoder = encoder;
    this.propertiesChangedBody = undefined;
    this.getReplyBody = undefined;
    this.keys = keys;
    this.layout = layout;
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

/** The entries of an encoded map: the index of each key, and where each entry starts in the `TestSignal` body. */
interface EntryLayout {
  /** Key → its entry's index; shared by every map of the same keys. */
  readonly index: ReadonlyMap<string, number>;
  /** `starts[i]`: where entry i starts; `starts[n]`: the body's length. */
  readonly starts: Uint32Array;
}

/**
 * A map of fewer bytes (some 60 VMs) is encoded whole even when one value
 * changed: encoding a few strings costs less than finding where they are,
 * and the path of a small host's events stays as it was.
 */
const PATCH_MIN_BYTES = 2048;

/** Where the maps come from (the state hub). */
export interface StateSource {
  /** Changes whenever the map may have changed. */
  readonly version: number;
  /** When the map is that of `version` with one value changed: that key and value. */
  patchSince(version: number): MapPatch | undefined;
  map(): Readonly<Record<string, string>>;
}

/**
 * The bodies of a source's current map, made once per version of it: from
 * the last bodies' bytes when one value changed since, else whole.
 */
export class CurrentStateBodies {
  #version = 0;
  #bodies: StateBodies | undefined;

  constructor(
    private readonly encoder: StateBodyEncoder,
    private readonly source: StateSource,
  ) {}

  get(): StateBodies {
    const version = this.source.version;
    const last = this.#bodies;
    if (last !== undefined && this.#version === version) return last;
    const patch = last === undefined ? undefined : this.source.patchSince(this.#version);
    const bodies =
      (patch === undefined ? undefined : this.encoder.patch(last!, patch.key, patch.value)) ??
      this.encoder.encode(this.source.map());
    this.#version = version;
    this.#bodies = bodies;
    return bodies;
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
    const keys = Object.keys(map);
    return new StateBodies(encodeMap(map, keys), this, keys);
  }

  /**
   * The bodies of the map of `previous` with the value of `key` set to
   * `value`; `undefined` when the map is small (see above) or has no such
   * key.
   */
  patch(previous: StateBodies, key: string, value: string): StateBodies | undefined {
    const old = previous.testSignal;
    let layout = previous.layout;
    if (layout === undefined) {
      if (old.length < PATCH_MIN_BYTES || previous.keys === undefined) return undefined;
      layout = previous.layout = layoutOf(old, previous.keys);
      previous.keys = undefined;
    }
    const i = layout.index.get(key);
    if (i === undefined) return undefined;
    const starts = layout.starts;
    const n = starts.length - 1;
    const start = starts[i]!;
    const end = starts[n]!;
    // The key as it was, up to where its value starts (4-aligned).
    const valueAt = align(start + 4 + getU32(old, start) + 1, 4);
    const tail = i + 1 < n ? old.subarray(starts[i + 1], end) : undefined;
    const b = Buffer.allocUnsafe(valueAt + 4 + 3 * value.length + 1 + 7 + (tail?.length ?? 0)) as FastBuffer;
    b.set(old.subarray(0, valueAt), 0);
    let pos = putString(b, valueAt, value);
    let shift: number;
    if (tail !== undefined) {
      while ((pos & 7) !== 0) b[pos++] = 0;
      shift = pos - starts[i + 1]!;
      b.set(tail, pos);
      pos += tail.length;
    } else {
      shift = pos - end;
    }
    putU32(b, 0, pos - 8);
    let next = starts;
    if (shift !== 0) {
      next = starts.slice();
      for (let j = i + 1; j <= n; j++) next[j] = starts[j]! + shift;
    }
    return new StateBodies(b.subarray(0, pos), this, undefined, { index: layout.index, starts: next });
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

/** `a{ss}` of `map`, whose keys are `keys`, in one buffer of the size it needs. */
function encodeMap(map: Readonly<Record<string, string>>, keys: readonly string[]): Buffer {
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

/** Where each entry of `body` (a `TestSignal` body of a map of `keys`) starts, read off its lengths. */
function layoutOf(body: Buffer, keys: readonly string[]): EntryLayout {
  const index = new Map<string, number>();
  const starts = new Uint32Array(keys.length + 1);
  let pos = 8;
  for (let i = 0; i < keys.length; i++) {
    index.set(keys[i]!, i);
    pos = align(pos, 8);
    starts[i] = pos;
    pos = align(pos + 4 + getU32(body, pos) + 1, 4);
    pos += 4 + getU32(body, pos) + 1;
  }
  starts[keys.length] = pos;
  if (pos !== body.length) throw new Error(`the encoded map ends at ${body.length}, its entries at ${pos}`);
  return { index, starts };
}

function getU32(b: Buffer, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
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
