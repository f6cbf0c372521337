/**
 * Seeded random D-Bus data for the fuzzer: names, strings, type
 * signatures and values of any type, in the form dbus-next's low-level
 * marshaller writes (structs and dict entries as arrays, variants as
 * [signature, value], 64-bit integers as BigInt). Everything generated
 * is a valid D-Bus message part, so the bus forwards it: the daemon, not
 * the bus, has to cope with it.
 */

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export class Random {
  private state: number;
  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  /** Picks a key by weight. */
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = Object.entries(weights) as Array<[K, number]>;
    let x = this.next() * entries.reduce((s, [, w]) => s + w, 0);
    for (const [k, w] of entries) if ((x -= w) < 0) return k;
    return entries[entries.length - 1]![0];
  }
}

const LABEL_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-';
const NAME_START = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_';
const NAME_CHARS = NAME_START + '0123456789';
/** Characters that are valid in D-Bus strings but interesting to a parser. */
const ODD = [
  '=',
  ',',
  ' ',
  '\t',
  '\n',
  '\r',
  '"',
  "'",
  '<',
  '>',
  '&',
  '\\',
  '/',
  '%',
  '$',
  '{',
  '}',
  '\u00e9',
  '\u00df',
  '\u0301',
  '\u200b',
  '\u202e',
  '\ufeff',
  '\ud83d\ude00',
  '\u4e2d',
  '\u0628',
  '\u{10fffd}',
  '\x7f',
  '\x01',
];

export function chars(r: Random, alphabet: string, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += alphabet[Math.floor(r.next() * alphabet.length)];
  return s;
}

/** A string of any valid UTF-8 (no NUL), of a length chosen by `size`. */
export function randomString(r: Random, maxLength = 40): string {
  const length = r.chance(0.05) ? 0 : r.int(1, maxLength);
  let s = '';
  while (s.length < length) {
    const k = r.next();
    if (k < 0.55) s += LABEL_CHARS[Math.floor(r.next() * LABEL_CHARS.length)];
    else if (k < 0.85) s += r.pick(ODD);
    else s += String.fromCodePoint(r.chance(0.5) ? r.int(0x20, 0xd7ff) : r.int(0xe000, 0xfffd));
  }
  return s;
}

/** A string of `bytes` bytes or so, for the size limits. */
export function hugeString(r: Random, bytes: number): string {
  const unit = r.pick(['a', 'type=disk,', '\u00e9', '\ud83d\ude00', randomString(r, 16) || 'x']);
  return unit.repeat(Math.max(1, Math.floor(bytes / Buffer.byteLength(unit))));
}

export function memberName(r: Random): string {
  return NAME_START[r.int(0, NAME_START.length - 1)]! + chars(r, NAME_CHARS, r.int(0, r.chance(0.02) ? 200 : 20));
}

export function interfaceName(r: Random): string {
  const parts = r.int(2, 5);
  return Array.from({ length: parts }, () => memberName(r).slice(0, 30)).join('.');
}

export function objectPath(r: Random): string {
  if (r.chance(0.1)) return '/';
  const parts = r.int(1, 6);
  return '/' + Array.from({ length: parts }, () => chars(r, NAME_CHARS, r.int(1, 12))).join('/');
}

const BASIC = ['y', 'b', 'n', 'q', 'i', 'u', 'x', 't', 'd', 's', 'o', 'g'];
/** Container depth the D-Bus reference bus accepts: 32 arrays, 32 structs, 64 in all with variants. */
export const MAX_ARRAY_DEPTH = 32;
export const MAX_TOTAL_DEPTH = 64;

interface Depth {
  arrays: number;
  structs: number;
  total: number;
}

/** One complete type, within the depth limits and `maxLength` characters. */
export function randomType(r: Random, depth: Depth = { arrays: 0, structs: 0, total: 0 }, maxLength = 60): string {
  const room = maxLength;
  const kind =
    depth.total >= 8 || room < 6 ? 'basic' : r.weighted({ basic: 5, array: 2, dict: 1.5, struct: 1.2, variant: 1.5 });
  switch (kind) {
    case 'basic':
      return r.pick(BASIC);
    case 'variant':
      return 'v';
    case 'array':
      return 'a' + randomType(r, { ...depth, arrays: depth.arrays + 1, total: depth.total + 1 }, room - 1);
    case 'dict': {
      const key = r.pick(BASIC);
      return `a{${key}${randomType(r, { ...depth, arrays: depth.arrays + 1, total: depth.total + 2 }, room - 4)}}`;
    }
    case 'struct': {
      // A struct has at least one field.
      const inside = { ...depth, structs: depth.structs + 1, total: depth.total + 1 };
      let inner = randomType(r, inside, room - 2);
      const n = r.int(1, 4);
      for (let i = 1; i < n && inner.length < room - 8; i++) inner += randomType(r, inside, room - 2 - inner.length);
      return `(${inner})`;
    }
  }
}

