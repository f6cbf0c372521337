/**
 * The wire codec against dbus-next's own: the same bytes out, the same
 * Message objects in, the same refusals; malformed input is a DecodeError,
 * never a crash or a hang; framing works at every split.
 *
 * The random part prints its seed; rerun one with WIRE_SEED=<seed>.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import dbus from 'dbus-next';
import { decodeMessage, DecodeError, MessageFramer, messageLength } from '../../src/dbus/wire/decoder.js';
import {
  encodeBody,
  encodeMessage,
  encodeMessageInto,
  EncodeError,
  SignalTemplate,
  WireWriter,
} from '../../src/dbus/wire/encoder.js';
import { parseSignature, SignatureError, type TypeNode } from '../../src/dbus/wire/signature.js';

const { Message, Variant } = dbus;
type Message = dbus.Message;
const require = createRequire(import.meta.url);
const { marshallMessage, messageToJsFmt } = require('dbus-next/lib/marshall-compat.js') as {
  marshallMessage: (msg: unknown) => [Buffer, unknown[]];
  messageToJsFmt: (msg: unknown) => Record<string, unknown>;
};
const { unmarshalMessages } = require('dbus-next/lib/message.js') as {
  unmarshalMessages: (stream: NodeJS.ReadableStream, onMessage: (m: unknown) => void, opts: object) => void;
};

type Fields = Record<string, unknown>;

/** dbus-next's bytes; its marshaller rewrites the message's body, so it gets a fresh Message. */
function theirBytes(fields: Fields): Buffer {
  const msg = new Message(fields);
  if (fields['serial'] !== undefined) msg.serial = fields['serial'] as number;
  return marshallMessage(msg)[0];
}

function ourBytes(fields: Fields): Buffer {
  const msg = new Message(fields);
  if (fields['serial'] !== undefined) msg.serial = fields['serial'] as number;
  return encodeMessage(msg);
}

/** dbus-next's connection path: unmarshalMessages, messageToJsFmt, new Message. */
async function theirDecode(bytes: Buffer): Promise<Message[]> {
  const stream = new PassThrough();
  const out: Message[] = [];
  unmarshalMessages(stream, (m) => out.push(new Message(messageToJsFmt(m))), {});
  stream.write(bytes);
  await new Promise((r) => setImmediate(r));
  return out;
}

/** Decodes a stream; a message that does not decode throws here (the framer itself skips it). */
function ourDecode(bytes: Buffer): Message[] {
  const out: Message[] = [];
  const strict = new MessageFramer(undefined, undefined, (_header, err) => {
    throw err;
  });
  strict.push(bytes, (m) => out.push(m));
  return out;
}

function decodeOne(bytes: Buffer): Message | undefined {
  return decodeMessage(bytes, 0, messageLength(bytes, 0));
}

const PATH = '/org/example/dbustest';
const IFACE = 'org.example.dbustest.Module';

function reply(signature: string, body: unknown[], serial = 7): Fields {
  return { type: 2, serial, replySerial: 3, destination: ':1.42', signature, body };
}

async function assertSame(fields: Fields, what = JSON.stringify(fields['signature'])): Promise<void> {
  const ours = ourBytes(fields);
  const theirs = theirBytes(fields);
  assert.ok(
    ours.equals(theirs),
    `${what}: bytes differ\nours:   ${ours.toString('hex')}\ntheirs: ${theirs.toString('hex')}`,
  );
  const [mine] = ourDecode(ours);
  const [reference] = await theirDecode(theirs);
  assert.deepStrictEqual(mine, reference, `${what}: decoded messages differ`);
}

