/**
 * The libvirt backend in the real daemon, over D-Bus, on qemu:///system
 * with small QEMU VMs: detaches confirmed by libvirt, the PCI NIC that no
 * guest releases, ordering, state writes, and libvirtd restarting.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Signal, SignalLog } from 'vmdevd/testing/bus-client';
import { startLibvirtd, type Libvirtd } from 'vmdevd/testing/libvirtd';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { createTestVm, type TestVm } from 'vmdevd/testing/test-vms';
import { Connection } from '../src/binding.js';
import { backendsIn } from './support.js';

const E = 'org.example.dbustest.Error.';
const TIMEOUT_S = 8;

function targets(xml: string): string[] {
  return [...xml.matchAll(/<target dev='([^']+)'/g)].map((m) => m[1]!);
}

/** The outcome signal of `label`; the timeout only guards against a hang. */
function outcome(log: SignalLog, vm: string, label: string, timeoutMs = 60_000): Promise<Signal> {
  return log.waitFor(
    (s) =>
      (s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed') && s.body[0] === vm && s.body[1] === label,
    timeoutMs,
    `outcome of ${label}`,
  );
}

function outcomesOf(log: SignalLog, label: string): Signal[] {
  return log.signals.filter(
    (s) => (s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed') && s.body[1] === label,
  );
}

describe('libvirt backend on qemu:///system', { timeout: 300_000 }, () => {
  let libvirtd: Libvirtd;
  let conn: Connection;
  let stack: Stack;
  let signals: SignalLog;
  const type = `ivi-${randomBytes(3).toString('hex')}`;
  const vms: TestVm[] = [];
  const newVm = async (options: { start?: boolean; type?: string } = {}) => {
    const vm = await createTestVm(conn, {
      type: options.type ?? `other-${randomBytes(3).toString('hex')}`,
      start: options.start,
    });
    vms.push(vm);
    return vm;
  };
  const state = async (name: string) => (await stack.client.getProperty<Record<string, string>>('TestProperty'))[name];
  /** A TestSignal showing `name` in state `want`; with `since`, only one that arrived after that many signals. */
  const waitState = (name: string, want: string, since = 0) =>
    signals.waitFor(
      (s) =>
        s.member === 'TestSignal' &&
        (s.body[0] as Record<string, string>)[name] === want &&
        signals.signals.indexOf(s) >= since,
      60_000,
      `TestSignal with ${name}=${want}`,
    );

  before(async () => {
    libvirtd = await startLibvirtd();
    conn = await Connection.open(libvirtd.uri);
    stack = await startStack({
      backends: [],
      extraBackends: [
        { id: 'local', plugin: 'libvirt', uri: libvirtd.uri, reconnectInitialMs: 200, reconnectMaxMs: 1000 },
      ],
      config: { detachTimeoutSeconds: TIMEOUT_S },
    });
    signals = await stack.client.subscribeAll();
  });

  after(async () => {
    await stack?.stop();
    // The VMs' own connection may have died with a libvirtd restart: remove them through the current one.
    for (const vm of vms) {
      await conn?.destroy(vm.uuid).catch(() => undefined);
      await conn?.undefine(vm.uuid).catch(() => undefined);
      await vm.remove().catch(() => undefined);
    }
    if (conn) await conn.close();
    await libvirtd?.stop();
  });

  it('shows a new VM in TestProperty, with its type from the metadata', async () => {
    const vm = await newVm({ type });
    await waitState(vm.name, 'running');
    const details = (await stack.client.getProperty<Record<string, Record<string, string>>>('Vms'))[vm.name]!;
    assert.deepEqual(details, { name: vm.name, state: 'running', backend: 'local', uuid: vm.uuid, type });
  });

  it('finds the VM by its type and detaches a SCSI and a USB disk, confirmed by libvirt', async () => {
    const vm = vms[0]!;
    assert.equal(
      await stack.client.testMethod(type, { scsi: ['type=disk', 'target=sda'], usb: ['type=disk', 'target=sdb'] }),
      true,
    );
    assert.equal((await outcome(signals, vm.name, 'scsi')).member, 'DeviceDetached');
    assert.equal((await outcome(signals, vm.name, 'usb')).member, 'DeviceDetached');
    const left = targets(await conn.getXml(vm.uuid));
    assert.ok(!left.includes('sda') && !left.includes('sdb'), `the disks are gone: ${left.join(',')}`);
  });

  it('reports a device the VM does not have as DeviceNotFound', async () => {
    const vm = vms[0]!;
    assert.equal(
      await stack.client.testMethod(vm.name, { ghost: ['type=disk', 'target=sdz'], gone: ['type=disk', 'target=sda'] }),
      true,
    );
    for (const label of ['ghost', 'gone']) {
      const s = await outcome(signals, vm.name, label);
      assert.equal(s.member, 'DeviceDetachFailed');
      assert.equal(s.body[2], `${E}DeviceNotFound`);
    }
  });

  it('ends the PCI NIC, which no guest releases, with Timeout, and it stays attached', async () => {
    const vm = vms[0]!;
    const t0 = performance.now();
    assert.equal(
      await stack.client.testMethod(vm.name, { nic: ['type=interface', `mac=${vm.devices.nic.mac}`] }),
      true,
    );
    const s = await outcome(signals, vm.name, 'nic', (TIMEOUT_S + 10) * 1000);
    assert.equal(s.member, 'DeviceDetachFailed');
    assert.equal(s.body[2], `${E}Timeout`);
    assert.match(s.body[3] as string, /still attached after 8 s/);
    assert.ok(s.at - t0 >= TIMEOUT_S * 1000, 'not before the timeout');
    assert.match(await conn.getXml(vm.uuid), new RegExp(vm.devices.nic.mac));
    // A later call's reply: every signal the daemon sent before it has arrived.
    await stack.client.getProperty('TestProperty');
    assert.equal(outcomesOf(signals, 'nic').length, 1);
  });

  it('detaches USB and SCSI first when the PCI NIC is asked for first', async (t) => {
    const vm = await newVm();
    await waitState(vm.name, 'running');
    assert.equal(
      await stack.client.testMethod(vm.name, {
        nic2: ['type=interface', `mac=${vm.devices.nic.mac}`],
        scsi2: ['type=disk', 'target=sda'],
        usb2: ['type=disk', 'target=sdb'],
      }),
      true,
    );
    const scsi = await outcome(signals, vm.name, 'scsi2');
    const usb = await outcome(signals, vm.name, 'usb2');
    assert.equal(scsi.member, 'DeviceDetached');
    assert.equal(usb.member, 'DeviceDetached');
    const nic = await outcome(signals, vm.name, 'nic2', (TIMEOUT_S + 60) * 1000);
    assert.equal(nic.body[2], `${E}Timeout`);
    // The NIC's clock starts when its detach is issued, and it is issued
    // only once the disks' detaches are done: its Timeout comes at least
    // TIMEOUT_S after their outcomes (less what delivering them took, for
    // which 2 s are left). Had the NIC gone first, the disks would have
    // waited out libvirt's 5 s wait for the guest: about TIMEOUT_S - 5 s.
    const gap = nic.at - Math.max(scsi.at, usb.at);
    t.diagnostic(`the NIC's Timeout came ${Math.round(gap)} ms after the disks' outcomes`);
    assert.ok(
      gap >= (TIMEOUT_S - 2) * 1000,
      `the disks waited for the NIC: its Timeout came ${Math.round(gap)} ms after them`,
    );
  });

  it('detaches by alias', async () => {
    const vm = await newVm();
    await waitState(vm.name, 'running');
    assert.equal(
      await stack.client.testMethod(vm.name, { byAlias: ['type=alias', `name=${vm.devices.usbDisk.alias}`] }),
      true,
    );
    assert.equal((await outcome(signals, vm.name, 'byAlias')).member, 'DeviceDetached');
    assert.ok(!targets(await conn.getXml(vm.uuid)).includes('sdb'));
  });

  it('without persistent=yes leaves the definition alone; with it, removes the device there too', async () => {
    const vm = vms.at(-1)!;
    assert.equal(await stack.client.testMethod(vm.name, { live: ['type=disk', 'target=sda'] }), true);
    assert.equal((await outcome(signals, vm.name, 'live')).member, 'DeviceDetached');
    assert.ok(targets(await conn.getXml(vm.uuid, { inactive: true })).includes('sda'), 'still in the definition');
    const other = await newVm();
    await waitState(other.name, 'running');
    assert.equal(
      await stack.client.testMethod(other.name, { drop: ['type=disk', 'target=sda', 'persistent=yes'] }),
      true,
    );
    assert.equal((await outcome(signals, other.name, 'drop')).member, 'DeviceDetached');
    assert.ok(!targets(await conn.getXml(other.uuid)).includes('sda'), 'gone from the running VM');
    assert.ok(!targets(await conn.getXml(other.uuid, { inactive: true })).includes('sda'), 'gone from the definition');
  });

  it('detaches from the definition of a shut-off VM', async () => {
    const vm = await newVm({ start: false });
    await waitState(vm.name, 'shutoff');
    assert.equal(await stack.client.testMethod(vm.name, { off: ['type=disk', 'target=sdb'] }), true);
    assert.equal((await outcome(signals, vm.name, 'off')).member, 'DeviceDetached');
    assert.ok(!targets(await conn.getXml(vm.uuid, { inactive: true })).includes('sdb'));
  });

  it('pauses, resumes, powers off and starts a VM through TestProperty; TestSignal shows each transition', async () => {
    const vm = vms[0]!;
    for (const [desired, shown] of [
      ['paused', 'paused'],
      ['running', 'running'],
      ['shutoff', 'shutoff'],
      ['running', 'running'],
    ] as const) {
      // Only a signal after the write counts: the VM was in some of these
      // states before, and a power-off passes through shutdown.
      const since = signals.signals.length;
      await stack.client.setProperty('TestProperty', 'a{ss}', { [vm.name]: desired });
      await waitState(vm.name, shown, since);
      assert.equal(await state(vm.name), shown);
    }
    const since = signals.signals.length;
    await stack.client.setProperty('TestProperty', 'a{ss}', { [vm.name]: 'shutoff' });
    await waitState(vm.name, 'shutoff', since);
    await assert.rejects(
      stack.client.setProperty('TestProperty', 'a{ss}', { [vm.name]: 'paused' }),
      (err: { type: string; text: string }) => {
        assert.equal(err.type, `${E}NotSupported`);
        assert.match(err.text, /is shutoff: only a running VM can be paused/);
        return true;
      },
    );
  });

  it('survives libvirtd restarting: disconnected, back, republished, and the pending detach gets one outcome', async (t) => {
    if (!libvirtd.owned) {
      t.skip('libvirtd was not started by the test, so it is not restarted');
      return;
    }
    const vm = await newVm();
    await waitState(vm.name, 'running');
    assert.equal(
      await stack.client.testMethod(vm.name, { pending: ['type=interface', `mac=${vm.devices.nic.mac}`] }),
      true,
    );
    // libvirt runs one device operation per domain at a time: a disk asked
    // for after the NIC (in flight by then) gets its outcome once libvirt's
    // call for the NIC has returned, after its wait for the guest; the NIC's
    // detach then waits only for the event.
    assert.equal(await stack.client.testMethod(vm.name, { behind: ['type=disk', 'target=sdb'] }), true);
    await outcome(signals, vm.name, 'behind');
    const from = signals.signals.length;
    await libvirtd.restart();
    const down = await signals.waitFor(
      (s) =>
        signals.signals.indexOf(s) >= from && /^disconnected: lost the connection/.test(backendsIn(s)?.['local'] ?? ''),
      60_000,
      'Backends disconnected',
    );
    await signals.waitFor(
      (s) => signals.signals.indexOf(s) > signals.signals.indexOf(down) && backendsIn(s)?.['local'] === 'connected',
      60_000,
      'Backends connected again',
    );
    const republished = await signals.waitFor(
      (s) => signals.signals.indexOf(s) >= from && s.member === 'TestSignal',
      30_000,
      'the map republished',
    );
    assert.equal((republished.body[0] as Record<string, string>)[vm.name], 'running');
    const s = await outcome(signals, vm.name, 'pending', (TIMEOUT_S + 20) * 1000);
    assert.equal(s.member, 'DeviceDetachFailed');
    assert.ok([`${E}Timeout`, `${E}BackendUnavailable`].includes(s.body[2] as string), String(s.body[2]));
    // And it works as before.
    await conn.close().catch(() => undefined);
    conn = await Connection.open(libvirtd.uri);
    assert.equal(await stack.client.testMethod(vm.name, { after: ['type=disk', 'target=sda'] }), true);
    assert.equal((await outcome(signals, vm.name, 'after')).member, 'DeviceDetached');
    // A later outcome: any second one of the pending NIC, sent before it, has arrived.
    assert.equal(outcomesOf(signals, 'pending').length, 1, 'exactly one outcome');
  });
});
