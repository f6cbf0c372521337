/**
 * D-Bus type signatures, parsed once into trees the encoder and decoder walk.
 *
 * Validation follows the specification (dbus-next's own parser accepts
 * anything made of known letters, such as `a{sss}` or `m`): only the type
 * codes of the spec, `{..}` only right after `a` with a basic key and one
 * value, no empty struct, at most 255 bytes, at most 32 nested arrays and 32
 * nested structs.
 */

/** One complete type. */
export interface TypeNode {
  /** Its type code as a character: `y b n q i u x t d s o g h v a ( {`. */
  readonly type: string;
  /** The signature of this complete type, e.g. `a{sv}`. */
  readonly signature: string;
  /** Alignment of its marshalled form: 1, 2, 4 or 8. */
  readonly align: number;
  /** `a`: the element; `(`: the members; `{`: key and value. */
  readonly children: readonly TypeNode[];
}

export class SignatureError extends Error {
  override readonly name = 'SignatureError';
}

export const MAX_SIGNATURE_LENGTH = 255;
/** Nested arrays, and separately nested structs, in one signature (dict entries are bounded by their arrays). */
export const MAX_CONTAINER_DEPTH = 32;

const ALIGN: Record<string, number> = {
  y: 1,
  g: 1,
  v: 1,
  n: 2,
  q: 2,
  b: 4,
  i: 4,
  u: 4,
  h: 4,
  s: 4,
  o: 4,
  a: 4,
  x: 8,
  t: 8,
  d: 8,
  '(': 8,
  '{': 8,
};
const BASIC = new Set(['y', 'b', 'n', 'q', 'i', 'u', 'x', 't', 'd', 's', 'o', 'g', 'h']);

/**
 * Parsed signatures are kept: a connection sees the same few again and again.
 * Variant signatures come from the peer, so the cache is bounded; when full it
 * starts over (cheap, and the working set refills it at once).
 */
const CACHE_LIMIT = 1024;
const cache = new Map<string, readonly TypeNode[]>();

/** The complete types of a signature (empty for `''`); throws SignatureError. */
export function parseSignature(signature: string): readonly TypeNode[] {
  let types = cache.get(signature);
  if (types === undefined) {
    types = parse(signature);
    if (cache.size >= CACHE_LIMIT) cache.clear();
    cache.set(signature, types);
  }
  return types;
}

/** Exactly one complete type, as a variant's signature must be. */
export function parseSingleType(signature: string): TypeNode {
  const types = parseSignature(signature);
  if (types.length !== 1)
    throw new SignatureError(`a variant's signature must be one complete type, not ${JSON.stringify(signature)}`);
  return types[0]!;
}

function parse(signature: string): readonly TypeNode[] {
  if (typeof signature !== 'string') throw new SignatureError(`a signature must be a string, not ${typeof signature}`);
  if (signature.length > MAX_SIGNATURE_LENGTH)
    throw new SignatureError(`signature longer than ${MAX_SIGNATURE_LENGTH} characters`);
  let pos = 0;
  const fail = (why: string): never => {
    throw new SignatureError(`invalid signature ${JSON.stringify(signature)}: ${why} at position ${pos}`);
  };

  const one = (arrays: number, structs: number): TypeNode => {
    const start = pos;
    const c = signature[pos++];
    if (c === undefined) return fail('a type is missing');
    if (BASIC.has(c) || c === 'v') return { type: c, signature: c, align: ALIGN[c]!, children: [] };
    if (c === 'a') {
      if (arrays + 1 > MAX_CONTAINER_DEPTH) fail(`more than ${MAX_CONTAINER_DEPTH} nested arrays`);
      let child: TypeNode;
      if (signature[pos] === '{') {
        pos++;
        const key = one(arrays + 1, structs);
        if (!BASIC.has(key.type)) fail('a dict key must be a basic type');
        const value = one(arrays + 1, structs);
        if (signature[pos] !== '}') fail('a dict entry has exactly one key and one value');
        pos++;
        child = { type: '{', signature: signature.slice(start + 1, pos), align: 8, children: [key, value] };
      } else {
        child = one(arrays + 1, structs);
      }
      return { type: 'a', signature: signature.slice(start, pos), align: 4, children: [child] };
    }
    if (c === '(') {
      if (structs + 1 > MAX_CONTAINER_DEPTH) fail(`more than ${MAX_CONTAINER_DEPTH} nested structs`);
      const members: TypeNode[] = [];
      while (signature[pos] !== ')') {
        if (pos >= signature.length) fail('a struct is not closed');
        members.push(one(arrays, structs + 1));
      }
      if (members.length === 0) fail('an empty struct');
      pos++;
      return { type: '(', signature: signature.slice(start, pos), align: 8, children: members };
    }
    pos = start;
    return fail(c === '{' ? 'a dict entry outside an array' : `unexpected ${JSON.stringify(c)}`);
  };

  const types: TypeNode[] = [];
  while (pos < signature.length) types.push(one(0, 0));
  return types;
}

/** An object path: `/`, or `/`-separated non-empty elements of `[A-Za-z0-9_]`. */
export function isObjectPath(value: string): boolean {
  return OBJECT_PATH.test(value);
}
const OBJECT_PATH = /^\/(?:[A-Za-z0-9_]+(?:\/[A-Za-z0-9_]+)*)?$/;

/** A bus name as the spec has it: a unique name (`:1.42`) or a well-known one (`org.example.dbustest`). */
export function isBusName(value: string): boolean {
  return value.length <= 255 && (value.startsWith(':') ? UNIQUE_NAME.test(value) : WELL_KNOWN_NAME.test(value));
}
const UNIQUE_NAME = /^:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+$/;
const WELL_KNOWN_NAME = /^[A-Za-z_-][A-Za-z0-9_-]*(?:\.[A-Za-z_-][A-Za-z0-9_-]*)+$/;

/** An interface or error name as the spec has it: two or more elements, none starting with a digit. */
export function isInterfaceName(value: string): boolean {
  return value.length <= 255 && INTERFACE_NAME.test(value);
}
const INTERFACE_NAME = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$/;