// ---- a seeded generator of signatures and values ----------------------------

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Gen {
  constructor(readonly rnd: () => number) {}
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.rnd() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(0, xs.length - 1)]!;
  }
  chance(p: number): boolean {
    return this.rnd() < p;
  }

  /** Dict keys are object keys, so only key types dbus-next can marshal from a string. */
  type(depth: number): string {
    const basic = ['y', 'b', 'n', 'q', 'i', 'u', 'x', 't', 'd', 's', 'o', 'g'];
    if (depth >= 4 || this.chance(0.5)) return this.pick(basic);
    switch (this.int(0, 3)) {
      case 0:
        return 'v';
      case 1:
        return `a${this.type(depth + 1)}`;
      case 2:
        return `a{${this.pick(['s', 'o', 'g', 'x', 't'])}${this.type(depth + 1)}}`;
      default: {
        let s = '(';
        for (let n = this.int(1, 4); n > 0; n--) s += this.type(depth + 1);
        return `${s})`;
      }
    }
  }

  signature(maxTypes: number): string {
    for (;;) {
      let s = '';
      for (let n = this.int(0, maxTypes); n > 0; n--) s += this.type(0);
      if (s.length <= 255) return s;
    }
  }

  string(): string {
    const alphabet = ['a', 'Z', '0', '_', ' ', '.', '/', '=', 'é', '中', '😀', '\u00ff', '\u07ff', '\uffff', '\t'];
    const n = this.chance(0.05) ? this.int(100, 400) : this.int(0, 12);
    let s = '';
    for (let i = 0; i < n; i++) s += this.pick(alphabet);
    return s;
  }

  path(): string {
    if (this.chance(0.2)) return '/';
    let p = '';
    for (let n = this.int(1, 4); n > 0; n--) p += `/${this.pick(['a', 'org', 'x_1', 'B9', 'dbustest'])}`;
    return p;
  }

  bigint(signed: boolean): bigint {
    const hi = BigInt(this.int(0, 0xffffffff));
    const lo = BigInt(this.int(0, 0xffffffff));
    const u = (hi << 32n) | lo;
    const n = signed ? BigInt.asIntN(64, u) : u;
    return n === -(2n ** 63n) ? n + 1n : n; // dbus-next refuses the smallest int64
  }

  value(t: TypeNode, depth = 0): unknown {
    switch (t.type) {
      case 'y':
        return this.int(0, 255);
      case 'b':
        return this.chance(0.1) ? this.int(0, 1) : this.chance(0.5);
      case 'n':
        return this.pick([-32768, 32767, 0, this.int(-32768, 32767)]);
      case 'q':
        return this.pick([0, 65535, this.int(0, 65535)]);
      case 'i':
        return this.pick([-0x80000000, 0x7fffffff, -1, this.int(-0x80000000, 0x7fffffff)]);
      case 'u':
        return this.pick([0, 0xffffffff, this.int(0, 0xffffffff)]);
      case 'x':
      case 't': {
        const n = this.bigint(t.type === 'x');
        const r = this.int(0, 9);
        if (r === 0) return Number(BigInt.asIntN(48, n)) * (t.type === 'x' ? 1 : 0) + this.int(0, 1000);
        if (r === 1) return n.toString();
        return n;
      }
      case 'd':
        return this.pick([
          0,
          -0,
          1.5,
          -2.25,
          Number.MAX_VALUE,
          Number.MIN_VALUE,
          (this.rnd() - 0.5) * 1e12,
          this.rnd(),
        ]);
      case 's':
        return this.string();
      case 'o':
        return this.path();
      case 'g':
        return this.signature(3);
      case 'v': {
        const inner = parseSignature(this.type(Math.min(4, depth + 1)))[0]!;
        return new Variant(inner.signature, this.value(inner, depth + 1));
      }
      case '(':
        return t.children.map((c) => this.value(c, depth + 1));
      case 'a': {
        const el = t.children[0]!;
        const n = this.chance(0.3) ? 0 : this.int(1, depth > 2 ? 2 : 5);
        if (el.type === 'y') {
          const bytes = Array.from({ length: n * 3 }, () => this.int(0, 255));
          return this.chance(0.5) ? Buffer.from(bytes) : bytes;
        }
        if (el.type === '{') {
          const [kt, vt] = el.children as [TypeNode, TypeNode];
          const obj: Record<string, unknown> = {};
          for (let i = 0; i < n; i++) {
            const key =
              kt.type === 'x' || kt.type === 't' ? this.bigint(kt.type === 'x').toString() : String(this.value(kt));
            if (key === '__proto__') continue;
            obj[key] = this.value(vt, depth + 2);
          }
          return obj;
        }
        return Array.from({ length: n }, () => this.value(el, depth + 1));
      }
      default:
        throw new Error(`no generator for ${t.signature}`);
    }
  }

  message(): Fields {
    const signature = this.signature(4);
    const body = parseSignature(signature).map((t) => this.value(t));
    const type = this.int(1, 4);
    const fields: Fields = { type, serial: this.int(1, 0xffffffff), flags: this.int(0, 7), signature, body };
    if (type === 1 || type === 4) {
      fields['path'] = this.path();
      fields['member'] = this.pick(['TestMethod', 'Get', 'X_1']);
    }
    if (type === 4 || this.chance(0.5)) fields['interface'] = this.pick([IFACE, 'org.freedesktop.DBus.Properties']);
    if (type === 2 || type === 3) fields['replySerial'] = this.int(1, 0xffffffff);
    if (type === 3) fields['errorName'] = 'org.example.dbustest.Error.Failed';
    if (this.chance(0.7)) fields['destination'] = this.pick([':1.42', 'org.example.dbustest', ':1.7000']);
    if (this.chance(0.3)) fields['sender'] = this.pick([':1.1', 'org.freedesktop.DBus']);
    return fields;
  }
}

