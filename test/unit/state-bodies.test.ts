import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import dbus from 'dbus-next';
import { StateBodyEncoder } from '../../src/dbus/state-bodies.js';
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
