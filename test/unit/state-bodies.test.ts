import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import dbus from 'dbus-next';
import { CurrentStateBodies, StateBodyEncoder, type StateSource } from '../../src/dbus/state-bodies.js';
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

  /** A source of maps as the state hub is one: a version, and the one value changed since. */
  class Source implements StateSource {
    version = 0;
    asked = 0;
    #map: Record<string, string>;
    #patch: { from: number; key: string; value: string } | undefined;
    constructor(map: Record<string, string>) {
      this.#map = map;
    }
    set(key: string, value: string): void {
      this.#map = { ...this.#map, [key]: value };
      this.#patch = { from: this.version++, key, value };
    }
    replace(map: Record<string, string>): void {
      this.#map = map;
      this.version++;
      this.#patch = undefined;
    }
    patchSince(version: number) {
      const p = this.#patch;
      return p !== undefined && p.from === version && version + 1 === this.version ? p : undefined;
    }
    map(): Record<string, string> {
      this.asked++;
      return this.#map;
    }
  }

  it('are the bytes of the whole map, change after change, wherever the key is', () => {
    // Names of every length (entries end anywhere in 8 bytes), integer-like
    // keys (first in the map's order), names that are not ASCII.
    const base: Record<string, string> = {};
    for (let i = 0; i < 300; i++) base[`vm-${'n'.repeat(i % 9)}${i}`] = 'running';
    for (const k of ['7', '42', 'vm-é', '虚拟机', 'zz-last']) base[k] = 'paused';
    const keys = Object.keys(base);
    const source = new Source(base);
    const current = new CurrentStateBodies(encoder, source);
    current.get();
    const random = lcg(7);
    const picks = [keys[0]!, keys[1]!, keys.at(-1)!, keys.at(-2)!, '42', 'vm-é', '虚拟机'];
    for (let i = 0; i < 400; i++) {
      const key = i < picks.length * 3 ? picks[i % picks.length]! : keys[random.next().value! % keys.length]!;
      const value = states[random.next().value! % states.length]!;
      source.set(key, value);
      const bodies = current.get();
      assert.equal(current.get(), bodies, 'made once per version');
      assert.deepEqual(bodies.testSignal, encoder.encode(source.map()).testSignal, `change ${i}: ${key} → ${value}`);
    }
    assert.equal(source.asked, 1 + 400, 'only the first map was asked for to encode it (and each here, to compare)');
    const map = source.map();
    const bodies = current.get();
    assert.deepEqual(bodies.testSignal, encodeBody('a{ss}', [map]));
    assert.deepEqual(bodies.getReply, encodeBody('v', [new Variant('a{ss}', map)]));
    assert.deepEqual(
      bodies.propertiesChanged,
      encodeBody('sa{sv}as', ['org.example.dbustest.Module', { TestProperty: new Variant('a{ss}', map) }, ['Vms']]),
    );
  });

  it('encode a small map, a key it lacks, and a change of more than one value whole', () => {
    const small = { a: 'running', b: 'paused' };
    assert.equal(encoder.patch(encoder.encode(small), 'a', 'paused'), undefined, 'a small map');
    const big = Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`vm-${i}`, 'running']));
    assert.equal(encoder.patch(encoder.encode(big), 'no-such-vm', 'paused'), undefined, 'a key the map lacks');
    const source = new Source(big);
    const current = new CurrentStateBodies(encoder, source);
    current.get();
    source.set('vm-3', 'paused');
    source.set('vm-4', 'paused');
    assert.deepEqual(current.get().testSignal, encodeBody('a{ss}', [source.map()]), 'two changes since');
    source.replace({ ...source.map(), 'vm-new': 'running' });
    assert.deepEqual(current.get().testSignal, encodeBody('a{ss}', [source.map()]), 'a new key');
  });
});