describe('wire codec: the same bytes and messages as dbus-next', () => {
  it('every basic type, at its limits', async () => {
    await assertSame(reply('b', [true]));
    await assertSame(reply('b', [false]));
    await assertSame(reply('b', [1]));
    await assertSame(
      reply('ybnqiuxtd', [
        255,
        true,
        -32768,
        65535,
        -0x80000000,
        0xffffffff,
        -(2n ** 63n) + 1n,
        2n ** 64n - 1n,
        -1.5e300,
      ]),
    );
    // dbus-next refuses the smallest int64 (its minimum is off by one); it is valid D-Bus.
    assert.deepEqual(decodeOne(ourBytes(reply('x', [-(2n ** 63n)])))?.body, [-(2n ** 63n)]);
    await assertSame(
      reply('ynyqyiyuyxytyd', [1, 32767, 2, 0, 3, 0x7fffffff, 4, 0, 5, 2n ** 63n - 1n, 6, 0n, 7, Number.MIN_VALUE]),
    );
    await assertSame(reply('xtxt', [5, 6, '-7', '8']), 'x and t from numbers and decimal strings');
    await assertSame(reply('d', [-0]), '-0 is written as 0, as dbus-next does');
    await assertSame(reply('sog', ['', '/', '']));
    await assertSame(reply('sog', ['héllo 中文 😀', '/org/example/x_1', 'a{sv}(iii)']));
    await assertSame(reply('s', [Buffer.from('from a buffer')]));
  });

  it('header fields: every kind of message, plain objects, flags', async () => {
    await assertSame(
      {
        type: 1,
        serial: 1,
        path: PATH,
        interface: IFACE,
        member: 'TestMethod',
        destination: 'org.example.dbustest',
        flags: 1,
      },
      'a call without body',
    );
    await assertSame({
      type: 4,
      serial: 2,
      path: PATH,
      interface: IFACE,
      member: 'DeviceDetached',
      signature: 'ss',
      body: ['vm1', 'd1'],
    });
    await assertSame({
      type: 3,
      serial: 3,
      replySerial: 9,
      destination: ':1.1',
      errorName: 'org.example.dbustest.Error.Failed',
      signature: 's',
      body: ['no'],
    });
    await assertSame({ type: 2, serial: 4, replySerial: 1, destination: ':1.1', sender: 'org.freedesktop.DBus' });
    // dbus-next's Peer.Ping handler sends a plain object, not a Message.
    const plain = { type: 2, serial: 8, replySerial: 5, destination: ':1.9' };
    assert.ok(encodeMessage(plain).equals(marshallMessage({ ...plain })[0]));
  });

  it('containers: nesting, empty arrays, alignment, variants in variants', async () => {
    await assertSame(
      reply('sa{sas}', [
        'vm-0000',
        { d1: ['type=usb', 'vendor=0x1234', 'product=0x5678'], d2: ['type=disk', 'target=vdb'] },
      ]),
    );
    await assertSame(reply('at', [[]]), 'empty array of 8-aligned elements is padded');
    await assertSame(reply('yat', [1, []]));
    await assertSame(reply('ya(y)', [1, []]));
    await assertSame(reply('ya{sv}', [1, {}]));
    await assertSame(reply('ya{yv}', [1, {}]), 'an empty dict of any key type');
    await assertSame(
      reply('ya(yt)', [
        1,
        [
          [1, 2n],
          [3, 4n],
        ],
      ]),
      'structs in an array are 8-aligned',
    );
    await assertSame(reply('ya{st}', [1, { a: 1n, bb: 2n, ccc: 3n }]), 'dict entries are 8-aligned');
    await assertSame(
      reply('aayaaay', [
        [Buffer.alloc(0), [1, 2, 3]],
        [[], [Buffer.from('xy')]],
      ]),
    );
    await assertSame(reply('(ybnq(iu(xt)))', [[1, false, -1, 2, [3, 4, [5n, 6n]]]]));
    await assertSame(
      reply('v', [
        new Variant('v', new Variant('v', new Variant('a{sv}', { k: new Variant('ay', Buffer.from([9])) }))),
      ]),
    );
    await assertSame(reply('av', [[new Variant('s', 'x'), new Variant('(id)', [1, 2.5]), new Variant('at', [])]]));
    await assertSame(
      reply('a{sv}', [{ TestProperty: new Variant('a{ss}', { vm1: 'running' }), Backends: new Variant('a{ss}', {}) }]),
    );
    await assertSame(reply('ay', [new Uint8Array([1, 2, 250])]), 'ay from a Uint8Array');
  });

  it('long strings and big maps', async () => {
    await assertSame(reply('s', ['x'.repeat(200_000)]));
    await assertSame(reply('s', ['é中😀'.repeat(30_000)]));
    const map: Record<string, string> = {};
    for (let i = 0; i < 10_000; i++) map[`vm-${String(i).padStart(5, '0')}`] = i % 2 ? 'running' : 'paused';
    await assertSame(reply('v', [new Variant('a{ss}', map)]));
    await assertSame(reply('ay', [Buffer.alloc(1 << 20, 7)]));
  });

  it('random signatures and values (seeded)', async (t) => {
    const seed = Number(process.env['WIRE_SEED'] ?? Date.now() % 0x7fffffff);
    t.diagnostic(`WIRE_SEED=${seed}`);
    console.log(`wire-codec random cases: WIRE_SEED=${seed}`);
    const gen = new Gen(mulberry32(seed));
    const cases: Fields[] = [];
    for (let i = 0; i < 4000; i++) cases.push(gen.message());
    const ours: Buffer[] = [];
    const theirs: Buffer[] = [];
    for (const [i, fields] of cases.entries()) {
      const a = ourBytes(fields);
      const b = theirBytes(fields);
      assert.ok(
        a.equals(b),
        `case ${i} (seed ${seed}), signature ${JSON.stringify(fields['signature'])}: bytes differ\nours:   ${a.toString('hex')}\ntheirs: ${b.toString('hex')}`,
      );
      ours.push(a);
      theirs.push(b);
    }
    // Decode everything as one stream, both ways.
    const mine = ourDecode(Buffer.concat(ours));
    const reference = await theirDecode(Buffer.concat(theirs));
    assert.equal(mine.length, cases.length);
    assert.equal(reference.length, cases.length);
    for (let i = 0; i < cases.length; i++)
      assert.deepStrictEqual(mine[i], reference[i], `case ${i} (seed ${seed}): decoded messages differ`);
  });

  it('a body encoded beforehand (rawBody) gives the same bytes as encoding it in place', () => {
    const map: Record<string, string> = {};
    for (let i = 0; i < 300; i++) map[`vm-${i}`] = i % 3 ? 'running' : 'paused';
    for (const [signature, body] of [
      ['v', [new dbus.Variant('a{ss}', map)]],
      ['a{ss}', [map]],
      ['sa{sv}as', ['x', { TestProperty: new dbus.Variant('a{ss}', map) }, ['Vms']]],
    ] as Array<[string, unknown[]]>) {
      for (const sender of [':1.1', ':1.123456', undefined]) {
        const msg = { type: 2, serial: 9, replySerial: 4, destination: ':1.77', sender, signature, body };
        assert.deepEqual(
          encodeMessage({ ...msg, rawBody: encodeBody(signature, body) }),
          encodeMessage(msg),
          `${signature} from ${sender}`,
        );
      }
    }
  });

  it('a signal from a template is the bytes of the same signal encoded whole', () => {
    const fields = { path: '/org/example/dbustest', interface: 'org.example.dbustest.Module', member: 'TestSignal' };
    const template = new SignalTemplate({ ...fields, signature: 'a{ss}' });
    for (const n of [0, 1, 3, 2000]) {
      const map = Object.fromEntries(Array.from({ length: n }, (_, i) => [`vm-${i}`, i % 2 ? 'paused' : 'running']));
      const body = encodeBody('a{ss}', [map]);
      for (const serial of [1, 77, 0xffffffff]) {
        const whole = encodeMessage({ type: 4, serial, ...fields, signature: 'a{ss}', body: [map] });
        assert.deepEqual(template.message(serial, body), whole, `${n} entries, serial ${serial}`);
        assert.deepEqual(Buffer.concat([template.header(serial, body.length), body]), whole);
      }
    }
    assert.throws(() => new SignalTemplate({ ...fields, signature: 'a{s' }), /signature/i);
    assert.throws(() => new SignalTemplate({ ...fields, path: 'no/slash', signature: 's' }), /object path/);
  });

  it('big-endian messages decode as their little-endian twins', () => {
    const gen = new Gen(mulberry32(42));
    for (let i = 0; i < 500; i++) {
      const fields = gen.message();
      const le = ourBytes(fields);
      const be = toBigEndian(le);
      assert.equal(be[0], 0x42);
      assert.deepStrictEqual(decodeOne(be), decodeOne(le), `case ${i}: ${String(fields['signature'])}`);
    }
  });
});

