/**
 * GetDevices, AttachDevices and moves on real QEMU VMs, through the bus,
 * with the libvirt backend on qemu:///system: the devices a VM lists, that
 * map given to TestMethod and back to AttachDevices, the tokens that
 * describe a device checked before a detach, the attaches libvirt refuses
 * (with its message), the definition of a VM, and vmdevctl moving a disk
 * from one VM to another and back. Clients: busctl, Python's dbus_next and
 * vmdevctl.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Signal, SignalLog } from 'vmdevd/testing/bus-client';
import { startLibvirtd, type Libvirtd } from 'vmdevd/testing/libvirtd';
import { run } from 'vmdevd/testing/process';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { createDiskImage, createTestVm, type MachineType, type TestVm } from 'vmdevd/testing/test-vms';
import { REPO_ROOT } from 'vmdevd/testing/vmdevd-process';
import { Connection } from '../src/binding.js';

const E = 'org.example.dbustest.Error.';
const TIMEOUT_S = 8;
const DEST = ['org.example.dbustest', '/org/example/dbustest', 'org.example.dbustest.Module'];
const VMDEVCTL = join(REPO_ROOT, 'bin/vmdevctl');

type DeviceMap = Record<string, string[]>;

/** The disk targets of a domain XML, with their sources. */
function disks(xml: string): Record<string, string> {
  const found: Record<string, string> = {};
  for (const m of xml.matchAll(/<disk [^>]*>([\s\S]*?)<\/disk>/g)) {
    const target = /<target dev='([^']+)'/.exec(m[1]!)?.[1];
    if (target !== undefined) found[target] = /<source (?:file|dev)='([^']+)'/.exec(m[1]!)?.[1] ?? '';
  }
  return found;
}

/** The tokens a running test VM's devices must be listed with: the harness defined them so. */
function expectedTokens(vm: TestVm): Record<string, string[]> {
  return {
    scsi: ['type=disk', 'target=sda', `source=${vm.devices.scsiDisk.source!}`, 'bus=scsi', 'format=raw'],
    usb: ['type=disk', 'target=sdb', `source=${vm.devices.usbDisk.source!}`, 'bus=usb', 'format=raw'],
    nic: ['type=interface', `mac=${vm.devices.nic.mac}`, 'user=yes', 'model=e1000'],
  };
}

function labelOf(devices: DeviceMap, token: string): string {
  const label = Object.keys(devices).find((l) => devices[l]!.includes(token));
  assert.ok(label !== undefined, `a device with ${token} in ${JSON.stringify(devices)}`);
  return label;
}

