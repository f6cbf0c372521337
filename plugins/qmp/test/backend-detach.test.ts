/**
 * Detaching through the real daemon, over D-Bus, from a real QEMU run by
 * the test (no libvirt, no guest OS): disks QEMU removes on its own, the
 * ways a device is named, the PCI NIC no guest releases, and the errors.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { SignalLog } from 'vmdevd/testing/bus-client';
import { startQemu, type QemuProcess } from 'vmdevd/testing/qemu-process';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { QmpClient } from '../src/qmp-client.js';
import { barrier, E, outcome, outcomesOf, peripheralIds, until } from './support.js';

const TIMEOUT_S = 4;
const NIC_MAC = '52:54:00:71:00:01';
const USB_NIC_MAC = '52:54:00:71:00:02';

describe('qmp backend: detach on QEMU', { timeout: 240_000 }, () => {
  let qemu: QemuProcess;
  let monitor: QmpClient;
  let stack: Stack;
  let signals: SignalLog;
  const type = `ivi-${randomBytes(3).toString('hex')}`;

  before(async () => {
    qemu = await startQemu({
      drives: ['drive-scsi0', 'drive-scsi1', 'drive-usb0'],
      // A block node of -blockdev, named by its node name only.
      args: ['-blockdev', 'driver=null-co,node-name=nulldisk,size=1048576'],
      devices: [
        'virtio-scsi-pci,id=scsi,addr=0x5',
        'scsi-hd,drive=drive-scsi0,id=scsi0',
        'scsi-hd,drive=drive-scsi1,id=scsi1',
        'qemu-xhci,id=xhci',
        'usb-storage,drive=drive-usb0,id=usbstor0',
        `usb-net,id=usbnet0,mac=${USB_NIC_MAC}`,
        'usb-host,id=uh0,vendorid=0x1234,productid=0x5678',
        'usb-storage,drive=nulldisk,id=usbstor1',
        'pcie-root-port,id=rp1,chassis=1',
        `virtio-net-pci,id=net0,mac=${NIC_MAC},bus=rp1`,
      ],
    });
    monitor = await QmpClient.connect(qemu.socket('test'));
    stack = await startStack({
      backends: [],
      extraBackends: [{ id: 'qemu', plugin: 'qmp', vms: [{ name: 'ivi', type, socket: qemu.socket('vmdevd') }] }],
      config: { detachTimeoutSeconds: TIMEOUT_S },
    });
    signals = await stack.client.subscribeAll();
  });

  after(async () => {
    await stack?.stop();
    monitor?.close();
    await qemu?.stop();
  });

  it('shows the VM running, with its type, and the backend connected', async () => {
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { ivi: 'running' });
    assert.deepEqual(await stack.client.getProperty('Backends'), { qemu: 'connected' });
    const details = (await stack.client.getProperty<Record<string, Record<string, string>>>('Vms'))['ivi'];
    assert.deepEqual(details, { name: 'ivi', state: 'running', backend: 'qemu', type });
  });

  it('lists the disks, NICs and host devices by QEMU id (GetDevices), nothing else', async () => {
    const [listed] = await stack.client.call({ member: 'GetDevices', signature: 's', body: ['ivi'] });
    const devices = listed as Record<string, string[]>;
    const ids = await peripheralIds(monitor);
    for (const [label, tokens] of Object.entries(devices)) {
      assert.ok(ids.includes(label), `${label} is a device of QEMU's tree`);
      assert.deepEqual(tokens, ['type=alias', `name=${label}`]);
    }
    for (const disk of ['scsi0', 'usbstor0']) assert.ok(disk in devices, `${disk} is listed`);
    for (const controller of ['xhci']) assert.ok(!(controller in devices), `${controller} is not listed`);
  });

  it('refuses descriptive tokens it cannot check against QEMU', async () => {
    assert.equal(await stack.client.testMethod(type, { described: ['type=disk', 'target=scsi1', 'bus=scsi'] }), true);
    const failed = await outcome(signals, 'ivi', 'described');
    assert.equal(failed.member, 'DeviceDetachFailed');
    assert.deepEqual(failed.body.slice(2, 3), ['org.example.dbustest.Error.NotSupported']);
    assert.match(failed.body[3] as string, /cannot check bus against QEMU/);
  });

  it('detaches a SCSI disk and a USB disk by device id: one DeviceDetached each, both gone from QEMU', async () => {
    assert.equal(
      await stack.client.testMethod(type, {
        scsi: ['type=disk', 'target=scsi0'],
        usb: ['type=disk', 'target=usbstor0'],
      }),
      true,
    );
    assert.equal((await outcome(signals, 'ivi', 'scsi')).member, 'DeviceDetached');
    assert.equal((await outcome(signals, 'ivi', 'usb')).member, 'DeviceDetached');
    const left = await peripheralIds(monitor);
    assert.ok(!left.includes('scsi0') && !left.includes('usbstor0'), left.join(','));
    assert.ok(left.includes('scsi1') && left.includes('xhci'), 'nothing else went');
    await barrier(stack);
    assert.equal(outcomesOf(signals, 'scsi').length, 1);
    assert.equal(outcomesOf(signals, 'usb').length, 1);
  });

  it('finds a disk by its drive id or node name, a NIC by its MAC, a USB host device by vendor and product', async () => {
    assert.equal(
      await stack.client.testMethod('ivi', {
        byDrive: ['type=disk', 'target=drive-scsi1'],
        byNode: ['type=disk', 'target=nulldisk'],
        byMac: ['type=interface', `mac=${USB_NIC_MAC.toUpperCase()}`],
        byIds: ['type=usb', 'vendor=0x1234', 'product=0x5678'],
      }),
      true,
    );
    for (const label of ['byDrive', 'byNode', 'byMac', 'byIds']) {
      const s = await outcome(signals, 'ivi', label);
      assert.equal(s.member, 'DeviceDetached', `${label}: ${JSON.stringify(s.body)}`);
    }
    const left = await peripheralIds(monitor);
    for (const id of ['scsi1', 'usbstor1', 'usbnet0', 'uh0'])
      assert.ok(!left.includes(id), `${id} is gone: ${left.join(',')}`);
    assert.ok(left.includes('net0'), 'the other NIC stays');
  });

  it('answers DeviceNotFound for ids and addresses the VM does not have', async () => {
    assert.equal(
      await stack.client.testMethod('ivi', {
        nfAlias: ['type=alias', 'name=nope'],
        nfDisk: ['type=disk', 'target=nope'],
        nfGone: ['type=disk', 'target=scsi0'],
        nfMac: ['type=interface', 'mac=52:54:00:99:99:99'],
        nfUsb: ['type=usb', 'bus=9', 'device=9'],
        nfPci: ['type=pci', 'address=00:1f.7'],
      }),
      true,
    );
    for (const [label, message] of [
      ['nfAlias', /VM "ivi" has no device with id nope/],
      ['nfDisk', /VM "ivi" has no disk nope/],
      ['nfGone', /VM "ivi" has no disk scsi0/],
      ['nfMac', /VM "ivi" has no interface with MAC 52:54:00:99:99:99/],
      ['nfUsb', /VM "ivi" has no USB device 9\.9/],
      ['nfPci', /VM "ivi" has no PCI device 0000:00:1f\.7/],
    ] as const) {
      const s = await outcome(signals, 'ivi', label);
      assert.equal(s.member, 'DeviceDetachFailed');
      assert.equal(s.body[2], `${E}DeviceNotFound`, `${label}: ${String(s.body[3])}`);
      assert.match(s.body[3] as string, message);
    }
  });

  it('answers NotSupported for spec types it does not take, and for a device QEMU cannot unplug', async () => {
    assert.equal(
      await stack.client.testMethod('ivi', {
        nsScsi: ['type=scsi', 'adapter=scsi_host0', 'bus=0', 'target=0', 'unit=0'],
        nsMdev: ['type=mdev', 'uuid=4b20d080-1b54-4048-85b3-a6a62d165c01'],
        // The SCSI controller sits on the root bus, which has no hotplug.
        nsController: ['type=pci', 'address=00:05.0'],
      }),
      true,
    );
    for (const label of ['nsScsi', 'nsMdev']) {
      const s = await outcome(signals, 'ivi', label);
      assert.equal(s.body[2], `${E}NotSupported`);
      assert.match(
        s.body[3] as string,
        /does not detach (scsi|mdev) devices; it takes the types alias, disk, interface, usb, pci/,
      );
    }
    const s = await outcome(signals, 'ivi', 'nsController');
    assert.equal(s.body[2], `${E}NotSupported`);
    assert.match(
      s.body[3] as string,
      /the PCI device 0000:00:05\.0 \(device scsi\) of VM "ivi" cannot be unplugged: .*does not support hotplugging/,
    );
    assert.ok((await peripheralIds(monitor)).includes('scsi'));
  });

  it('ends the virtio-net-pci on a PCIe root port, which no guest releases, with Timeout, and it stays', async () => {
    const t0 = performance.now();
    assert.equal(await stack.client.testMethod('ivi', { nic: ['type=interface', `mac=${NIC_MAC}`] }), true);
    const s = await outcome(signals, 'ivi', 'nic', (TIMEOUT_S + 20) * 1000);
    assert.equal(s.member, 'DeviceDetachFailed');
    assert.equal(s.body[2], `${E}Timeout`);
    assert.match(
      s.body[3] as string,
      /the interface 52:54:00:71:00:01 \(device net0\) of VM "ivi" is still attached after 4 s/,
    );
    assert.ok(s.at - t0 >= TIMEOUT_S * 1000, 'not before the timeout');
    assert.ok((await peripheralIds(monitor)).includes('net0'));
    await barrier(stack);
    assert.equal(outcomesOf(signals, 'nic').length, 1);
  });

  it('confirms a pending unplug that a reset completes, for two names of one device', async () => {
    // q35's ACPI hotplug takes a second device_del for a pending unplug silently.
    // The reset comes once QEMU has taken both device_del (the daemon logs each reply).
    const accepted = () => stack.daemon.output().match(/device_del accepted vm=ivi device=net0/g)?.length ?? 0;
    const before = accepted();
    assert.equal(
      await stack.client.testMethod('ivi', {
        nicByMac: ['type=interface', `mac=${NIC_MAC}`],
        nicById: ['type=alias', 'name=net0'],
      }),
      true,
    );
    await until(() => accepted() >= before + 2, 'both device_del accepted');
    await monitor.execute('system_reset');
    for (const label of ['nicByMac', 'nicById']) {
      const s = await outcome(signals, 'ivi', label);
      assert.equal(s.member, 'DeviceDetached', `${label}: ${JSON.stringify(s.body)}`);
    }
    assert.ok(!(await peripheralIds(monitor)).includes('net0'));
  });
});

describe('qmp backend: native PCIe hotplug', { timeout: 120_000 }, () => {
  let qemu: QemuProcess;
  let stack: Stack;
  let signals: SignalLog;

  before(async () => {
    qemu = await startQemu({
      // QEMU's native PCIe hotplug instead of ACPI: it refuses a repeat within 5 s.
      args: ['-global', 'ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off'],
      devices: ['pcie-root-port,id=rp1,chassis=1', `virtio-net-pci,id=net0,mac=${NIC_MAC},bus=rp1`],
    });
    stack = await startStack({
      backends: [],
      extraBackends: [{ id: 'qemu', plugin: 'qmp', vms: [{ name: 'native', socket: qemu.socket('vmdevd') }] }],
      config: { detachTimeoutSeconds: TIMEOUT_S, logLevel: 'debug' },
    });
    signals = await stack.client.subscribeAll();
  });

  after(async () => {
    await stack?.stop();
    await qemu?.stop();
  });

  it('takes "already in the process of unplug" as the same unplug: both names end with Timeout, not a failure', async () => {
    assert.equal(
      await stack.client.testMethod('native', {
        a: ['type=interface', `mac=${NIC_MAC}`],
        b: ['type=alias', 'name=net0'],
      }),
      true,
    );
    for (const label of ['a', 'b']) {
      const s = await outcome(signals, 'native', label, (TIMEOUT_S + 20) * 1000);
      assert.equal(s.body[2], `${E}Timeout`, `${label}: ${JSON.stringify(s.body)}`);
    }
    assert.match(stack.daemon.output(), /the device is already being unplugged; waiting for it/);
  });
});