describe('wire codec: refusals', () => {
  function bothThrow(fields: Fields, why: string): void {
    assert.throws(() => theirBytes(fields), `dbus-next accepts ${why}`);
    assert.throws(
      () => ourBytes(fields),
      (err: unknown) => err instanceof EncodeError || err instanceof SignatureError,
      `we accept ${why}`,
    );
  }

  it('throws where dbus-next throws', () => {
    bothThrow(reply('ss', ['one']), 'too few body elements');
    bothThrow(reply('s', ['one', 'two']), 'too many body elements');
    bothThrow(reply('', ['x']), 'a body without signature');
    bothThrow(reply('u', ['1']), 'a string for u');
    bothThrow(reply('u', [-1]), 'a negative u');
    bothThrow(reply('u', [2 ** 32]), 'u out of range');
    bothThrow(reply('i', [2 ** 31]), 'i out of range');
    bothThrow(reply('n', [1.5]), 'a fraction for n');
    bothThrow(reply('y', [256]), 'y out of range');
    bothThrow(reply('q', [null]), 'null for q');
    bothThrow(reply('b', ['yes']), 'a string for b');
    bothThrow(reply('b', [2]), '2 for b');
    bothThrow(reply('d', [Number.NaN]), 'NaN');
    bothThrow(reply('d', [Infinity]), 'Infinity');
    bothThrow(reply('d', ['1']), 'a string for d');
    bothThrow(reply('x', [2n ** 63n]), 'x out of range');
    bothThrow(reply('t', [-1n]), 'negative t');
    bothThrow(reply('x', [1.5]), 'a fraction for x');
    bothThrow(reply('x', [{}]), 'an object for x');
    bothThrow(reply('s', [5]), 'a number for s');
    bothThrow(reply('s', ['a\0b']), 'a NUL in a string');
    bothThrow(reply('s', [undefined]), 'undefined');
    bothThrow(reply('as', ['abc']), 'a string for an array');
    bothThrow(reply('as', [{ a: 'b' }]), 'an object for an array');
    bothThrow(reply('as', [[1]]), 'a number in an array of strings');
    bothThrow(reply('a{ss}', [new Map([['a', 'b']])]), 'a Map for a dict');
    bothThrow(reply('a{ss}', [[['a', 'b']]]), 'an array for a dict');
    bothThrow(reply('a{ss}', [{ a: 1 }]), 'a number as a dict value');
    bothThrow(reply('a{us}', [{ 1: 'one' }]), 'integer dict keys (object keys are strings)');
    bothThrow(reply('(si)', [['a']]), 'a struct with too few members');
    bothThrow(reply('(si)', ['a']), 'a string for a struct');
    bothThrow(reply('v', ['x']), 'a plain value for a variant');
    bothThrow(reply('a{sv}', [{ a: 'x' }]), 'a plain value for a variant in a dict');
    bothThrow(reply('av', [[1]]), 'a plain value for a variant in an array');
    bothThrow(reply('v', [new Variant('a{ss}x', {})]), 'a variant of two types');
    assert.throws(() => encodeMessage({ type: 2, replySerial: 1 }), /serial/);
    assert.throws(() => marshallMessage({ type: 2, replySerial: 1 }), /serial/);
  });

  it('throws where dbus-next would send what the bus rejects', () => {
    const refuses = (fields: Fields, re: RegExp) => assert.throws(() => ourBytes(fields), re);
    refuses(reply('o', ['not/a/path']), /object path/);
    refuses(reply('o', ['/trailing/']), /object path/);
    refuses(reply('g', ['a']), /signature/);
    refuses(reply('g', ['m']), /signature/);
    refuses(reply('g', ['{ss}']), /signature/);
    refuses(reply('v', [new Variant('s(', 'x')]), /signature/);
    refuses(reply('v', [new Variant('ss', 'x')]), /one complete type/);
    refuses(reply('a(ss)', [[new Variant('s', 'x')]]), /expected an array/);
    let deep: unknown = 1;
    for (let i = 0; i < 70; i++) deep = new Variant(i === 0 ? 'y' : 'v', deep);
    refuses(reply('v', [deep]), /deeper than 64/);
    assert.throws(() => parseSignature('a'.repeat(33) + 'y'), /nested arrays/);
    assert.throws(() => parseSignature('('.repeat(33) + 'y' + ')'.repeat(33)), /nested structs/);
    assert.throws(() => parseSignature('()'), /empty struct/);
    assert.throws(() => parseSignature('a{vs}'), /basic/);
    assert.throws(() => parseSignature('a{sss}'), /one key and one value/);
    assert.throws(() => parseSignature('s'.repeat(256)), /longer than 255/);
  });

  it('leaves nothing behind in a batch when a message fails', () => {
    const w = new WireWriter();
    encodeMessageInto(w, { type: 2, serial: 1, replySerial: 1, signature: 's', body: ['ok'] });
    const before = w.pos;
    assert.throws(() =>
      encodeMessageInto(w, { type: 2, serial: 2, replySerial: 1, signature: 'as', body: [['ok', 5]] }),
    );
    assert.equal(w.pos, before);
    assert.equal(ourDecode(w.take()).length, 1);
  });
});

