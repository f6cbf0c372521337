/**
 * The daemon's own access check, independent of any bus policy: on a bus
 * that lets everyone call everything, an unprivileged caller still gets
 * AccessDenied for TestMethod and property writes, and can read.
 */
import assert from 'node:assert/strict';
import { chmodSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { run } from '../harness/process.js';
import { openBusConfig } from '../harness/dbus-daemon.js';
import { startStack, type Stack } from '../harness/stack.js';

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
const IFACE = 'org.example.dbustest.Module';

/** An open bus that any local user may connect to. */
function anyUserBus(socket: string): string {
  return openBusConfig(socket).replace(
    '<policy context="default">',
    '<policy context="default">\n    <allow user="*"/>',
  );
}

async function asNobody(stack: Stack, ...gdbusArgs: string[]) {
  return run(
    'setpriv',
    [
      ...NOBODY,
      'gdbus',
      'call',
      '--address',
      stack.bus.address,
      '--dest',
      'org.example.dbustest',
      '--object-path',
      '/org/example/dbustest',
      ...gdbusArgs,
    ],
    {
      env: { PATH: process.env['PATH'], HOME: '/nonexistent' },
    },
  );
}

for (const [what, access, allowed] of [
  ['root only', { users: ['root'], groups: [] }, false],
  ['the group of the caller', { users: ['root'], groups: ['nogroup'] }, true],
  ['the caller by uid', { users: ['65534'], groups: [] }, true],
] as const) {
  describe(`access: ${what}`, () => {
    let stack: Stack;
    before(async () => {
      stack = await startStack({ config: { access }, bus: anyUserBus });
      chmodSync(stack.bus.dir.path, 0o755);
    });
    after(async () => {
      await stack?.stop();
    });

    it(
      allowed
        ? 'lets the unprivileged caller detach, attach and write'
        : 'denies TestMethod, AttachDevices and Set to an unprivileged caller',
      async () => {
        const before = stack.journal().length;
        const call = await asNobody(
          stack,
          '--method',
          `${IFACE}.TestMethod`,
          'vm1',
          "{'d1': ['type=disk', 'target=vdb']}",
        );
        const attach = await asNobody(
          stack,
          '--method',
          `${IFACE}.AttachDevices`,
          'vm1',
          "{'a1': ['type=pci', 'address=01:00.0']}",
        );
        const set = await asNobody(
          stack,
          '--method',
          'org.freedesktop.DBus.Properties.Set',
          IFACE,
          'TestProperty',
          "<{'vm1': 'paused'}>",
        );
        if (allowed) {
          assert.equal(call.stdout.trim(), '(true,)', call.stderr);
          assert.equal(attach.stdout.trim(), '(true,)', attach.stderr);
          assert.equal(set.code, 0, set.stderr);
        } else {
          assert.match(
            call.stderr,
            /GDBus\.Error:org\.example\.dbustest\.Error\.AccessDenied: uid 65534 may not call TestMethod/,
          );
          assert.match(
            attach.stderr,
            /GDBus\.Error:org\.example\.dbustest\.Error\.AccessDenied: uid 65534 may not call AttachDevices/,
          );
          assert.match(
            set.stderr,
            /GDBus\.Error:org\.example\.dbustest\.Error\.AccessDenied: uid 65534 may not call Set TestProperty/,
          );
          await stack.daemon.waitForOutput(/access denied caller=:1\.\d+ uid=65534 call=TestMethod/);
          assert.deepEqual(await stack.journalUntilBarrier(before), [], 'nothing was started or applied');
        }
      },
    );

    it('lets the unprivileged caller read, list devices and introspect', async () => {
      const get = await asNobody(stack, '--method', 'org.freedesktop.DBus.Properties.Get', IFACE, 'TestProperty');
      assert.match(get.stdout, /'vm1': '(running|paused)'/, get.stderr);
      const devices = await asNobody(stack, '--method', `${IFACE}.GetDevices`, 'vm1');
      assert.match(devices.stdout, /'net0': \['type=interface', 'mac=52:54:00:00:00:01'/, devices.stderr);
      const intro = await asNobody(stack, '--method', 'org.freedesktop.DBus.Introspectable.Introspect');
      assert.match(intro.stdout, /TestMethod/);
    });

    it('lets root do everything', async () => {
      assert.equal(await stack.client.testMethod('vm1', { root1: ['type=disk', 'target=vdc'] }), true);
    });
  });
}
