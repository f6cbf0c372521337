/**
 * Map keys named "__proto__". dbus-next decodes dicts into plain objects,
 * where assigning the key "__proto__" sets the prototype instead of adding
 * an entry: a write of TestProperty naming an unknown VM "__proto__" was
 * applied in part and answered as a success, and a VM named "__proto__"
 * was missing from TestProperty. Found by the bus fuzzer.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { INTERFACE, OBJECT_PATH, BUS_NAME } from '../harness/bus-client.js';
import { run } from '../harness/process.js';
import { DEFAULT_VMS, startStack, type Stack } from '../harness/stack.js';

describe('map keys named __proto__', () => {
  let stack: Stack;
  const busctl = (...args: string[]) => run('busctl', [`--address=${stack.bus.address}`, ...args]);

  before(async () => {
    stack = await startStack({ backends: [{ vms: [...DEFAULT_VMS, { name: '__proto__', state: 'running' }] }] });
  });
  after(async () => {
    await stack?.stop();
  });

  it('refuses a write of TestProperty that names an unknown "__proto__", and applies nothing', async () => {
    // Only the VM named __proto__ exists here; "constructor" does not.
    const before = stack.journal().length;
    const r = await busctl(
      'set-property',
      BUS_NAME,
      OBJECT_PATH,
      INTERFACE,
      'TestProperty',
      'a{ss}',
      '2',
      'constructor',
      'paused',
      'vm1',
      'paused',
    );
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no VM is named "constructor"/);
    assert.deepEqual(await stack.journalUntilBarrier(before), [], 'nothing was applied');
  });

  it('shows a VM named "__proto__" in TestProperty and lets a client change it', async () => {
    const get = await busctl('--json=short', 'get-property', BUS_NAME, OBJECT_PATH, INTERFACE, 'TestProperty');
    assert.equal((JSON.parse(get.stdout) as { data: Record<string, string> }).data['__proto__'], 'running', get.stdout);
    const set = await busctl(
      'set-property',
      BUS_NAME,
      OBJECT_PATH,
      INTERFACE,
      'TestProperty',
      'a{ss}',
      '1',
      '__proto__',
      'paused',
    );
    assert.equal(set.code, 0, set.stderr);
    assert.ok(
      stack.journal().some((e) => e['op'] === 'setState' && e['vm'] === '__proto__' && e['state'] === 'paused'),
    );
  });

  it('keeps a device labelled "__proto__" like any other label', async () => {
    const signals = await stack.client.subscribeAll();
    const r = await busctl(
      'call',
      BUS_NAME,
      OBJECT_PATH,
      INTERFACE,
      'TestMethod',
      'sa{sas}',
      'vm1',
      '1',
      '__proto__',
      '2',
      'type=disk',
      'target=vdb',
    );
    assert.equal(r.stdout.trim(), 'b true', r.stderr);
    await signals.waitFor((s) => s.member === 'DeviceDetached' && s.body[1] === '__proto__');
  });
});

describe('map keys named __proto__, without a VM of that name', () => {
  let stack: Stack;
  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stack?.stop();
  });

  it('refuses a write of TestProperty naming "__proto__", and applies nothing of it', async () => {
    const before = stack.journal().length;
    const r = await run('busctl', [
      `--address=${stack.bus.address}`,
      'set-property',
      BUS_NAME,
      OBJECT_PATH,
      INTERFACE,
      'TestProperty',
      'a{ss}',
      '2',
      'vm2',
      'running',
      '__proto__',
      'paused',
    ]);
    assert.notEqual(r.code, 0, 'the write was answered as a success');
    assert.match(r.stderr, /no VM is named "__proto__"/);
    assert.deepEqual(await stack.journalUntilBarrier(before), [], 'vm2 was changed although the write was invalid');
  });
});