describe('wire codec: malformed input is an error, never a crash or a hang', () => {
  const good = ourBytes({
    type: 1,
    serial: 5,
    path: PATH,
    interface: IFACE,
    member: 'TestMethod',
    signature: 'sa{sas}',
    body: ['vm', { d1: ['type=usb'] }],
  });

  function rejects(bytes: Buffer, re?: RegExp): void {
    assert.throws(
      () => ourDecode(bytes),
      (err: unknown) => {
        assert.ok(err instanceof DecodeError, `not a DecodeError: ${String(err)}`);
        if (re) assert.match(err.message, re);
        return true;
      },
    );
  }

  /** A little-endian message by hand: header fields and body as given, lengths computed. */
  function handMade(
    type: number,
    fields: Buffer,
    body: Buffer,
    opts: { bodyLength?: number; fieldsLength?: number; serial?: number } = {},
  ): Buffer {
    const head = Buffer.alloc(16);
    head.write('l', 0);
    head[1] = type;
    head[3] = 1;
    head.writeUInt32LE(opts.bodyLength ?? body.length, 4);
    head.writeUInt32LE(opts.serial ?? 1, 8);
    head.writeUInt32LE(opts.fieldsLength ?? fields.length, 12);
    const padded = Buffer.alloc((fields.length + 7) & ~7);
    fields.copy(padded);
    return Buffer.concat([head, padded, body]);
  }
  /** Header field: code, signature 'g' of one char, then the value bytes (already aligned as needed). */
  const sigField = (sig: string) =>
    Buffer.concat([Buffer.from([8, 1, 0x67, 0, sig.length]), Buffer.from(sig + '\0', 'latin1')]);
  const returnFields = (sig: string) => Buffer.concat([Buffer.from([5, 1, 0x75, 0, 3, 0, 0, 0]), sigField(sig)]);

  it('well-formed hand-made messages decode (the helpers are right)', () => {
    const m = decodeOne(handMade(2, returnFields('u'), Buffer.from([7, 0, 0, 0])));
    assert.deepEqual(m?.body, [7]);
  });

  it('bad headers', () => {
    const bad = Buffer.from(good);
    bad[0] = 0x41;
    rejects(bad, /endianness/);
    const version = Buffer.from(good);
    version[3] = 2;
    rejects(version, /version/);
    rejects(handMade(2, returnFields('u'), Buffer.from([7, 0, 0, 0]), { serial: 0 }), /serial 0/);
    rejects(handMade(0, returnFields('u'), Buffer.from([7, 0, 0, 0])), /type 0/);
    rejects(handMade(2, sigField('u'), Buffer.from([7, 0, 0, 0])), /replySerial/);
    rejects(
      handMade(2, Buffer.concat([Buffer.from([5, 1, 0x73, 0, 1, 0, 0, 0, 0x61, 0])]), Buffer.alloc(0)),
      /header field 5/,
    );
    rejects(
      handMade(2, Buffer.concat([Buffer.from([1, 1, 0x6f, 0, 3, 0, 0, 0]), Buffer.from('a/b\0')]), Buffer.alloc(0)),
      /object path/,
    );
  });

  it('a message of an unknown type is skipped', () => {
    const out = ourDecode(Buffer.concat([handMade(9, returnFields('u'), Buffer.from([7, 0, 0, 0])), good]));
    assert.equal(out.length, 1);
    assert.equal(out[0]!.member, 'TestMethod');
  });

  it('bad lengths and truncated bodies', () => {
    rejects(handMade(2, returnFields('u'), Buffer.from([7, 0])), /past the end/);
    rejects(handMade(2, returnFields('s'), Buffer.from([50, 0, 0, 0, 0x61, 0])), /past the end/);
    rejects(handMade(2, returnFields('s'), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x61, 0])), /past the end/);
    rejects(handMade(2, returnFields('as'), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x61, 0])), /at most/);
    rejects(handMade(2, returnFields('as'), Buffer.from([40, 0, 0, 0, 1, 0, 0, 0, 0x61, 0])), /past the end/);
    rejects(handMade(2, returnFields('as'), Buffer.from([3, 0, 0, 0, 1, 0, 0, 0, 0x61, 0])), /overruns/);
    rejects(handMade(2, returnFields('u'), Buffer.from([7, 0, 0, 0, 0])), /longer than its signature/);
    rejects(handMade(2, Buffer.from([5, 1, 0x75, 0, 3, 0, 0, 0]), Buffer.from([1])), /longer than its signature/);
    rejects(handMade(2, returnFields('u'), Buffer.from([7, 0, 0, 0]), { fieldsLength: 12 }), /past the end/);
    rejects(handMade(2, returnFields('u'), Buffer.alloc(0), { bodyLength: 0xfffffff0 }), /at most/);
  });

  it('bad padding, strings, booleans, signatures, object paths', () => {
    rejects(handMade(2, returnFields('yu'), Buffer.from([1, 0, 9, 0, 7, 0, 0, 0])), /padding/);
    const padded = handMade(2, returnFields('u'), Buffer.from([7, 0, 0, 0]));
    padded[31] = 1; // the zero padding after the header fields
    rejects(padded, /padding/);
    rejects(handMade(2, returnFields('s'), Buffer.from([2, 0, 0, 0, 0xc3, 0x28, 0])), /UTF-8/);
    rejects(handMade(2, returnFields('s'), Buffer.from([2, 0, 0, 0, 0xc0, 0x80, 0])), /UTF-8/);
    rejects(handMade(2, returnFields('s'), Buffer.from([3, 0, 0, 0, 0xed, 0xa0, 0x80, 0])), /UTF-8/);
    rejects(handMade(2, returnFields('s'), Buffer.from([3, 0, 0, 0, 0x61, 0, 0x62, 0])), /NUL/);
    rejects(handMade(2, returnFields('s'), Buffer.from([1, 0, 0, 0, 0x61, 0x62])), /NUL-terminated/);
    const long = Buffer.alloc(100, 0xe4);
    rejects(
      handMade(2, returnFields('s'), Buffer.concat([Buffer.from([100, 0, 0, 0]), long, Buffer.from([0])])),
      /UTF-8/,
    );
    rejects(handMade(2, returnFields('b'), Buffer.from([2, 0, 0, 0])), /boolean/);
    rejects(handMade(2, returnFields('g'), Buffer.from([1, 0x6d, 0])), /signature/);
    rejects(handMade(2, returnFields('v'), Buffer.from([2, 0x73, 0x73, 0])), /one complete type/);
    rejects(handMade(2, returnFields('o'), Buffer.from([2, 0, 0, 0, 0x2f, 0x2f, 0])), /object path/);
    rejects(handMade(2, returnFields('h'), Buffer.from([0, 0, 0, 0])), /fd/);
    rejects(
      handMade(
        2,
        Buffer.concat([Buffer.from([5, 1, 0x75, 0, 3, 0, 0, 0]), Buffer.from([8, 1, 0x67, 0, 2, 0x61, 0x61, 0])]),
        Buffer.alloc(8),
      ),
      /signature/,
    );
  });

  it('nesting deeper than 64', () => {
    const variants = (n: number) =>
      Buffer.concat([...Array.from({ length: n }, () => Buffer.from([1, 0x76, 0])), Buffer.from([1, 0x79, 0, 5])]);
    assert.ok(decodeOne(handMade(2, returnFields('v'), variants(63))));
    rejects(handMade(2, returnFields('v'), variants(64)), /deeper than 64/);
    rejects(handMade(2, returnFields('v'), variants(5000)), /deeper than 64/);
  });

  it('random corruption: only DecodeErrors', () => {
    const gen = new Gen(mulberry32(7));
    let errors = 0;
    for (let i = 0; i < 3000; i++) {
      const bytes = Buffer.from(ourBytes(gen.message()));
      for (let k = gen.int(1, 4); k > 0; k--)
        bytes[gen.int(0, bytes.length - 1)] = gen.pick([0, 1, 0xff, 0x80, gen.int(0, 255)]);
      try {
        const framer = new MessageFramer(undefined, undefined, (_header, err) => {
          assert.ok(err instanceof DecodeError, `case ${i}: ${err.stack}`);
          errors++;
        });
        framer.push(bytes, () => {});
      } catch (err) {
        assert.ok(err instanceof DecodeError, `case ${i}: ${(err as Error).stack}`);
        errors++;
      }
    }
    assert.ok(errors > 100, `only ${errors} corruptions were noticed`);
  });

  it('a declared length that never arrives only waits: nothing is allocated for it', () => {
    const framer = new MessageFramer();
    const head = Buffer.from(good.subarray(0, 16));
    head.writeUInt32LE(100_000_000, 4);
    framer.push(head, () => assert.fail('no message'));
    framer.push(Buffer.alloc(1000), () => assert.fail('no message'));
    assert.equal(framer.pending, 1016);
  });
});

