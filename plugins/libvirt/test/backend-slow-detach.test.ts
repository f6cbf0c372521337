/**
 * No call waits behind a slow detach: with eight VMs each in the middle of
 * a PCI detach that libvirt holds for its guest (about 5 s inside the call;
 * no guest ever releases the NIC), a USB detach on a ninth VM and a state
 * write both complete while the eight are still pending.
 *
 * "Still pending" is shown by order, not by time: the detach timeout is 4 s,
 * shorter than libvirt's own 5 s wait, so every NIC detach is still inside
 * its libvirt call when its Timeout outcome is sent, and the USB detach and
 * the state write must both be done before the first of those outcomes.
 * With calls on a shared pool of four threads, or on one libvirt
 * connection (libvirtd serves five requests of a client at a time), the
 * USB detach would wait for NIC calls to return, after their timeouts.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Signal, SignalLog } from 'vmdevd/testing/bus-client';
import { startLibvirtd, type Libvirtd } from 'vmdevd/testing/libvirtd';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { createTestVm, type TestVm } from 'vmdevd/testing/test-vms';
import { Connection } from '../src/binding.js';

const E = 'org.example.dbustest.Error.';
const TIMEOUT_S = 4;
const SLOW = 8;

const isOutcome = (s: Signal) => s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed';

describe('a slow detach stalls no other call', { timeout: 300_000 }, () => {
  let libvirtd: Libvirtd;
  let conn: Connection;
  let stack: Stack;
  let signals: SignalLog;
  const vms: TestVm[] = [];
  const tag = randomBytes(3).toString('hex');

  before(async () => {
    libvirtd = await startLibvirtd();
    conn = await Connection.open(libvirtd.uri);
    for (let i = 0; i <= SLOW; i++) {
      vms.push(await createTestVm(conn, { name: `vmdevd-slow-${tag}-${i}`, type: `slow-${tag}` }));
    }
    stack = await startStack({
      backends: [],
      extraBackends: [{ id: 'local', plugin: 'libvirt', uri: libvirtd.uri }],
      config: { detachTimeoutSeconds: TIMEOUT_S },
    });
    signals = await stack.client.subscribeAll();
    // The daemon is ready once its first map is complete.
    const states = await stack.client.getProperty<Record<string, string>>('TestProperty');
    for (const vm of vms) assert.equal(states[vm.name], 'running', vm.name);
  });

  after(async () => {
    await stack?.stop();
    for (const vm of vms) await vm.remove().catch(() => undefined);
    if (conn) await conn.close();
    await libvirtd?.stop();
  });

  it('a USB detach on a ninth VM and a state write complete while eight PCI detaches are pending', async () => {
    const slow = vms.slice(0, SLOW);
    const ninth = vms[SLOW]!;
    const from = signals.signals.length;
    for (const vm of slow) {
      assert.equal(
        await stack.client.testMethod(vm.name, { nic: ['type=interface', `mac=${vm.devices.nic.mac}`] }),
        true,
      );
    }
    const [usbAccepted, written] = await Promise.all([
      stack.client.testMethod(ninth.name, { usb: ['type=disk', 'target=sdb'] }),
      stack.client.setProperty('TestProperty', 'a{ss}', { [ninth.name]: 'paused' }).then(() => performance.now()),
    ]);
    assert.equal(usbAccepted, true);
    const usb = await signals.waitFor(
      (s) => isOutcome(s) && s.body[0] === ninth.name && s.body[1] === 'usb',
      60_000,
      'the USB outcome',
    );
    assert.equal(usb.member, 'DeviceDetached', `the USB detach: ${JSON.stringify(usb.body)}`);
    const paused = await signals.waitFor(
      (s) =>
        s.member === 'TestSignal' &&
        (s.body[0] as Record<string, string>)[ninth.name] === 'paused' &&
        signals.signals.indexOf(s) >= from,
      60_000,
      'the ninth VM paused in TestSignal',
    );

    const nics = await signals.waitForCount(
      (s) => isOutcome(s) && s.body[1] === 'nic' && slow.some((vm) => vm.name === s.body[0]),
      SLOW,
      (TIMEOUT_S + 30) * 1000,
    );
    for (const nic of nics) {
      assert.equal(nic.member, 'DeviceDetachFailed', `${String(nic.body[0])}: ${String(nic.body[3])}`);
      assert.equal(nic.body[2], `${E}Timeout`);
    }
    const firstNic = Math.min(...nics.map((s) => signals.signals.indexOf(s)));
    assert.ok(signals.signals.indexOf(usb) < firstNic, 'the USB detach was confirmed while the eight were pending');
    assert.ok(signals.signals.indexOf(paused) < firstNic, 'the state change was seen while the eight were pending');
    assert.ok(
      written < Math.min(...nics.map((s) => s.at)),
      'the state write was answered while the eight were pending',
    );
  });
});