describe('devices of QEMU VMs: list, attach, move', { timeout: 600_000 }, () => {
  let libvirtd: Libvirtd;
  let conn: Connection;
  let stack: Stack;
  let signals: SignalLog;
  const vms: TestVm[] = [];
  const newVm = async (options: { start?: boolean; machine?: MachineType } = {}) => {
    const vm = await createTestVm(conn, { type: `inv-${randomBytes(3).toString('hex')}`, ...options });
    vms.push(vm);
    // Known to the daemon (a later call's reply comes after the state it announced).
    await signals.waitFor(
      (s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)[vm.name] !== undefined,
      20_000,
      `${vm.name} in TestSignal`,
    );
    return vm;
  };
  const getDevices = async (selector: string) =>
    (await stack.client.call({ member: 'GetDevices', signature: 's', body: [selector] }))[0] as DeviceMap;
  const call = async (member: 'TestMethod' | 'AttachDevices', selector: string, devices: DeviceMap) =>
    (await stack.client.call({ member, signature: 'sa{sas}', body: [selector, devices] }))[0] as boolean;
  /** The outcome of `label` on `vm` of one direction, after `since` signals. */
  const outcome = (kind: 'Detach' | 'Attach', vm: string, label: string, since: number, timeoutMs = 30_000) =>
    signals.waitFor(
      (s: Signal) =>
        (s.member === `Device${kind}ed` || s.member === `Device${kind}Failed`) &&
        s.body[0] === vm &&
        s.body[1] === label &&
        signals.signals.indexOf(s) >= since,
      timeoutMs,
      `${kind} outcome of ${label} on ${vm}`,
    );
  const busctl = (...args: string[]) => run('busctl', [`--address=${stack.bus.address}`, ...args]);
  const vmdevctl = (...args: string[]) => run(process.execPath, [VMDEVCTL, '--address', stack.bus.address, ...args]);

  before(async () => {
    libvirtd = await startLibvirtd();
    conn = await Connection.open(libvirtd.uri);
    stack = await startStack({
      backends: [],
      extraBackends: [{ id: 'local', plugin: 'libvirt', uri: libvirtd.uri }],
      config: { detachTimeoutSeconds: TIMEOUT_S },
    });
    signals = await stack.client.subscribeAll();
  });

  after(async () => {
    await stack?.stop();
    for (const vm of vms) await vm.remove().catch(() => undefined);
    if (conn) await conn.close();
    await libvirtd?.stop();
  });

  it('GetDevices (busctl) lists the SCSI disk, the USB disk and the NIC of a running VM, by alias, and nothing else', async () => {
    const vm = await newVm();
    const r = await busctl('--json=short', 'call', ...DEST, 'GetDevices', 's', vm.name);
    assert.equal(r.code, 0, r.stderr);
    const want = expectedTokens(vm);
    assert.deepEqual(JSON.parse(r.stdout), {
      type: 'a{sas}',
      data: [
        {
          [vm.devices.scsiDisk.alias]: want['scsi'],
          [vm.devices.usbDisk.alias]: want['usb'],
          [vm.devices.nic.alias]: want['nic'],
        },
      ],
    });
    const none = await busctl('call', ...DEST, 'GetDevices', 's', `no-such-vm-${randomBytes(3).toString('hex')}`);
    assert.notEqual(none.code, 0);
    assert.match(none.stderr, /no VM matches/);
  });

  it('that map given to TestMethod detaches the disks (the NIC, which no guest releases, times out)', async () => {
    const vm = vms[0]!;
    const devices = await getDevices(vm.name);
    const since = signals.signals.length;
    assert.equal(await call('TestMethod', vm.name, devices), true);
    for (const alias of [vm.devices.scsiDisk.alias, vm.devices.usbDisk.alias])
      assert.equal((await outcome('Detach', vm.name, alias, since)).member, 'DeviceDetached');
    const nic = await outcome('Detach', vm.name, vm.devices.nic.alias, since, (TIMEOUT_S + 10) * 1000);
    assert.equal(nic.body[2], `${E}Timeout`);
    assert.deepEqual(disks(await conn.getXml(vm.uuid)), {}, 'both disks are gone');
  });

  it('given to AttachDevices, it puts the disks back: DeviceAttached each, in the live XML with their sources', async () => {
    const vm = vms[0]!;
    const want = expectedTokens(vm);
    const back = { scsi: want['scsi']!, usb: want['usb']! };
    const since = signals.signals.length;
    assert.equal(await call('AttachDevices', vm.name, back), true);
    for (const label of Object.keys(back))
      assert.equal((await outcome('Attach', vm.name, label, since)).member, 'DeviceAttached');
    assert.deepEqual(disks(await conn.getXml(vm.uuid)), {
      sda: vm.devices.scsiDisk.source,
      sdb: vm.devices.usbDisk.source,
    });
    // And listed again with the same tokens.
    const listed = Object.values(await getDevices(vm.name));
    for (const tokens of Object.values(want))
      assert.ok(listed.some((t) => JSON.stringify(t) === JSON.stringify(tokens)));
  });

  it('TestMethod checks the tokens that describe a disk: a wrong source or bus is DeviceNotFound and detaches nothing', async () => {
    const vm = vms[0]!;
    const since = signals.signals.length;
    const wrongSource = ['type=disk', 'target=sdb', `source=${vm.dir}/other.img`, 'bus=usb'];
    const wrongBus = ['type=disk', 'target=sda', 'bus=virtio'];
    assert.equal(await call('TestMethod', vm.name, { wrongSource, wrongBus }), true);
    const s1 = await outcome('Detach', vm.name, 'wrongSource', since);
    assert.equal(s1.body[2], `${E}DeviceNotFound`);
    assert.equal(
      s1.body[3],
      `VM "${vm.name}" has a disk sdb, but its source is ${vm.devices.usbDisk.source!}, not ${vm.dir}/other.img`,
    );
    const s2 = await outcome('Detach', vm.name, 'wrongBus', since);
    assert.equal(s2.body[3], `VM "${vm.name}" has a disk sda, but its bus is scsi, not virtio`);
    assert.deepEqual(Object.keys(disks(await conn.getXml(vm.uuid))).sort(), ['sda', 'sdb'], 'both still attached');
  });

  it('an attach of a disk whose source does not exist ends with DeviceAttachFailed naming the path', async () => {
    const vm = vms[0]!;
    const missing = `${vm.dir}/missing.img`;
    const since = signals.signals.length;
    assert.equal(
      await call('AttachDevices', vm.name, { ghost: ['type=disk', 'target=sdc', `source=${missing}`, 'bus=usb'] }),
      true,
    );
    const s = await outcome('Attach', vm.name, 'ghost', since);
    assert.equal(s.member, 'DeviceAttachFailed');
    assert.equal(s.body[2], `${E}Failed`);
    assert.match(s.body[3] as string, new RegExp(`^attaching the disk sdc to VM "${vm.name}": .*'${missing}'`));
    assert.ok(!('sdc' in disks(await conn.getXml(vm.uuid))));
  });

  it('a SATA disk on a running q35 VM ends with DeviceAttachFailed carrying libvirt’s message', async () => {
    const vm = await newVm({ machine: 'q35' });
    const image = join(vm.dir, 'sata.img');
    await createDiskImage(image);
    const since = signals.signals.length;
    assert.equal(
      await call('AttachDevices', vm.name, { sata: ['type=disk', 'target=sdc', `source=${image}`, 'bus=sata'] }),
      true,
    );
    const s = await outcome('Attach', vm.name, 'sata', since);
    assert.equal(s.member, 'DeviceAttachFailed');
    assert.match(s.body[3] as string, /^attaching the disk sdc to VM ".*": .*does not support hotplugging/);
  });

  it('persistent=yes puts a disk in a running VM and in its definition', async () => {
    const vm = vms[0]!;
    const image = join(vm.dir, 'kept.img');
    await createDiskImage(image);
    const since = signals.signals.length;
    const kept = ['type=disk', 'target=sdc', `source=${image}`, 'bus=usb', 'persistent=yes'];
    assert.equal(await call('AttachDevices', vm.name, { kept }), true);
    assert.equal((await outcome('Attach', vm.name, 'kept', since)).member, 'DeviceAttached');
    assert.equal(disks(await conn.getXml(vm.uuid))['sdc'], image);
    assert.equal(disks(await conn.getXml(vm.uuid, { inactive: true }))['sdc'], image);
  });

  it('a shut-off VM: listed by derived labels (Python), its whole map detached and attached back, in its definition', async () => {
    const vm = await newVm({ start: false });
    const py = await run('/usr/bin/python3', [
      join(REPO_ROOT, 'test/clients/devices_client.py'),
      stack.bus.address,
      join(REPO_ROOT, 'dbus/org.example.dbustest.xml'),
      vm.name,
      'roundtrip',
    ]);
    assert.equal(py.code, 0, py.stderr);
    const result = JSON.parse(py.stdout) as {
      devices: DeviceMap;
      outcomes: string[][];
      detach: boolean;
      attach: boolean;
    };
    const want = expectedTokens(vm);
    const mac = vm.devices.nic.mac;
    assert.deepEqual(result.devices, {
      'disk-sda': want['scsi'],
      'disk-sdb': want['usb'],
      [`interface-${mac}`]: want['nic'],
    });
    assert.equal(result.detach, true);
    assert.equal(result.attach, true);
    assert.deepEqual(result.outcomes.map((o) => o.slice(0, 3)).sort(), [
      ['attached', vm.name, 'disk-sda'],
      ['attached', vm.name, 'disk-sdb'],
      ['attached', vm.name, `interface-${mac}`],
      ['detached', vm.name, 'disk-sda'],
      ['detached', vm.name, 'disk-sdb'],
      ['detached', vm.name, `interface-${mac}`],
    ]);
    const definition = await conn.getXml(vm.uuid, { inactive: true });
    assert.deepEqual(disks(definition), { sda: vm.devices.scsiDisk.source, sdb: vm.devices.usbDisk.source });
    assert.match(definition, new RegExp(`<interface type='user'>\\s*<mac address='${mac}'/>\\s*<model type='e1000'/>`));
    assert.deepEqual(await getDevices(vm.name), result.devices, 'listed as before');
  });

  it('a shut-off VM with persistent=yes gets a disk in its definition, even one whose file does not exist yet', async () => {
    const vm = vms.at(-1)!;
    const image = join(vm.dir, 'extra.img');
    await createDiskImage(image);
    const later = join(vm.dir, 'later.img');
    const since = signals.signals.length;
    assert.equal(
      await call('AttachDevices', vm.name, {
        extra: ['type=disk', 'target=sdc', `source=${image}`, 'bus=scsi', 'persistent=yes'],
        later: ['type=disk', 'target=sdd', `source=${later}`, 'bus=usb', 'persistent=yes'],
      }),
      true,
    );
    for (const label of ['extra', 'later'])
      assert.equal((await outcome('Attach', vm.name, label, since)).member, 'DeviceAttached');
    const definition = disks(await conn.getXml(vm.uuid, { inactive: true }));
    assert.equal(definition['sdc'], image);
    assert.equal(definition['sdd'], later);
  });

  it('vmdevctl move moves a USB disk from one VM to another and back', async () => {
    const a = vms[0]!;
    const b = await newVm();
    // b has a USB disk sdb of its own: out of the way first.
    const since = signals.signals.length;
    assert.equal(await call('TestMethod', b.name, { own: ['type=disk', 'target=sdb'] }), true);
    assert.equal((await outcome('Detach', b.name, 'own', since)).member, 'DeviceDetached');

    const usb = labelOf(await getDevices(a.name), `source=${a.devices.usbDisk.source!}`);
    const there = await vmdevctl('move', a.name, b.name, usb);
    assert.equal(there.code, 0, there.stdout + there.stderr);
    assert.match(there.stdout, new RegExp(`detached  ${a.name}  ${usb}\\n`));
    assert.match(there.stdout, new RegExp(`attached  ${b.name}  ${usb}\\n`));
    assert.match(there.stdout, new RegExp(`moved     ${usb}  ${a.name} -> ${b.name}\\n$`));
    assert.ok(!('sdb' in disks(await conn.getXml(a.uuid))), `gone from ${a.name}`);
    assert.equal(disks(await conn.getXml(b.uuid))['sdb'], a.devices.usbDisk.source, `on ${b.name}`);

    const listed = JSON.parse((await vmdevctl('--json', 'devices', b.name)).stdout) as DeviceMap;
    const back = await vmdevctl(
      'move',
      b.name,
      a.name,
      labelOf(listed, `source=${a.devices.usbDisk.source!}`),
      '--wait',
    );
    assert.equal(back.code, 0, back.stdout + back.stderr);
    assert.equal(disks(await conn.getXml(a.uuid))['sdb'], a.devices.usbDisk.source, `back on ${a.name}`);
    assert.ok(!('sdb' in disks(await conn.getXml(b.uuid))), `gone from ${b.name}`);
  });

  it('vmdevctl move puts back a disk the other VM refuses (it has a disk with that target), and says so', async () => {
    const [a, b] = [vms[0]!, vms.at(-1)!];
    const scsi = labelOf(await getDevices(a.name), `source=${a.devices.scsiDisk.source!}`);
    const r = await vmdevctl('--json', 'move', a.name, b.name, scsi);
    assert.equal(r.code, 5, r.stdout + r.stderr);
    type Step = Record<string, string>;
    const moved = (
      JSON.parse(r.stdout) as { devices: Array<{ status: string; detach: Step; attach: Step; putBack: Step }> }
    ).devices[0]!;
    assert.equal(moved.status, 'put-back');
    assert.equal(moved.detach['result'], 'detached');
    assert.equal(moved.attach['result'], 'failed');
    assert.match(moved.attach['message']!, /sda/);
    assert.equal(moved.putBack['result'], 'attached');
    assert.equal(disks(await conn.getXml(a.uuid))['sda'], a.devices.scsiDisk.source, `back on ${a.name}`);
    assert.equal(disks(await conn.getXml(b.uuid))['sda'], b.devices.scsiDisk.source, `${b.name} keeps its own`);
  });
});
