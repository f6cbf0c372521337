/**
 * Where the qmp backend finds its VMs, through the real daemon: sockets
 * that appear in and disappear from `socketDir`, a VM of `vms` in the same
 * directory, and a socket vmdevd may not open.
 */
import assert from 'node:assert/strict';
import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { SignalLog } from 'vmdevd/testing/bus-client';
import { startQemu, type QemuProcess } from 'vmdevd/testing/qemu-process';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { makeTempDir, type TempDir } from 'vmdevd/testing/temp-dir';
import { backendsIn, goneSignal, stateSignal } from './support.js';

describe('qmp backend: socketDir', { timeout: 180_000 }, () => {
  let dir: TempDir;
  let stack: Stack;
  let signals: SignalLog;
  const qemus: QemuProcess[] = [];

  /** QEMU whose only monitor is vmdevd's, in socketDir as NAME.qmp. */
  const qemuIn = async (name: string) => {
    const q = await startQemu({ monitors: { vmdevd: dir.file(`${name}.qmp`) } });
    qemus.push(q);
    return q;
  };

  before(async () => {
    dir = makeTempDir('vmdevd-socketdir-');
    // The example of the README: a VM of vms whose socket is in socketDir too.
    stack = await startStack({
      backends: [],
      extraBackends: [
        {
          id: 'qemu',
          plugin: 'qmp',
          vms: [{ name: 'ivi', type: 'ivi', socket: dir.file('ivi.qmp') }],
          socketDir: dir.path,
          reconnectInitialMs: 100,
          reconnectMaxMs: 1000,
        },
      ],
    });
    signals = await stack.client.subscribeAll();
  });

  after(async () => {
    await stack?.stop();
    for (const q of qemus) await q.stop();
    dir?.remove();
  });

  it('starts with the VM of vms, shutoff, and nothing found in the empty directory', async () => {
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { ivi: 'shutoff' });
    assert.deepEqual(await stack.client.getProperty('Backends'), { qemu: 'connected' });
  });

  it('shows a socket that appears as a VM, and ignores files that are not sockets', async () => {
    writeFileSync(dir.file('notasocket.qmp'), '');
    const since = signals.signals.length;
    await qemuIn('guest1');
    const s = await stateSignal(signals, 'guest1', 'running', since);
    // The directory was read after the file was made.
    assert.deepEqual(s.body[0], { guest1: 'running', ivi: 'shutoff' });
  });

  it('connects a VM of vms at once when its socket appears, and keeps its type', async () => {
    const since = signals.signals.length;
    await qemuIn('ivi');
    const s = await stateSignal(signals, 'ivi', 'running', since);
    assert.deepEqual(s.body[0], { guest1: 'running', ivi: 'running' });
    // The directory's change, not a retry, made it try.
    assert.match(stack.daemon.output(), /the socket changed; connecting now vm=ivi/);
    const vms = await stack.client.getProperty<Record<string, Record<string, string>>>('Vms');
    assert.equal(vms['ivi']!['type'], 'ivi');
    assert.equal(vms['guest1']!['type'], undefined);
  });

  it('drops a VM whose socket goes (QEMU ends), but keeps the VM of vms as shutoff', async () => {
    const [guest1, ivi] = qemus;
    let since = signals.signals.length;
    await guest1!.stop();
    await goneSignal(signals, 'guest1', since);
    since = signals.signals.length;
    await ivi!.stop();
    await stateSignal(signals, 'ivi', 'shutoff', since);
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { ivi: 'shutoff' });
  });

  it('shows the socket a killed QEMU leaves as shutoff until it is removed', async () => {
    let since = signals.signals.length;
    const q = await qemuIn('guest2');
    await stateSignal(signals, 'guest2', 'running', since);
    since = signals.signals.length;
    await q.kill('SIGKILL');
    await stateSignal(signals, 'guest2', 'shutoff', since);
    since = signals.signals.length;
    rmSync(dir.file('guest2.qmp'));
    await goneSignal(signals, 'guest2', since);
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { ivi: 'shutoff' });
  });
});

const isRoot = process.getuid?.() === 0;

describe(
  'qmp backend: a socket vmdevd may not open',
  {
    timeout: 120_000,
    skip: isRoot ? false : 'needs root: the daemon runs as root without the capability to override file permissions',
  },
  () => {
    let qemu: QemuProcess;
    let stack: Stack;
    let signals: SignalLog;

    before(async () => {
      qemu = await startQemu();
      chmodSync(qemu.socket('vmdevd'), 0o000);
      stack = await startStack({
        backends: [],
        extraBackends: [
          {
            id: 'qemu',
            plugin: 'qmp',
            vms: [{ name: 'locked', socket: qemu.socket('vmdevd') }],
            reconnectInitialMs: 100,
            reconnectMaxMs: 1000,
          },
        ],
        // Root without the capability to override file permissions, as the service user would be.
        daemon: { wrapper: ['setpriv', '--bounding-set', '-dac_override,-dac_read_search', '--'] },
      });
      signals = await stack.client.subscribeAll();
    });

    after(async () => {
      await stack?.stop();
      await qemu?.stop();
    });

    it('says so in Backends and in the log, and shows the VM as nostate', async () => {
      const backends = await stack.client.getProperty<Record<string, string>>('Backends');
      assert.match(
        backends['qemu']!,
        /^disconnected: permission denied on the QMP socket .*vmdevd\.qmp of VM "locked": vmdevd \(uid 0\) needs write access to it/,
      );
      assert.match(
        stack.daemon.output(),
        /error +backend qemu: cannot use the QMP socket vm=locked .*permission denied/,
      );
      assert.deepEqual(await stack.client.getProperty('TestProperty'), { locked: 'nostate' });
    });

    it('connects once the socket is opened up, and says it is connected', async () => {
      const since = signals.signals.length;
      chmodSync(qemu.socket('vmdevd'), 0o600);
      await stateSignal(signals, 'locked', 'running', since);
      await signals.waitFor(
        (s) => signals.signals.indexOf(s) >= since && backendsIn(s)?.['qemu'] === 'connected',
        20_000,
        'Backends connected',
      );
    });
  },
);
