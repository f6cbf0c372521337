import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import dbus from 'dbus-next';
import { StateBodyEncoder, type StateBodies } from '../../src/dbus/state-bodies.js';
import { encodeBody } from '../../src/dbus/wire/encoder.js';

const { Variant } = dbus;

describe('state bodies', () => {
  const maps: Array<Record<string, string>> = [
    {},
    { vm1: 'running' },
    { a: 'paused', bb: 'running', ccc: 'shutoff', 'backend/dddd': 'crashed' },
    { 'vm-é': 'running', 虚拟机: 'paused', 'emoji-🙂': 'shutoff' },
    // The last ASCII code and the first that is not, behind ASCII that was already written.
    { 'x\u007f': 'y\u0080z', 'a-long-ascii-name-then-日本': 'running', é: 'paused' },
    Object.fromEntries(
      Array.from({ length: 1000 }, (_, i) => [`vm-${'x'.repeat(i % 7)}${i}`, i % 2 ? 'paused' : 'running']),
    ),
  ];
  for (const iface of ['org.example.dbustest.Module', 'a.b', 'org.example.dbustest.Modules']) {
    for (const invalidated of [[], ['Vms'], ['Vms', 'Backends']]) {
      it(`are the bytes the encoder writes for the whole bodies (${iface}, invalidated ${invalidated.length})`, () => {
        for (const map of maps) {
          const bodies = new StateBodyEncoder(iface, invalidated).encode(map);
          assert.deepEqual(bodies.testSignal, encodeBody('a{ss}', [map]));
          assert.deepEqual(bodies.getReply, encodeBody('v', [new Variant('a{ss}', map)]));
          assert.deepEqual(
            bodies.propertiesChanged,
            encodeBody('sa{sv}as', [iface, { TestProperty: new Variant('a{ss}', map) }, invalidated]),
          );
        }
      });
    }
  }
});

describe('state bodies of one changed value', () => {
  const encoder = new StateBodyEncoder('org.example.dbustest.Module', ['Vms']);
  const states = ['running', 'paused', 'shutdown', 'pmsuspended', 'x', 'é-non-ascii-状態', ''];

  /** A small, fixed pseudo-random sequence: the same changes at every run. */
  function* lcg(seed: number): Generator<number> {
    let x = seed;
    for (;;) {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      yield x;
    }
  }

  it('are the bytes of the whole map, change after change, wherever the key is', () => {
    // Names of every length (entries end anywhere in 8 bytes), integer-like
    // keys (first in the map's order), names that are not ASCII.
    const base: Record<string, string> = {};
    for (let i = 0; i < 300; i++) base[`vm-${'n'.repeat(i % 9)}${i}`] = 'running';
    for (const k of ['7', '42', 'vm-é', '虚拟机', 'zz-last']) base[k] = 'paused';
    const keys = Object.keys(base);
    let map: Record<string, string> = base;
    let last: { map: Record<string, string>; bodies: StateBodies } = { map, bodies: encoder.encode(map) };
    const random = lcg(7);
    const picks = [keys[0]!, keys[1]!, keys.at(-1)!, keys.at(-2)!, '42', 'vm-é', '虚拟机'];
    for (let i = 0; i < 400; i++) {
      const key = i < picks.length * 3 ? picks[i % picks.length]! : keys[random.next().value! % keys.length]!;
      const value = states[random.next().value! % states.length]!;
      const next = { ...map, [key]: value };
      const bodies = encoder.patch(last.bodies, last.map, key, value);
      assert.ok(bodies, `change ${i} is encoded from the last bytes`);
      const whole = encoder.encode(next);
      assert.deepEqual(bodies.testSignal, whole.testSignal, `change ${i}: ${key} → ${JSON.stringify(value)}`);
      map = next;
      last = { map, bodies };
    }
    assert.deepEqual(last.bodies.testSignal, encodeBody('a{ss}', [map]));
    assert.deepEqual(last.bodies.getReply, encodeBody('v', [new Variant('a{ss}', map)]));
    assert.deepEqual(
      last.bodies.propertiesChanged,
      encodeBody('sa{sv}as', ['org.example.dbustest.Module', { TestProperty: new Variant('a{ss}', map) }, ['Vms']]),
    );
  });

  it('encode a small map, a key it lacks, or a map that does not follow the last one whole', () => {
    const small = { a: 'running', b: 'paused' };
    assert.equal(encoder.patch(encoder.encode(small), small, 'a', 'paused'), undefined, 'a small map');
    const big = Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`vm-${i}`, 'running']));
    const bodies = encoder.encode(big);
    assert.equal(encoder.patch(bodies, big, 'no-such-vm', 'paused'), undefined, 'a key the map lacks');
    const other = { ...big, 'vm-3': 'paused', 'vm-4': 'paused' };
    // The patch names a map other than the last one: encoded whole, right.
    const next = encoder.encodeNext(other, { previous: { ...big }, key: 'vm-3' }, { map: big, bodies });
    assert.deepEqual(next.testSignal, encodeBody('a{ss}', [other]));
    const patched = encoder.encodeNext(
      { ...big, 'vm-3': 'paused' },
      { previous: big, key: 'vm-3' },
      { map: big, bodies },
    );
    assert.deepEqual(patched.testSignal, encodeBody('a{ss}', [{ ...big, 'vm-3': 'paused' }]));
  });
});