/** A signature of several complete types (a message body's). */
export function randomSignature(r: Random, maxTypes = 4): string {
  let sig = '';
  const n = r.int(0, maxTypes);
  for (let i = 0; i < n; i++) sig += randomType(r, undefined, 200 - sig.length);
  return sig;
}

/** Splits a signature into its complete types. */
export function splitTypes(sig: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < sig.length) {
    const start = i;
    let depth = 0;
    do {
      const c = sig[i++]!;
      if (c === '(' || c === '{') depth++;
      else if (c === ')' || c === '}') depth--;
      else if (c === 'a') continue;
    } while (depth > 0 || sig[i - 1] === 'a');
    out.push(sig.slice(start, i));
  }
  return out;
}

export interface ValueOptions {
  /** Longest array or dict generated (before the occasional huge one). */
  maxItems: number;
  /** Remaining nesting for values inside variants. */
  variantDepth: number;
  /** Chance that an array of bytes or a string is huge (tens of kilobytes). */
  hugeChance: number;
}

const DEFAULT_VALUES: ValueOptions = { maxItems: 4, variantDepth: 6, hugeChance: 0.002 };

/** A value of the complete type `type`, in the marshaller's low-level form. */
export function randomValue(r: Random, type: string, options: ValueOptions = DEFAULT_VALUES, total = 0): unknown {
  const c = type[0]!;
  switch (c) {
    case 'y':
      return r.int(0, 255);
    case 'b':
      return r.chance(0.5);
    case 'n':
      return r.int(-32768, 32767);
    case 'q':
      return r.int(0, 65535);
    case 'i':
      return r.pick([0, -1, 2147483647, -2147483648, r.int(-1000, 1000)]);
    case 'u':
      return r.pick([0, 4294967295, r.int(0, 100000)]);
    case 'x':
      return r.pick([0n, -1n, 9223372036854775807n, -9223372036854775807n, BigInt(r.int(-1e6, 1e6))]);
    case 't':
      return r.pick([0n, 18446744073709551615n, BigInt(r.int(0, 1e6))]);
    case 'd':
      // dbus-next cannot send NaN or infinities.
      return r.pick([0, -0, 1.5, Number.MAX_VALUE, -Number.MAX_VALUE, Number.MIN_VALUE, r.next() * 1e9]);
    case 's':
      return r.chance(options.hugeChance) ? hugeString(r, r.int(10_000, 200_000)) : randomString(r);
    case 'o':
      return objectPath(r);
    case 'g':
      return randomSignature(r, 3);
    case 'v': {
      if (options.variantDepth <= 0 || total >= MAX_TOTAL_DEPTH - 12) return ['s', randomString(r)];
      const inner = randomType(r, { arrays: 0, structs: 0, total: Math.max(total, 0) + 1 }, 40);
      return [
        inner,
        randomValue(r, inner, { ...options, variantDepth: options.variantDepth - 1 }, total + 1 + depthOf(inner)),
      ];
    }
    case 'a': {
      const elem = type.slice(1);
      if (elem === 'y') {
        const n = r.chance(options.hugeChance) ? r.int(10_000, 500_000) : r.int(0, 64);
        // Mostly bytes that are not UTF-8 on their own.
        return Array.from({ length: n }, () => (r.chance(0.7) ? r.int(0x80, 0xff) : r.int(0, 0x7f)));
      }
      const n = r.int(0, options.maxItems);
      if (elem[0] === '{') {
        const [k, v] = splitTypes(elem.slice(1, -1));
        return Array.from({ length: n }, () => [
          randomValue(r, k!, options, total + 2),
          randomValue(r, v!, options, total + 2),
        ]);
      }
      return Array.from({ length: n }, () => randomValue(r, elem, options, total + 1));
    }
    case '(':
      return splitTypes(type.slice(1, -1)).map((t) => randomValue(r, t, options, total + 1));
    default:
      throw new Error(`randomValue: unknown type ${type}`);
  }
}

function depthOf(type: string): number {
  let depth = 0;
  let max = 0;
  for (const c of type) {
    if (c === 'a' || c === '(' || c === '{') max = Math.max(max, ++depth);
    if (c === ')' || c === '}') depth--;
    if (c !== 'a' && c !== '(' && c !== '{') {
      // an array's depth ends with its element
    }
  }
  return max;
}

export function randomBody(r: Random, signature: string, options?: ValueOptions): unknown[] {
  return splitTypes(signature).map((t) => randomValue(r, t, options));
}

/** Variants nested `depth` deep around a string. */
export function nestedVariants(depth: number): unknown {
  let value: unknown = ['s', 'deep'];
  for (let i = 1; i < depth; i++) value = ['v', value];
  return value;
}

/** `depth` arrays nested around one string: its type and value. */
export function nestedArrays(depth: number): { type: string; value: unknown } {
  let value: unknown = ['deep'];
  for (let i = 1; i < depth; i++) value = [value];
  return { type: 'a'.repeat(depth) + 's', value };
}