describe("wire codec: a bad message is that message's problem", () => {
  const call = (serial: number, signature: string, body: unknown[]) =>
    ourBytes({
      type: 1,
      serial,
      sender: ':1.9',
      destination: ':1.2',
      path: PATH,
      interface: IFACE,
      member: 'TestMethod',
      signature,
      body,
    });
  const ping = (serial: number) =>
    ourBytes({
      type: 1,
      serial,
      sender: ':1.9',
      destination: ':1.2',
      path: '/',
      interface: 'org.freedesktop.DBus.Peer',
      member: 'Ping',
    });
  /** A call whose body has a unix fd index: our encoder refuses 'h', so the body is written by hand. */
  const withFd = (serial: number, signature: 'h' | 'v') => {
    const bytes = Buffer.from(call(serial, 'u', [0]));
    // Same length and alignment as 'u' (both are 4-byte integers): only the signature changes.
    const at = bytes.indexOf(Buffer.from([8, 1, 0x67, 0, 1, 0x75, 0]));
    assert.ok(at > 0);
    if (signature === 'h') bytes[at + 5] = 0x68;
    return bytes;
  };

  it("skips a message with 'h' in its body, reports its header, and frames what follows", () => {
    const stream = Buffer.concat([ping(1), withFd(2, 'h'), ping(3)]);
    const got: Message[] = [];
    const bad: Array<{ serial: number | undefined; reason: string }> = [];
    new MessageFramer(undefined, undefined, (header, err) =>
      bad.push({ serial: header?.serial, reason: err.message }),
    ).push(stream, (m) => got.push(m));
    assert.deepEqual(
      got.map((m) => m.serial),
      [1, 3],
    );
    assert.deepEqual(bad, [{ serial: 2, reason: "a unix fd ('h'): vmdevd takes no file descriptors" }]);
  });

  it('a variant holding h, a bad boolean and a bad string are skipped the same way', () => {
    const variantFd = Buffer.from(call(2, 'v', [new Variant('u', 7)]));
    const inner = variantFd.indexOf(Buffer.from([1, 0x75, 0]), 40);
    variantFd[inner + 1] = 0x68; // the variant's signature 'u' → 'h'
    const badBool = Buffer.from(call(3, 'b', [true]));
    badBool[badBool.length - 4] = 2;
    const badString = Buffer.from(call(4, 's', ['ok']));
    badString[badString.length - 2] = 0; // "o\0" + NUL: a NUL inside the string
    const got: number[] = [];
    const bad: Array<number | undefined> = [];
    new MessageFramer(undefined, undefined, (header) => bad.push(header?.serial)).push(
      Buffer.concat([variantFd, ping(10), badBool, badString, ping(11)]),
      (m) => got.push(m.serial!),
    );
    assert.deepEqual(got, [10, 11]);
    assert.deepEqual(bad, [2, 3, 4]);
  });

  it('a message whose header fields do not decode is skipped without a header', () => {
    const broken = Buffer.from(ping(5));
    broken[16] = 0; // header field code 0 is invalid
    const got: number[] = [];
    const bad: Array<unknown> = [];
    new MessageFramer(undefined, undefined, (header) => bad.push(header)).push(Buffer.concat([broken, ping(6)]), (m) =>
      got.push(m.serial!),
    );
    assert.deepEqual(got, [6]);
    assert.deepEqual(bad, [undefined]);
  });

  it('only a fixed header that cannot frame a message ends the stream', () => {
    const framer = new MessageFramer();
    const broken = Buffer.from(ping(7));
    broken[0] = 0x58; // no byte order
    assert.throws(() => framer.push(broken, () => {}), /endianness/);
  });

  it('the encoder sends no unix fds', () => {
    assert.throws(() => ourBytes(reply('h', [0])), /vmdevd sends no unix fds/);
    assert.throws(() => ourBytes(reply('v', [new Variant('h', 0)])), /vmdevd sends no unix fds/);
  });
});

