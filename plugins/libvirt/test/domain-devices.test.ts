/**
 * Reading devices from domain XML as libvirt writes it (live and
 * inactive): which devices are listed, their labels and tokens, and how a
 * spec's descriptive tokens are compared with the device found.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DeviceSpec, DeviceType } from 'vmdevd/plugin-api';
import { DomainXml, aliasIs, findDevice, listDevices, mismatch } from '../src/domain-devices.js';
import { attr, child, parseXml } from '../src/xml-tree.js';

/** A spec as the core would hand it over (the XML is not read here). */
function spec(type: DeviceType, params: Record<string, string>): DeviceSpec {
  return { label: 'd', type, params, persistent: false, xml: undefined, identity: `${type}:${JSON.stringify(params)}` };
}

const LIVE = `<domain type='kvm' id='3'>
  <name>vm1</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/vm1.qcow2' index='3'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/data' index='2'/>
      <target dev='sdb' bus='usb'/>
      <readonly/>
      <alias name='ua-data'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/iso/install.iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
      <alias name='ide0-1-0'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/image'><host name='ceph1' port='6789'/></source>
      <target dev='vdc' bus='virtio'/>
      <alias name='virtio-disk2'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='vmdk'/>
      <source file='/srv/old.vmdk'/>
      <target dev='sdd' bus='scsi'/>
      <alias name='scsi0-0-0-3'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci'><alias name='usb'/></controller>
    <controller type='scsi' index='0' model='virtio-scsi'><alias name='scsi0'/></controller>
    <interface type='network'>
      <mac address='52:54:00:AA:BB:01'/>
      <source network='default' portid='0f1e' bridge='virbr0'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:aa:bb:02'/>
      <source bridge='br0'/>
      <model type='rtl8139'/>
      <alias name='net1'/>
    </interface>
    <interface type='direct'>
      <mac address='52:54:00:aa:bb:03'/>
      <source dev='eth0' mode='bridge'/>
      <model type='virtio'/>
      <alias name='net2'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:aa:bb:04'/>
      <model type='ne2k_pci'/>
      <alias name='net3'/>
    </interface>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source>
      <alias name='hostdev0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x09' function='0x0'/>
    </hostdev>
    <hostdev mode='subsystem' type='usb' managed='no'>
      <source><vendor id='0x046D'/><product id='0xc52b'/><address bus='1' device='5'/></source>
      <alias name='hostdev1'/>
    </hostdev>
    <hostdev mode='subsystem' type='scsi' managed='no'>
      <source><adapter name='scsi_host2'/><address bus='0' target='1' unit='4'/></source>
      <alias name='hostdev2'/>
    </hostdev>
    <hostdev mode='subsystem' type='scsi' managed='no'>
      <source protocol='iscsi' name='iqn.2024-01.example:t/1'><host name='san'/></source>
      <alias name='hostdev3'/>
    </hostdev>
    <hostdev mode='subsystem' type='mdev' model='vfio-pci'>
      <source><address uuid='4B20D080-1B54-4048-85B3-A6A62D165C01'/></source>
      <alias name='hostdev4'/>
    </hostdev>
    <input type='tablet' bus='usb'><alias name='input0'/></input>
    <graphics type='vnc' port='5900'/>
    <video><model type='vga'/><alias name='video0'/></video>
    <serial type='pty'><alias name='serial0'/></serial>
    <console type='pty'><alias name='serial0'/></console>
    <sound model='ich9'><alias name='sound0'/></sound>
    <memballoon model='virtio'><alias name='balloon0'/></memballoon>
  </devices>
</domain>`;

