/**
 * Clients that are not ours: busctl, gdbus and Python's dbus_next (which
 * knows only the interface XML) drive the whole contract.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { run, startProcess } from '../harness/process.js';
import { startStack, type Stack } from '../harness/stack.js';
import { REPO_ROOT } from '../harness/vmdevd-process.js';

const DEST = ['org.example.dbustest', '/org/example/dbustest'];
const IFACE = 'org.example.dbustest.Module';

describe('other clients', () => {
  let stack: Stack;
  const busctl = (...args: string[]) => run('busctl', [`--address=${stack.bus.address}`, ...args]);
  const gdbus = (...args: string[]) =>
    run('gdbus', [
      args[0]!,
      '--address',
      stack.bus.address,
      '--dest',
      DEST[0]!,
      '--object-path',
      DEST[1]!,
      ...args.slice(1),
    ]);

  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stack?.stop();
  });

  describe('busctl', () => {
    it('introspects every member with its signature', async () => {
      const r = await busctl('introspect', ...DEST, IFACE);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /\.TestMethod\s+method\s+sa\{sas\}\s+b/);
      assert.match(r.stdout, /\.TestProperty\s+property\s+a\{ss\}.*emits-change writable/);
      assert.match(r.stdout, /\.Backends\s+property\s+a\{ss\}.*emits-change/);
      assert.match(r.stdout, /\.DeviceDetachFailed\s+signal\s+ssss/);
    });

    it('calls TestMethod and reads and writes TestProperty', async () => {
      const call = await busctl(
        'call',
        ...DEST,
        IFACE,
        'TestMethod',
        'sa{sas}',
        'vm1',
        '1',
        'bc1',
        '2',
        'type=disk',
        'target=vdb',
      );
      assert.equal(call.code, 0, call.stderr);
      assert.equal(call.stdout.trim(), 'b true');
      const none = await busctl(
        'call',
        ...DEST,
        IFACE,
        'TestMethod',
        'sa{sas}',
        'ghost',
        '1',
        'bc1',
        '2',
        'type=disk',
        'target=vdb',
      );
      assert.equal(none.stdout.trim(), 'b false');
      const get = await busctl('--json=short', 'get-property', ...DEST, IFACE, 'TestProperty');
      assert.deepEqual(JSON.parse(get.stdout), {
        type: 'a{ss}',
        data: { vm1: 'running', vm2: 'paused', vm3: 'shutoff' },
      });
      const set = await busctl('set-property', ...DEST, IFACE, 'TestProperty', 'a{ss}', '1', 'vm3', 'running');
      assert.equal(set.code, 0, set.stderr);
    });

    it('shows the error message of a rejected call', async () => {
      const r = await busctl('call', ...DEST, IFACE, 'TestMethod', 'sa{sas}', 'vm1', '1', 'bc2', '1', 'type=floppy');
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /Call failed: device "bc2": unknown type "floppy"/);
    });
  });

  describe('gdbus', () => {
    it('introspects with argument names', async () => {
      const r = await gdbus('introspect');
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /@org\.gtk\.GDBus\.DocString\("Validates every device/);
      const plain = r.stdout.replace(/@org\.gtk\.GDBus\.DocString\("[^"]*"\)/g, '').replace(/\s+/g, ' ');
      assert.match(plain, /TestMethod\( in s selector, in a\{sas\} devices, out b accepted\);/);
      assert.match(plain, /DeviceDetachFailed\( s vm, s device, s error, s message\);/);
      assert.match(plain, /readwrite a\{ss\} TestProperty/);
    });

    it('calls TestMethod, sees the outcome in gdbus monitor, and gets error names', async () => {
      const monitor = startProcess('gdbus', [
        'monitor',
        '--address',
        stack.bus.address,
        '--dest',
        DEST[0]!,
        '--object-path',
        DEST[1]!,
      ]);
      try {
        await stack.waitUntilFollowed(() => monitor.output());
        const r = await gdbus('call', '--method', `${IFACE}.TestMethod`, 'vm1', "{'gd1': ['type=disk', 'target=vdb']}");
        assert.equal(r.stdout.trim(), '(true,)');
        await monitor.waitForOutput(/org\.example\.dbustest\.Module\.DeviceDetached \('vm1', 'gd1'\)/);
        const bad = await gdbus(
          'call',
          '--method',
          `${IFACE}.TestMethod`,
          'vm1',
          "{'gd2': ['type=pci', 'address=zz:00.0']}",
        );
        assert.notEqual(bad.code, 0);
        assert.match(
          bad.stderr,
          /GDBus\.Error:org\.freedesktop\.DBus\.Error\.InvalidArgs: device "gd2": malformed address "zz:00\.0"/,
        );
        const amb = await gdbus(
          'call',
          '--method',
          `${IFACE}.TestMethod`,
          'cluster',
          "{'gd3': ['type=disk', 'target=vdb']}",
        );
        assert.match(
          amb.stderr,
          /GDBus\.Error:org\.example\.dbustest\.Error\.AmbiguousSelector: selector "cluster" matches 2 VMs: vm2, vm3/,
        );
      } finally {
        await monitor.stop();
      }
    });

    it('reads properties with the Properties interface', async () => {
      const r = await gdbus('call', '--method', 'org.freedesktop.DBus.Properties.Get', IFACE, 'Backends');
      assert.equal(r.stdout.trim(), "(<{'test': 'connected'}>,)");
    });
  });

  describe('Python dbus_next, knowing only the interface XML', () => {
    it('drives every member', async () => {
      const r = await run('/usr/bin/python3', [
        `${REPO_ROOT}test/clients/contract_client.py`,
        stack.bus.address,
        `${REPO_ROOT}dbus/org.example.dbustest.xml`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as Record<string, unknown>;
      assert.deepEqual(out['backends'], { test: 'connected' });
      assert.equal((out['states'] as Record<string, string>)['vm1'], 'running');
      assert.equal(out['accepted'], true);
      assert.equal(out['no_match'], false);
      assert.deepEqual(out['detached'], [['vm1', 'py-ok']]);
      const failed = out['failed'] as string[][];
      assert.deepEqual(
        failed.map((f) => f.slice(0, 3)),
        [['vm1', 'fail-DeviceNotFound-py', 'org.example.dbustest.Error.DeviceNotFound']],
      );
      const errors = out['errors'] as Record<string, [string, string]>;
      assert.equal(errors['bad_type']![0], 'org.freedesktop.DBus.Error.InvalidArgs');
      assert.equal(errors['ambiguous']![0], 'org.example.dbustest.Error.AmbiguousSelector');
      assert.equal(errors['bad_state']![0], 'org.freedesktop.DBus.Error.InvalidArgs');
      assert.equal(errors['read_only']![0], 'org.freedesktop.DBus.Error.PropertyReadOnly');
      const signals = out['signals'] as Array<Record<string, string>>;
      assert.ok(
        signals.some((s) => s['vm2'] === 'running'),
        `TestSignal showed the write: ${JSON.stringify(signals)}`,
      );
      assert.ok((out['properties_changed'] as string[]).includes(IFACE));
    });
  });
});
