/**
 * VM states through the real daemon, from real QEMU processes: what
 * query-status says at connect and what the events say after, writes of
 * TestProperty, and QEMU going away and coming back on the same socket.
 *
 * States only a guest can cause (powered off, panicked, suspended) come
 * from a boot sector of a few instructions (see the QEMU harness), started
 * with -S so that the daemon is connected before the guest acts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { SignalLog } from 'vmdevd/testing/bus-client';
import { startQemu, type QemuOptions, type QemuProcess } from 'vmdevd/testing/qemu-process';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { QmpClient, type QmpEvent } from '../src/qmp-client.js';
import { barrier, E, outcome, stateSignal, until } from './support.js';

interface Vm {
  readonly qemu: QemuProcess;
  readonly monitor: QmpClient;
  readonly events: QmpEvent[];
}

async function status(vm: Vm): Promise<string> {
  return ((await vm.monitor.execute('query-status')) as { status: string }).status;
}

describe('qmp backend: states', { timeout: 300_000 }, () => {
  const vms: Record<string, Vm> = {};
  let stack: Stack | undefined;
  let signals: SignalLog;

  const start = async () => {
    stack = await startStack({
      backends: [],
      extraBackends: [
        {
          id: 'qemu',
          plugin: 'qmp',
          vms: Object.entries(vms).map(([name, vm]) => ({ name, socket: vm.qemu.socket('vmdevd') })),
        },
      ],
    });
    signals = await stack.client.subscribeAll();
    return stack;
  };

  before(async () => {
    const specs: Record<string, QemuOptions> = {
      plain: {},
      off: { guest: 'poweroff', paused: true },
      panic: { guest: 'panic', paused: true },
      susp: { guest: 'suspend', paused: true },
      mig: { args: ['-incoming', 'defer'] },
    };
    for (const [name, options] of Object.entries(specs)) {
      const qemu = await startQemu(options);
      const events: QmpEvent[] = [];
      vms[name] = {
        qemu,
        events,
        monitor: await QmpClient.connect(qemu.socket('test'), { onEvent: (e) => events.push(e) }),
      };
    }
    await start();
  });

  after(async () => {
    await stack?.stop();
    for (const vm of Object.values(vms)) {
      vm.monitor.close();
      await vm.qemu.stop();
    }
  });

  it('shows what query-status says at connect: running, prelaunch and inmigrate as paused', async () => {
    assert.deepEqual(await stack!.client.getProperty('TestProperty'), {
      mig: 'paused',
      off: 'paused',
      panic: 'paused',
      plain: 'running',
      susp: 'paused',
    });
    assert.equal(await status(vms['mig']!), 'inmigrate');
    assert.equal(await status(vms['off']!), 'prelaunch');
  });

  it('follows stop and cont from another monitor in TestSignal', async () => {
    const since = signals.signals.length;
    await vms['plain']!.monitor.execute('stop');
    await stateSignal(signals, 'plain', 'paused', since);
    await vms['plain']!.monitor.execute('cont');
    await stateSignal(signals, 'plain', 'running', since);
  });

  it('follows a guest that powers off, panics or suspends: shutdown, crashed, pmsuspended', async () => {
    const since = signals.signals.length;
    for (const name of ['off', 'panic', 'susp']) await vms[name]!.monitor.execute('cont');
    await stateSignal(signals, 'off', 'shutdown', since);
    await stateSignal(signals, 'panic', 'crashed', since);
    await stateSignal(signals, 'susp', 'pmsuspended', since);
    assert.equal(await status(vms['off']!), 'shutdown');
    assert.equal(await status(vms['panic']!), 'guest-panicked');
    assert.equal(await status(vms['susp']!), 'suspended');
    // QEMU stops the CPUs after a shutdown and a panic: that STOP does not make them paused.
    await barrier(stack!);
    assert.equal((await stack!.client.getProperty<Record<string, string>>('TestProperty'))['off'], 'shutdown');
    assert.equal((await stack!.client.getProperty<Record<string, string>>('TestProperty'))['panic'], 'crashed');
  });

  it('reads the same states from query-status when the daemon connects anew', async () => {
    await stack!.stop();
    stack = undefined;
    await start();
    const states = await stack!.client.getProperty<Record<string, string>>('TestProperty');
    assert.equal(states['off'], 'shutdown');
    assert.equal(states['panic'], 'crashed');
    assert.equal(states['susp'], 'pmsuspended');
  });

  it('refuses a write that does not apply, saying why', async () => {
    await assert.rejects(
      stack!.client.setProperty('TestProperty', 'a{ss}', { susp: 'paused' }),
      (err: { type: string; text: string }) => {
        assert.equal(err.type, `${E}NotSupported`);
        assert.match(err.text, /VM "susp" is pmsuspended: only a running VM can be paused/);
        return true;
      },
    );
  });

  it('pauses with stop and resumes with cont', async () => {
    let since = signals.signals.length;
    await stack!.client.setProperty('TestProperty', 'a{ss}', { plain: 'paused' });
    await stateSignal(signals, 'plain', 'paused', since);
    assert.equal(await status(vms['plain']!), 'paused');
    since = signals.signals.length;
    await stack!.client.setProperty('TestProperty', 'a{ss}', { plain: 'running' });
    await stateSignal(signals, 'plain', 'running', since);
    assert.equal(await status(vms['plain']!), 'running');
  });

  it('runs a shut-down or panicked guest again (system_reset, then cont) and wakes a suspended one', async () => {
    const since = signals.signals.length;
    await stack!.client.setProperty('TestProperty', 'a{ss}', { off: 'running', panic: 'running', susp: 'running' });
    for (const name of ['off', 'panic', 'susp']) {
      await stateSignal(signals, name, 'running', since);
      assert.equal(await status(vms[name]!), 'running', name);
    }
    const events = (name: string) => vms[name]!.events.map((e) => e.event);
    assert.ok(events('off').includes('RESET') && events('panic').includes('RESET'), 'reset first');
    assert.ok(events('susp').includes('WAKEUP'), 'woken with system_wakeup');
  });

  it('asks the guest to shut down with system_powerdown (no guest here, so it keeps running)', async () => {
    const seen = vms['plain']!.events.length;
    await stack!.client.setProperty('TestProperty', 'a{ss}', { plain: 'shutdown' });
    await until(() => vms['plain']!.events.slice(seen).some((e) => e.event === 'POWERDOWN'), 'POWERDOWN');
    await barrier(stack!);
    assert.equal((await stack!.client.getProperty<Record<string, string>>('TestProperty'))['plain'], 'running');
  });

  it('powers off with quit: QEMU exits and the VM is shutoff', async () => {
    const since = signals.signals.length;
    await stack!.client.setProperty('TestProperty', 'a{ss}', { mig: 'shutoff' });
    assert.equal(await vms['mig']!.qemu.exited(), 0);
    await stateSignal(signals, 'mig', 'shutoff', since);
  });
});

describe('qmp backend: QEMU going away and coming back', { timeout: 300_000 }, () => {
  const NIC = ['pcie-root-port,id=rp1,chassis=1', 'virtio-net-pci,id=net0,mac=52:54:00:71:00:09,bus=rp1'];
  const TIMEOUT_S = 6;
  const qemus: QemuProcess[] = [];
  let first: QemuProcess;
  let stack: Stack;
  let signals: SignalLog;

  /** QEMU again on the first one's sockets. */
  const again = async (options: QemuOptions) => {
    const q = await startQemu({
      ...options,
      monitors: { vmdevd: first.socket('vmdevd'), test: first.socket('test') },
    });
    qemus.push(q);
    return q;
  };

  before(async () => {
    first = await startQemu({ devices: NIC });
    qemus.push(first);
    stack = await startStack({
      backends: [],
      extraBackends: [
        {
          id: 'qemu',
          plugin: 'qmp',
          vms: [
            { name: 'vm', socket: first.socket('vmdevd') },
            { name: 'never', socket: first.dir.file('never.qmp') },
          ],
          reconnectInitialMs: 100,
          reconnectMaxMs: 1000,
        },
      ],
      config: { detachTimeoutSeconds: TIMEOUT_S },
    });
    signals = await stack.client.subscribeAll();
  });

  after(async () => {
    await stack?.stop();
    // The later ones use the first one's directory, which its stop() removes.
    for (const q of qemus.reverse()) await q.stop();
  });

  it('shows a VM whose socket does not exist as shutoff, with the backend connected', async () => {
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { never: 'shutoff', vm: 'running' });
    assert.deepEqual(await stack.client.getProperty('Backends'), { qemu: 'connected' });
  });

  it('shows shutoff when QEMU is killed; a detach pending then ends BackendUnavailable at its timeout', async () => {
    assert.equal(await stack.client.testMethod('vm', { nic: ['type=alias', 'name=net0'] }), true);
    await stack.daemon.waitForOutput(/device_del accepted vm=vm device=net0/);
    const since = signals.signals.length;
    await first.kill('SIGKILL');
    await stateSignal(signals, 'vm', 'shutoff', since);
    const s = await outcome(signals, 'vm', 'nic', (TIMEOUT_S + 20) * 1000);
    assert.equal(s.body[2], `${E}BackendUnavailable`);
    assert.match(
      s.body[3] as string,
      /VM "vm" cannot be reached \(.*\); whether the device net0 of VM "vm" was removed is unknown/,
    );
  });

  it('refuses to start it, and to detach from it, while no QEMU answers', async () => {
    await assert.rejects(
      stack.client.setProperty('TestProperty', 'a{ss}', { vm: 'running' }),
      (err: { type: string; text: string }) => {
        assert.equal(err.type, `${E}NotSupported`);
        assert.match(
          err.text,
          /VM "vm" is shutoff: cannot connect to the QMP socket .*: connection refused \(no QEMU is listening there\); vmdevd does not start QEMU processes/,
        );
        return true;
      },
    );
    assert.equal(await stack.client.testMethod('vm', { off: ['type=alias', 'name=net0'] }), true);
    const s = await outcome(signals, 'vm', 'off');
    assert.equal(s.body[2], `${E}BackendUnavailable`);
    assert.match(s.body[3] as string, /VM "vm" is shutoff: cannot connect to the QMP socket .*: connection refused/);
  });

  it('reconnects to a QEMU started again on the same socket, and reads its state from query-status', async () => {
    const since = signals.signals.length;
    await again({ devices: NIC, paused: true });
    await stateSignal(signals, 'vm', 'paused', since);
  });

  it('checks a detach pending across a restart against the device tree after the reconnect', async () => {
    const second = qemus.at(-1)!;
    const accepted = () => stack.daemon.output().match(/device_del accepted vm=vm device=net0/g)?.length ?? 0;
    const before = accepted();
    assert.equal(await stack.client.testMethod('vm', { nic2: ['type=interface', 'mac=52:54:00:71:00:09'] }), true);
    await until(() => accepted() > before, 'device_del accepted');
    await second.kill('SIGKILL');
    // The new QEMU has no net0: the device is gone, though no event said so.
    const since = signals.signals.length;
    await again({});
    await stateSignal(signals, 'vm', 'running', since);
    const s = await outcome(signals, 'vm', 'nic2');
    assert.equal(s.member, 'DeviceDetached', JSON.stringify(s.body));
  });
});