describe('listing the devices of a domain', () => {
  it('lists disks, interfaces and host devices by alias, described in full where the tokens can', () => {
    assert.deepEqual(listDevices(new DomainXml(LIVE)), [
      {
        label: 'virtio-disk0',
        tokens: ['type=disk', 'target=vda', 'source=/var/lib/libvirt/images/vm1.qcow2', 'bus=virtio', 'format=qcow2'],
      },
      {
        label: 'ua-data',
        tokens: ['type=disk', 'target=sdb', 'source=/dev/vg0/data', 'bus=usb', 'format=raw', 'readonly=yes'],
      },
      // A CD-ROM, a network disk, a format the tokens do not have: named only.
      { label: 'ide0-1-0', tokens: ['type=disk', 'target=hdc'] },
      { label: 'virtio-disk2', tokens: ['type=disk', 'target=vdc'] },
      { label: 'scsi0-0-0-3', tokens: ['type=disk', 'target=sdd'] },
      { label: 'net0', tokens: ['type=interface', 'mac=52:54:00:aa:bb:01', 'network=default', 'model=virtio'] },
      { label: 'net1', tokens: ['type=interface', 'mac=52:54:00:aa:bb:02', 'bridge=br0', 'model=rtl8139'] },
      // Another interface type, a model the tokens do not have: named only.
      { label: 'net2', tokens: ['type=interface', 'mac=52:54:00:aa:bb:03'] },
      { label: 'net3', tokens: ['type=interface', 'mac=52:54:00:aa:bb:04'] },
      { label: 'hostdev0', tokens: ['type=pci', 'address=0000:03:00.1'] },
      { label: 'hostdev1', tokens: ['type=usb', 'vendor=0x046d', 'product=0xc52b'] },
      { label: 'hostdev2', tokens: ['type=scsi', 'adapter=scsi_host2', 'bus=0', 'target=1', 'unit=4'] },
      // hostdev3, an iSCSI source, has no host adapter to name it by.
      { label: 'hostdev4', tokens: ['type=mdev', 'uuid=4b20d080-1b54-4048-85b3-a6a62d165c01', 'model=vfio-pci'] },
    ]);
  });

  it('labels a device without an alias (a definition) by what names it, and tells equal labels apart', () => {
    const inactive = `<domain type='kvm'><name>vm1</name><devices>
      <disk type='file' device='disk'><source file='/srv/a.img'/><target dev='sdc' bus='sata'/></disk>
      <interface type='user'><mac address='52:54:00:12:34:56'/></interface>
      <interface type='user'><mac address='52:54:00:12:34:56'/></interface>
      <hostdev mode='subsystem' type='pci' managed='yes'><source><address bus='3' slot='0' function='0'/></source></hostdev>
      <hostdev mode='subsystem' type='usb'><source><address bus='1' device='7'/></source></hostdev>
      <hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xabcd'/></source></hostdev>
      <hostdev mode='subsystem' type='scsi'><source><adapter name='scsi_host0'/><address bus='0' target='0' unit='1'/></source></hostdev>
      <hostdev mode='subsystem' type='mdev' model='vfio-ap'><source><address uuid='4b20d080-1b54-4048-85b3-a6a62d165c01'/></source></hostdev>
      <hostdev mode='capabilities' type='storage'><source><block>/dev/sdf</block></source></hostdev>
    </devices></domain>`;
    assert.deepEqual(
      listDevices(new DomainXml(inactive)).map((d) => d.label),
      [
        'disk-sdc',
        'interface-52:54:00:12:34:56',
        'interface-52:54:00:12:34:56-2',
        'hostdev-pci-0000:03:00.0',
        'hostdev-usb-1.7',
        'hostdev-usb-0x1234:0xabcd',
        'hostdev-scsi-scsi_host0:0:0:1',
        'hostdev-mdev-4b20d080-1b54-4048-85b3-a6a62d165c01',
      ],
    );
    assert.deepEqual(listDevices(new DomainXml(inactive))[0]!.tokens, [
      'type=disk',
      'target=sdc',
      'source=/srv/a.img',
      'bus=sata',
    ]);
  });

  it('a domain without devices lists none', () => {
    assert.deepEqual(listDevices(new DomainXml('<domain><name>x</name></domain>')), []);
  });
});

describe('checking a spec against the device found', () => {
  const domain = new DomainXml(LIVE);
  const check = (s: DeviceSpec) => {
    const found = findDevice(domain, s);
    return found === undefined ? 'not found' : (mismatch(found, s) ?? 'same');
  };

  it('takes a spec that names the device, or describes it as it is', () => {
    assert.equal(check(spec('disk', { target: 'sdb' })), 'same');
    assert.equal(
      check(spec('disk', { target: 'sdb', source: '/dev/vg0/data', bus: 'usb', format: 'raw', readonly: 'yes' })),
      'same',
    );
    assert.equal(check(spec('interface', { mac: '52:54:00:aa:bb:01', network: 'default', model: 'virtio' })), 'same');
    assert.equal(check(spec('interface', { mac: '52:54:00:aa:bb:02', bridge: 'br0' })), 'same');
  });

  it('says how a device differs from what the spec describes', () => {
    assert.equal(
      check(spec('disk', { target: 'vda', source: '/var/lib/libvirt/images/other.qcow2' })),
      'its source is /var/lib/libvirt/images/vm1.qcow2, not /var/lib/libvirt/images/other.qcow2',
    );
    assert.equal(check(spec('disk', { target: 'hdc', bus: 'sata' })), 'its bus is ide, not sata');
    assert.equal(check(spec('disk', { target: 'sdb', readonly: 'no' })), 'its readonly is yes, not no');
    assert.equal(check(spec('disk', { target: 'vdc', source: '/srv/x.img' })), 'its source is not set, not /srv/x.img');
    assert.equal(
      check(spec('interface', { mac: '52:54:00:aa:bb:02', network: 'default' })),
      'its network is not set, not default',
    );
    assert.equal(check(spec('interface', { mac: '52:54:00:aa:bb:03', user: 'yes' })), 'its user is not set, not yes');
    assert.equal(
      check(spec('interface', { mac: '52:54:00:aa:bb:01', model: 'e1000' })),
      'its model is virtio, not e1000',
    );
    assert.equal(check(spec('disk', { target: 'sdz' })), 'not found');
  });

  it('tells whether an alias libvirt reports added is the device asked for', () => {
    assert.equal(
      aliasIs(domain, 'ua-data', spec('disk', { target: 'sdb', source: '/dev/vg0/data', bus: 'usb' })),
      true,
    );
    assert.equal(
      aliasIs(domain, 'ua-data', spec('disk', { target: 'sdb', source: '/dev/vg0/other', bus: 'usb' })),
      false,
    );
    assert.equal(aliasIs(domain, 'net0', spec('disk', { target: 'sdb' })), false);
    assert.equal(aliasIs(domain, 'no-such-alias', spec('disk', { target: 'sdb' })), false);
  });
});

describe('the XML tree', () => {
  it('drops namespace prefixes, decodes attribute entities, and throws on malformed XML', () => {
    const root = parseXml(
      `<domain><metadata><vmdevd:vm xmlns:vmdevd="urn:vmdevd:vm:1" type="a&amp;b"/></metadata><devices/></domain>`,
    );
    const vm = child(child(root, 'metadata'), 'vm');
    assert.equal(attr(vm, 'type'), 'a&b');
    assert.deepEqual(
      root.children.map((c) => c.name),
      ['metadata', 'devices'],
    );
    assert.throws(() => parseXml('<domain><devices></domain>'));
    assert.throws(() => parseXml('<domain><disk type="a" type="b"/></domain>'));
    assert.throws(() => parseXml(''));
  });
});