describe('wire codec: framing', () => {
  const stream = Buffer.concat([
    ourBytes(reply('b', [true], 1)),
    ourBytes({
      type: 4,
      serial: 2,
      path: PATH,
      interface: IFACE,
      member: 'DeviceDetached',
      signature: 'ss',
      body: ['vm1', 'd1'],
    }),
    ourBytes(reply('v', [new Variant('a{ss}', { a: 'b' })], 3)),
    ourBytes({ type: 2, serial: 4, replySerial: 1 }),
    ourBytes(reply('ay', [Buffer.alloc(300, 1)], 5)),
  ]);
  const expected = ourDecode(stream);

  it('splits at every byte boundary', () => {
    assert.equal(expected.length, 5);
    for (let k = 0; k <= stream.length; k++) {
      const out: Message[] = [];
      const framer = new MessageFramer();
      framer.push(stream.subarray(0, k), (m) => out.push(m));
      framer.push(stream.subarray(k), (m) => out.push(m));
      assert.deepStrictEqual(out, expected, `split at ${k}`);
      assert.equal(framer.pending, 0);
    }
  });

  it('drops a message longer than the limit as it arrives, reports its header, and frames what follows', () => {
    const big = ourBytes({
      type: 1,
      serial: 9,
      sender: ':1.5',
      path: PATH,
      interface: IFACE,
      member: 'TestMethod',
      signature: 'ay',
      body: [Buffer.alloc(5000, 7)],
    });
    // Between the first message of the stream and the rest.
    const first = ourBytes(reply('b', [true], 1));
    const input = Buffer.concat([first, big, stream.subarray(first.length)]);
    for (const step of [1, 7, 64, 1000, input.length]) {
      const got: Message[] = [];
      const oversized: Array<{
        member: string | undefined;
        serial: number;
        sender: string | undefined;
        length: number;
      }> = [];
      const framer = new MessageFramer(1024, (h, length) =>
        oversized.push({ member: h.member, serial: h.serial, sender: h.sender, length }),
      );
      for (let i = 0; i < input.length; i += step) framer.push(input.subarray(i, i + step), (m) => got.push(m));
      assert.deepStrictEqual(got, expected, `in chunks of ${step}`);
      assert.deepEqual(
        oversized,
        [{ member: 'TestMethod', serial: 9, sender: ':1.5', length: big.length }],
        `in chunks of ${step}`,
      );
      assert.equal(framer.pending, 0);
    }
  });

  it('one byte at a time, and in random chunks', () => {
    const out: Message[] = [];
    const framer = new MessageFramer();
    for (let i = 0; i < stream.length; i++) framer.push(stream.subarray(i, i + 1), (m) => out.push(m));
    assert.deepStrictEqual(out, expected);
    const gen = new Gen(mulberry32(3));
    for (let round = 0; round < 200; round++) {
      const got: Message[] = [];
      const f = new MessageFramer();
      for (let i = 0; i < stream.length;) {
        const n = gen.int(1, 64);
        f.push(stream.subarray(i, i + n), (m) => got.push(m));
        i += n;
      }
      assert.deepStrictEqual(got, expected);
    }
  });
});

