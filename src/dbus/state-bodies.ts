/**
 * The three messages that carry the state map, encoded from one encoding
 * of it: `TestSignal` (`a{ss}`), the `PropertiesChanged` of `TestProperty`
 * (`sa{sv}as`) and the reply to `Get TestProperty` (`v`). With 10,000 VMs
 * the map is most of the cost of each; encoded once per map, a change costs
 * one encoding, and a `Get` copies bytes.
 *
 * In all three bodies the map's dict entries start 8-aligned (a body starts
 * 8-aligned in its message), so their bytes are the same: the entries of
 * the `TestSignal` body are copied behind the other two's headers.
 */
import { Buffer } from 'node:buffer';
import { encodeBody } from './wire/encoder.js';

export interface StateBodies {
  readonly testSignal: Buffer;
  readonly propertiesChanged: Buffer;
  readonly getReply: Buffer;
}

const VARIANT_SIGNATURE = Buffer.from([5, ...Buffer.from('a{ss}'), 0]);
const PROPERTY_NAME = 'TestProperty';

const align = (n: number, to: number) => (n + to - 1) & ~(to - 1);

/** The bodies for `map`, whose `PropertiesChanged` names `iface` and lists `invalidated`. */
export function encodeStateBodies(
  map: Readonly<Record<string, string>>,
  iface: string,
  invalidated: readonly string[],
): StateBodies {
  // [u32 length][4 bytes of padding][entries]
  const testSignal = encodeBody('a{ss}', [map]);
  const entries = testSignal.subarray(8);
  const n = entries.length;

  // v: [signature a{ss}][padding to 4][u32 length][padding to 8][entries]
  const getReply = Buffer.alloc(16 + n);
  VARIANT_SIGNATURE.copy(getReply, 0);
  getReply.writeUInt32LE(n, 8);
  entries.copy(getReply, 16);

  // s, a{sv} holding one entry (TestProperty: v a{ss}), as.
  const ifaceBytes = Buffer.from(iface);
  const names = invalidated.map((s) => Buffer.from(s));
  const outerLengthAt = align(4 + ifaceBytes.length + 1, 4);
  const entryAt = align(outerLengthAt + 4, 8);
  const signatureAt = entryAt + 4 + PROPERTY_NAME.length + 1;
  const innerLengthAt = align(signatureAt + VARIANT_SIGNATURE.length, 4);
  const entriesAt = align(innerLengthAt + 4, 8);
  const arrayEnd = entriesAt + n;
  const listAt = align(arrayEnd, 4);
  let end = listAt + 4;
  const nameAt: number[] = [];
  for (const name of names) {
    end = align(end, 4);
    nameAt.push(end);
    end += 4 + name.length + 1;
  }
  const propertiesChanged = Buffer.alloc(end);
  propertiesChanged.writeUInt32LE(ifaceBytes.length, 0);
  ifaceBytes.copy(propertiesChanged, 4);
  propertiesChanged.writeUInt32LE(arrayEnd - entryAt, outerLengthAt);
  propertiesChanged.writeUInt32LE(PROPERTY_NAME.length, entryAt);
  propertiesChanged.write(PROPERTY_NAME, entryAt + 4, 'latin1');
  VARIANT_SIGNATURE.copy(propertiesChanged, signatureAt);
  propertiesChanged.writeUInt32LE(n, innerLengthAt);
  entries.copy(propertiesChanged, entriesAt);
  propertiesChanged.writeUInt32LE(end - (listAt + 4), listAt);
  names.forEach((name, i) => {
    propertiesChanged.writeUInt32LE(name.length, nameAt[i]);
    name.copy(propertiesChanged, nameAt[i]! + 4);
  });
  return { testSignal, propertiesChanged, getReply };
}
