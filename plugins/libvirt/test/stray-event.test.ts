/**
 * libvirt reuses device aliases: a DEVICE_REMOVED that comes after its
 * detach was already confirmed (from the domain XML) must not confirm a
 * later device with the same alias. Staged with a real libvirtd and QEMU,
 * and a proxy on libvirt's socket (test/harness/libvirt-proxy.ts) that
 * holds the events back and then the second detach's call:
 *
 * 1. events held, the SCSI disk sda (alias scsi0-0-0-0) is detached through
 *    vmdevd: libvirt's call returns, the disk is gone from the XML, and
 *    vmdevd confirms it from there; its DEVICE_REMOVED waits in the proxy;
 * 2. a new disk is attached at sda (same alias), directly, not through vmdevd;
 * 3. vmdevd is asked to detach it; its call to libvirtd waits in the proxy;
 * 4. the first disk's DEVICE_REMOVED is let through: the second disk is
 *    still attached, libvirtd has not even been asked to remove it, and it
 *    must not be reported detached;
 * 5. the call is let through: libvirtd removes it, and its own event
 *    confirms it, once.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { before, describe, it } from 'node:test';
import type { Signal, SignalLog } from 'vmdevd/testing/bus-client';
import type { LibvirtProxy } from 'vmdevd/testing/libvirt-proxy';
import type { Stack } from 'vmdevd/testing/stack';
import type { TestVm } from 'vmdevd/testing/test-vms';
import { type Connection, constants as C } from '../src/binding.js';
import { useProxiedVm } from './proxied-vm.js';

/** remote_protocol.x: REMOTE_PROC_DOMAIN_DETACH_DEVICE_FLAGS. */
const PROC_DETACH_DEVICE_FLAGS = 161;
/** remote_protocol.x: REMOTE_PROC_DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED. */
const PROC_EVENT_DEVICE_REMOVED = 333;

const hasSda = (xml: string) => /<target dev='sda'/.test(xml);

describe('a late DEVICE_REMOVED and a reused alias', { timeout: 300_000 }, () => {
  const env = useProxiedVm({ type: `stray-${randomBytes(3).toString('hex')}` });
  let proxy: LibvirtProxy;
  let direct: Connection;
  let vm: TestVm;
  let stack: Stack;
  let signals: SignalLog;

  before(async () => {
    ({ proxy, direct, vm } = env);
    stack = await env.startVmdevd(60);
    signals = await stack.client.subscribeAll();
    // vmdevd sees the VM: it is connected through the proxy.
    const states = await stack.client.getProperty<Record<string, string>>('TestProperty');
    if (states[vm.name] !== 'running') {
      await signals.waitFor(
        (s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)[vm.name] === 'running',
        60_000,
        `${vm.name} in TestSignal (Backends: ${JSON.stringify(await stack.client.getProperty('Backends'))})`,
      );
    }
  });

  const outcomes = (label: string): Signal[] =>
    signals.signals.filter(
      (s) => (s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed') && s.body[1] === label,
    );
  const outcome = (label: string) =>
    signals.waitFor(
      (s) => (s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed') && s.body[1] === label,
      90_000,
      `the outcome of ${label}`,
    );

  it('does not take the earlier disk’s event for the later one’s removal', async () => {
    // 1. The first disk, confirmed from the XML while its event waits.
    proxy.holdEvents();
    assert.equal(await stack.client.testMethod(vm.name, { first: ['type=disk', 'target=sda'] }), true);
    assert.equal((await outcome('first')).member, 'DeviceDetached');
    assert.ok(!hasSda(await direct.getXml(vm.uuid)), 'the first disk is gone');
    const removedHeld = proxy.seen.filter(
      (p) => p.direction === 'answer' && p.header.procedure === PROC_EVENT_DEVICE_REMOVED,
    ).length;
    assert.equal(removedHeld, 1, 'its DEVICE_REMOVED came, and waits in the proxy');

    // 2. A new disk at sda, with the same alias.
    await direct.attachDevice(vm.uuid, vm.devices.scsiDisk.xml, C.VIR_DOMAIN_AFFECT_LIVE);
    const xml = await direct.getXml(vm.uuid);
    assert.ok(hasSda(xml), 'the second disk is attached');
    assert.match(xml, new RegExp(`<alias name='${vm.devices.scsiDisk.alias}'/>`), 'with the alias of the first');

    // 3. vmdevd's detach of it: the call waits in the proxy.
    proxy.holdCalls(PROC_DETACH_DEVICE_FLAGS);
    assert.equal(await stack.client.testMethod(vm.name, { second: ['type=disk', 'target=sda'] }), true);
    await proxy.until(() => proxy.heldCalls === 1, 'vmdevd to call virDomainDetachDeviceFlags');

    // 4. The first disk's event arrives. Two later calls' replies: libvirt
    // dispatches a read event on the loop iteration after it read it, so by
    // the second reply vmdevd has handled it (and sent any signal before).
    assert.ok((await proxy.releaseEvents()) >= 1);
    await stack.client.getProperty('TestProperty');
    await stack.client.getProperty('TestProperty');
    assert.deepEqual(
      outcomes('second').map((s) => s.member),
      [],
      'not reported detached: libvirtd has not even been asked to remove it',
    );
    assert.ok(hasSda(await direct.getXml(vm.uuid)), 'the second disk is still attached');

    // 5. The call goes through: libvirtd removes it; its own event confirms it, once.
    assert.equal(await proxy.releaseCalls(), 1);
    assert.equal((await outcome('second')).member, 'DeviceDetached');
    assert.ok(!hasSda(await direct.getXml(vm.uuid)), 'the second disk is gone');
    await stack.client.getProperty('TestProperty');
    assert.equal(outcomes('second').length, 1, 'one outcome');
    assert.equal(outcomes('first').length, 1, 'one outcome for the first disk too');
  });
});