// ---- a big-endian twin of a little-endian message, for the decoder ----------

/** Rewrites a little-endian message as big-endian, walking it with its signatures. */
function toBigEndian(le: Buffer): Buffer {
  const be = Buffer.from(le);
  be[0] = 0x42;
  let pos = 0;
  const align = (n: number) => {
    pos = (pos + n - 1) & ~(n - 1);
  };
  const swap = (n: number) => {
    be.subarray(pos, pos + n).reverse();
    pos += n;
  };
  const u32 = () => le.readUInt32LE(pos);
  const walk = (t: TypeNode): void => {
    switch (t.type) {
      case 'y':
        pos += 1;
        return;
      case 'n':
      case 'q':
        align(2);
        swap(2);
        return;
      case 'b':
      case 'i':
      case 'u':
      case 'h':
        align(4);
        swap(4);
        return;
      case 'x':
      case 't':
      case 'd':
        align(8);
        swap(8);
        return;
      case 's':
      case 'o': {
        align(4);
        const n = u32();
        swap(4);
        pos += n + 1;
        return;
      }
      case 'g':
        pos += le[pos]! + 2;
        return;
      case 'v': {
        const n = le[pos]!;
        const sig = le.toString('latin1', pos + 1, pos + 1 + n);
        pos += n + 2;
        walk(parseSignature(sig)[0]!);
        return;
      }
      case '(':
      case '{':
        align(8);
        for (const c of t.children) walk(c);
        return;
      case 'a': {
        align(4);
        const n = u32();
        swap(4);
        align(t.children[0]!.align);
        const end = pos + n;
        while (pos < end) walk(t.children[0]!);
        return;
      }
    }
  };
  pos = 4;
  swap(4); // body length
  swap(4); // serial
  const fields = parseSignature('a(yv)')[0]!;
  walk(fields);
  align(8);
  const sigAt = findSignature(le);
  if (sigAt !== undefined) for (const t of parseSignature(sigAt)) walk(t);
  return be;
}

function findSignature(le: Buffer): string | undefined {
  const m = decodeOne(le);
  return m?.signature || undefined;
}
