import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { create } from 'xmlbuilder2';
import { descriptiveParams, parseDevice, parseDeviceMap } from '../../src/core/device-spec.js';
import { VmdevError } from '../../src/core/errors.js';

function xmlObject(xml: string | undefined): unknown {
  assert.ok(xml !== undefined);
  return create(xml).end({ format: 'object' });
}

function rejects(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof VmdevError, String(err));
    assert.equal(err.kind, 'InvalidArgs');
    assert.match(err.message, message);
    return true;
  });
}

describe('device types and their XML', () => {
  it('pci: a host device by source address, with the domain filled in', () => {
    const d = parseDevice('gpu', ['type=pci', 'address=0A:1f.7']);
    assert.deepEqual(d.params, { address: '0000:0a:1f.7' });
    assert.deepEqual(xmlObject(d.xml), {
      hostdev: {
        '@mode': 'subsystem',
        '@type': 'pci',
        '@managed': 'yes',
        source: { address: { '@domain': '0x0000', '@bus': '0x0a', '@slot': '0x1f', '@function': '0x7' } },
      },
    });
    assert.equal(parseDevice('gpu', ['type=pci', 'address=0001:0a:00.0']).params['address'], '0001:0a:00.0');
  });

  it('usb: by vendor and product', () => {
    const d = parseDevice('key', ['type=usb', 'vendor=0x046D', 'product=0xC52b']);
    assert.deepEqual(xmlObject(d.xml), {
      hostdev: {
        '@mode': 'subsystem',
        '@type': 'usb',
        source: { vendor: { '@id': '0x046d' }, product: { '@id': '0xc52b' } },
      },
    });
  });

  it('usb: by bus and device number', () => {
    const d = parseDevice('key', ['type=usb', 'bus=001', 'device=7']);
    assert.deepEqual(d.params, { bus: '1', device: '7' });
    assert.deepEqual(xmlObject(d.xml), {
      hostdev: { '@mode': 'subsystem', '@type': 'usb', source: { address: { '@bus': '1', '@device': '7' } } },
    });
  });

  it('scsi: adapter and address', () => {
    const d = parseDevice('lun', ['type=scsi', 'adapter=scsi_host3', 'bus=0', 'target=2', 'unit=10']);
    assert.deepEqual(xmlObject(d.xml), {
      hostdev: {
        '@mode': 'subsystem',
        '@type': 'scsi',
        source: { adapter: { '@name': 'scsi_host3' }, address: { '@bus': '0', '@target': '2', '@unit': '10' } },
      },
    });
  });

  it('mdev: by UUID, model vfio-pci unless given', () => {
    const d = parseDevice('vgpu', ['type=mdev', 'uuid=4B20D080-1B54-4048-85B3-A6A62D165C01']);
    assert.deepEqual(xmlObject(d.xml), {
      hostdev: {
        '@mode': 'subsystem',
        '@type': 'mdev',
        '@model': 'vfio-pci',
        source: { address: { '@uuid': '4b20d080-1b54-4048-85b3-a6a62d165c01' } },
      },
    });
    const ccw = parseDevice('vgpu', ['type=mdev', 'uuid=4b20d080-1b54-4048-85b3-a6a62d165c01', 'model=vfio-ccw']);
    assert.match(ccw.xml!, /model="vfio-ccw"/);
  });

  it('disk: by target', () => {
    assert.deepEqual(xmlObject(parseDevice('data', ['type=disk', 'target=vdb']).xml), {
      disk: { '@type': 'file', '@device': 'disk', target: { '@dev': 'vdb' } },
    });
  });

  it('disk: the target may be a QEMU device or drive id, as it is written', () => {
    for (const target of ['scsi0', 'drive-scsi0-0-0-0', 'usbstor0', 'Disk_1.data', 'a', `d${'x'.repeat(63)}`]) {
      const d = parseDevice('data', ['type=disk', `target=${target}`]);
      assert.deepEqual(d.params, { target });
      assert.deepEqual(xmlObject(d.xml), { disk: { '@type': 'file', '@device': 'disk', target: { '@dev': target } } });
    }
    assert.notEqual(
      parseDevice('a', ['type=disk', 'target=Scsi0']).identity,
      parseDevice('b', ['type=disk', 'target=scsi0']).identity,
      'QEMU ids are case-sensitive',
    );
  });

  it('interface: by MAC, lower-cased', () => {
    assert.deepEqual(xmlObject(parseDevice('nic', ['type=interface', 'mac=52:54:00:AB:cd:EF']).xml), {
      interface: { '@type': 'ethernet', mac: { '@address': '52:54:00:ab:cd:ef' } },
    });
  });

  it('alias: no XML, the alias is the parameter', () => {
    const d = parseDevice('a', ['type=alias', 'name=ua-disk1']);
    assert.equal(d.xml, undefined);
    assert.deepEqual(d.params, { name: 'ua-disk1' });
  });

  it('persistent=yes|no on every type, no by default, and in the identity', () => {
    for (const tokens of [
      ['type=disk', 'target=vdb'],
      ['type=alias', 'name=net0'],
      ['type=pci', 'address=01:00.0'],
    ]) {
      assert.equal(parseDevice('d', tokens).persistent, false);
      assert.equal(parseDevice('d', [...tokens, 'persistent=yes']).persistent, true);
      assert.equal(parseDevice('d', [...tokens, 'persistent=no']).persistent, false);
      assert.notEqual(parseDevice('d', tokens).identity, parseDevice('d', [...tokens, 'persistent=yes']).identity);
    }
  });

  it('identity is the same for the same device however it is written', () => {
    assert.equal(
      parseDevice('a', ['type=usb', 'vendor=0x046D', 'product=0xc52b']).identity,
      parseDevice('b', ['product=0xC52B', 'type=usb', 'vendor=0x046d']).identity,
    );
    assert.equal(
      parseDevice('a', ['type=pci', 'address=01:00.0']).identity,
      parseDevice('b', ['type=pci', 'address=0000:01:00.0']).identity,
    );
  });

  it('never builds XML from the value text: special characters cannot get in', () => {
    // The patterns refuse them before the builder sees them.
    rejects(() => parseDevice('d', ['type=disk', 'target=vdb"/><evil']), /malformed target/);
    rejects(() => parseDevice('d', ['type=alias', 'name=ua-<x>']), /malformed name/);
  });
});

describe('the tokens that describe a device, in both directions', () => {
  const disk = ['type=disk', 'target=sdc', 'source=/var/lib/vm/data.img', 'bus=usb', 'format=qcow2', 'readonly=yes'];
  const nic = ['type=interface', 'mac=52:54:00:12:34:56', 'network=default', 'model=virtio'];

  it('disk: a file with its format, bus and read-only flag becomes the XML libvirt attaches', () => {
    for (const direction of ['detach', 'attach'] as const) {
      const d = parseDevice('data', disk, direction);
      assert.deepEqual(d.params, {
        target: 'sdc',
        source: '/var/lib/vm/data.img',
        bus: 'usb',
        format: 'qcow2',
        readonly: 'yes',
      });
      assert.deepEqual(xmlObject(d.xml), {
        disk: {
          '@type': 'file',
          '@device': 'disk',
          driver: { '@name': 'qemu', '@type': 'qcow2' },
          source: { '@file': '/var/lib/vm/data.img' },
          target: { '@dev': 'sdc', '@bus': 'usb' },
          readonly: {},
        },
      });
    }
  });

  it('disk: a path under /dev is a block device; readonly=no adds nothing', () => {
    const d = parseDevice(
      'blk',
      ['type=disk', 'target=vdb', 'source=/dev/vg0/data', 'bus=virtio', 'readonly=no'],
      'attach',
    );
    assert.deepEqual(xmlObject(d.xml), {
      disk: {
        '@type': 'block',
        '@device': 'disk',
        source: { '@dev': '/dev/vg0/data' },
        target: { '@dev': 'vdb', '@bus': 'virtio' },
      },
    });
  });

  it('interface: a network, a bridge or user-mode networking, with a model', () => {
    assert.deepEqual(xmlObject(parseDevice('n', nic, 'attach').xml), {
      interface: {
        '@type': 'network',
        mac: { '@address': '52:54:00:12:34:56' },
        source: { '@network': 'default' },
        model: { '@type': 'virtio' },
      },
    });
    assert.deepEqual(
      xmlObject(parseDevice('n', ['type=interface', 'mac=52:54:00:12:34:56', 'bridge=br0'], 'attach').xml),
      {
        interface: { '@type': 'bridge', mac: { '@address': '52:54:00:12:34:56' }, source: { '@bridge': 'br0' } },
      },
    );
    assert.deepEqual(
      xmlObject(
        parseDevice('n', ['type=interface', 'mac=52:54:00:12:34:56', 'user=yes', 'model=e1000e'], 'attach').xml,
      ),
      { interface: { '@type': 'user', mac: { '@address': '52:54:00:12:34:56' }, model: { '@type': 'e1000e' } } },
    );
  });

  it('host devices need no more tokens to be attached than to be detached', () => {
    for (const tokens of [
      ['type=pci', 'address=01:00.0'],
      ['type=usb', 'vendor=0x046d', 'product=0xc52b'],
      ['type=usb', 'bus=1', 'device=7'],
      ['type=scsi', 'adapter=scsi_host0', 'bus=0', 'target=0', 'unit=0'],
      ['type=mdev', 'uuid=4b20d080-1b54-4048-85b3-a6a62d165c01'],
    ]) {
      assert.equal(parseDevice('h', tokens, 'attach').xml, parseDevice('h', tokens, 'detach').xml);
    }
  });

  it('a detach may leave out what an attach needs', () => {
    assert.deepEqual(parseDevice('d', ['type=disk', 'target=sdc', 'bus=usb']).params, { target: 'sdc', bus: 'usb' });
    assert.deepEqual(parseDevice('n', ['type=interface', 'mac=52:54:00:12:34:56', 'model=virtio']).params, {
      mac: '52:54:00:12:34:56',
      model: 'virtio',
    });
  });

  it('says which descriptive tokens a spec carries', () => {
    assert.deepEqual(descriptiveParams(parseDevice('d', disk)), ['source', 'bus', 'format', 'readonly']);
    assert.deepEqual(descriptiveParams(parseDevice('n', nic)), ['network', 'model']);
    assert.deepEqual(descriptiveParams(parseDevice('d', ['type=disk', 'target=sdc'])), []);
    assert.deepEqual(descriptiveParams(parseDevice('p', ['type=pci', 'address=01:00.0'])), []);
  });

  it('the identity says everything; two labels may not name one device, whatever they say of it', () => {
    assert.notEqual(parseDevice('a', disk).identity, parseDevice('a', ['type=disk', 'target=sdc']).identity);
    rejects(
      () => parseDeviceMap({ a: disk, b: ['type=disk', 'target=sdc', 'bus=scsi'] }),
      /device "b": names the same device as "a"/,
    );
    rejects(
      () => parseDeviceMap({ a: nic, b: ['type=interface', 'mac=52:54:00:12:34:56'] }, 'attach'),
      /device "b": an attach of type interface requires one of network, bridge or user/,
    );
  });

  it('accepts a path of 240 characters', () => {
    const path = `/${'p'.repeat(239)}`;
    assert.equal(parseDevice('d', ['type=disk', 'target=sdc', `source=${path}`]).params['source'], path);
  });

  const bad: Array<[string, string[], RegExp]> = [
    ['a relative source', ['source=data.img'], /malformed source "data\.img" \(expected an absolute path/],
    ['a source with a .. component', ['source=/var/../etc/shadow'], /malformed source/],
    ['a source with a . component', ['source=/var/./x.img'], /malformed source/],
    ['a source with an empty component', ['source=/var//x.img'], /malformed source/],
    ['a source with a trailing slash', ['source=/var/x/'], /malformed source/],
    ['the root as a source', ['source=/'], /malformed source/],
    ['a source with a newline', ['source=/var/x\n.img'], /malformed source/],
    ['a source with a NUL', ['source=/var/x\u0000.img'], /malformed source/],
    ['a source with DEL', ['source=/var/x\u007f.img'], /malformed source/],
    ['a source with a C1 control character', ['source=/var/x\u0085.img'], /malformed source/],
    ['a source of 241 characters', [`source=/${'p'.repeat(240)}`], /malformed source .*at most 240 characters/],
    ['an unknown bus', ['bus=ide'], /malformed bus "ide" \(expected scsi, usb, virtio or sata\)/],
    ['an unknown format', ['format=vmdk'], /malformed format "vmdk" \(expected raw or qcow2\)/],
    ['a readonly other than yes/no', ['readonly=true'], /malformed readonly "true" \(expected yes or no\)/],
  ];
  for (const [what, extra, message] of bad) {
    it(`rejects ${what}, in both directions`, () => {
      for (const direction of ['detach', 'attach'] as const) {
        const base = ['type=disk', 'target=sdc', 'source=/var/x.img', 'bus=usb'].filter(
          (t) => !extra.some((e) => e.startsWith(t.slice(0, t.indexOf('=') + 1))),
        );
        rejects(() => parseDeviceMap({ d: [...base, ...extra] }, direction), message);
      }
    });
  }

  const badNic: Array<[string, string[], RegExp]> = [
    ['a network name with a slash', ['network=a/b'], /malformed network "a\/b"/],
    ['a network name with a space', ['network=my net'], /malformed network/],
    ['a network name starting with a dot', ['network=.hidden'], /malformed network/],
    ['a network name of 65 characters', [`network=${'n'.repeat(65)}`], /malformed network/],
    ['a bridge name of 16 characters', [`bridge=${'b'.repeat(16)}`], /malformed bridge .*at most 15/],
    ['a bridge name with a slash', ['bridge=br/0'], /malformed bridge/],
    ['user=no', ['user=no'], /malformed user "no" \(expected yes \(user-mode networking\)\)/],
    [
      'an unknown model',
      ['model=ne2k_pci'],
      /malformed model "ne2k_pci" \(expected virtio, e1000e, e1000 or rtl8139\)/,
    ],
    [
      'a network and a bridge',
      ['network=default', 'bridge=br0'],
      /give only one of network, bridge or user; network and bridge were given/,
    ],
    ['a bridge and user=yes', ['bridge=br0', 'user=yes'], /give only one of network, bridge or user/],
  ];
  for (const [what, extra, message] of badNic) {
    it(`rejects ${what}, in both directions`, () => {
      for (const direction of ['detach', 'attach'] as const) {
        const base = extra.some((e) => /^(network|bridge|user)=/.test(e)) ? [] : ['user=yes'];
        rejects(
          () => parseDeviceMap({ n: ['type=interface', 'mac=52:54:00:12:34:56', ...base, ...extra] }, direction),
          message,
        );
      }
    });
  }

  const attachOnly: Array<[string, string[], RegExp]> = [
    [
      'a disk without a source',
      ['type=disk', 'target=sdc', 'bus=usb'],
      /an attach of type disk requires source and bus; missing source/,
    ],
    [
      'a disk without a bus',
      ['type=disk', 'target=sdc', 'source=/var/x.img'],
      /an attach of type disk requires source and bus; missing bus/,
    ],
    ['a disk by target alone', ['type=disk', 'target=sdc'], /missing source, bus/],
    [
      'an interface without a network, bridge or user',
      ['type=interface', 'mac=52:54:00:12:34:56', 'model=virtio'],
      /an attach of type interface requires one of network, bridge or user/,
    ],
    [
      'an alias',
      ['type=alias', 'name=ua-disk1'],
      /type alias cannot be attached: an alias names a device the VM already has/,
    ],
  ];
  for (const [what, tokens, message] of attachOnly) {
    it(`refuses to attach ${what}, which a detach takes`, () => {
      assert.doesNotThrow(() => parseDeviceMap({ d: tokens }, 'detach'));
      rejects(() => parseDeviceMap({ d: tokens }, 'attach'), message);
    });
  }
});

describe('rejections', () => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['a map that is not an object', 'nope', /must be a map of label to tokens/],
    ['an empty map', {}, /no devices given/],
    [
      'more than 256 devices',
      Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`d${i}`, ['type=alias', `name=a${i}`]])),
      /257 devices given, at most 256/,
    ],
    ['an unknown type', { d: ['type=tape'] }, /unknown type "tape"/],
    ['no type', { d: ['target=vdb'] }, /"type=…" is required/],
    ['no tokens', { d: [] }, /no tokens/],
    ['tokens that are not strings', { d: [1, 2] }, /must be a list of strings/],
    ['too many tokens', { d: Array.from({ length: 17 }, (_, i) => `t${i}=1`) }, /17 tokens, at most 16/],
    [
      'an unknown token',
      { d: ['type=usb', 'vendor=0x1234', 'product=0x5678', 'speed=high'] },
      /unknown token "speed" for type usb \(known: vendor, product, bus, device, persistent\)/,
    ],
    [
      'a repeated token',
      { d: ['type=usb', 'vendor=0x1234', 'vendor=0x1234', 'product=0x5678'] },
      /"vendor" is given more than once/,
    ],
    ['a repeated type', { d: ['type=disk', 'type=disk', 'target=vdb'] }, /"type" is given more than once/],
    [
      'a token named after an Object method',
      { d: ['type=disk', 'target=vdb', 'constructor=x'] },
      /unknown token "constructor" for type disk/,
    ],
    [
      'a token named toString',
      { d: ['type=pci', 'address=01:00.0', 'toString=1'] },
      /unknown token "toString" for type pci/,
    ],
    ['a token with no name', { d: ['type=disk', '=vdb'] }, /not of the form name=value/],
    ['a missing required token (pci)', { d: ['type=pci'] }, /type pci requires address; missing address/],
    ['a missing required token (scsi)', { d: ['type=scsi', 'adapter=scsi_host0'] }, /missing bus, target, unit/],
    ['a missing required token (mdev)', { d: ['type=mdev', 'model=vfio-pci'] }, /missing uuid/],
    ['a missing required token (interface)', { d: ['type=interface'] }, /missing mac/],
    ['a missing required token (alias)', { d: ['type=alias'] }, /missing name/],
    ['usb with neither pair', { d: ['type=usb'] }, /vendor and product, or bus and device/],
    ['usb with half a pair', { d: ['type=usb', 'bus=1', 'device=2', 'vendor=0x1234'] }, /missing product/],
    ['a PCI address without function', { d: ['type=pci', 'address=01:00'] }, /malformed address "01:00"/],
    ['a PCI function above 7', { d: ['type=pci', 'address=01:00.8'] }, /malformed address/],
    ['a PCI slot above 1f', { d: ['type=pci', 'address=01:20.0'] }, /malformed address/],
    ['a PCI address with a short domain', { d: ['type=pci', 'address=000:01:00.0'] }, /malformed address/],
    ['a MAC with five octets', { d: ['type=interface', 'mac=52:54:00:12:34'] }, /malformed mac/],
    ['a MAC with dashes', { d: ['type=interface', 'mac=52-54-00-12-34-56'] }, /malformed mac/],
    ['a UUID too short', { d: ['type=mdev', 'uuid=4b20d080-1b54-4048-85b3-a6a62d165c0'] }, /malformed uuid/],
    ['a UUID with bad characters', { d: ['type=mdev', 'uuid=4b20d080-1b54-4048-85b3-a6a62d165czz'] }, /malformed uuid/],
    [
      'an unknown mdev model',
      { d: ['type=mdev', 'uuid=4b20d080-1b54-4048-85b3-a6a62d165c01', 'model=nvidia'] },
      /malformed model/,
    ],
    [
      'a USB id without 0x',
      { d: ['type=usb', 'vendor=1234', 'product=0x5678'] },
      /malformed vendor "1234" \(expected 0x followed by 4 hex digits\)/,
    ],
    ['a USB id of 5 digits', { d: ['type=usb', 'vendor=0x1234', 'product=0x56789'] }, /malformed product/],
    ['a USB bus that is not a number', { d: ['type=usb', 'bus=one', 'device=2'] }, /malformed bus/],
    [
      'a USB bus out of range',
      { d: ['type=usb', 'bus=70000', 'device=2'] },
      /malformed bus "70000" \(expected a decimal number from 0 to 65535\)/,
    ],
    [
      'a SCSI adapter of another form',
      { d: ['type=scsi', 'adapter=host0', 'bus=0', 'target=0', 'unit=0'] },
      /malformed adapter/,
    ],
    ['a disk target of another form', { d: ['type=disk', 'target=/dev/sdb'] }, /malformed target/],
    ['a disk target that starts with a digit', { d: ['type=disk', 'target=0scsi'] }, /malformed target "0scsi"/],
    ['a disk target that starts with a dash', { d: ['type=disk', 'target=-sda'] }, /malformed target/],
    ['a disk target with a space', { d: ['type=disk', 'target=scsi 0'] }, /malformed target/],
    ['a disk target with a slash (a QOM path)', { d: ['type=disk', 'target=a/b'] }, /malformed target/],
    [
      'a disk target of 65 characters',
      { d: ['type=disk', `target=d${'x'.repeat(64)}`] },
      /malformed target .*a QEMU device or drive id \(a letter, then letters, digits, _ \. -, at most 64\)/,
    ],
    [
      'a persistent value other than yes/no',
      { d: ['type=disk', 'target=vdb', 'persistent=true'] },
      /malformed persistent "true" \(expected yes or no\)/,
    ],
    ['an empty label', { '': ['type=disk', 'target=vdb'] }, /a label is 1 to 64 characters/],
    ['a label with a space', { 'my disk': ['type=disk', 'target=vdb'] }, /device "my disk": a label is 1 to 64/],
    ['a label with a slash', { 'a/b': ['type=disk', 'target=vdb'] }, /a label is 1 to 64/],
    ['a label of 65 characters', { ['x'.repeat(65)]: ['type=disk', 'target=vdb'] }, /a label is 1 to 64/],
    [
      'an over-long value',
      { d: ['type=alias', `name=${'a'.repeat(300)}`] },
      /a token is 305 characters long, at most 256/,
    ],
    ['an over-long alias', { d: ['type=alias', `name=${'a'.repeat(65)}`] }, /malformed name/],
    [
      'two labels for one device',
      { a: ['type=disk', 'target=vdb'], b: ['target=vdb', 'type=disk'] },
      /device "b": names the same device as "a"/,
    ],
  ];
  for (const [what, devices, message] of cases) {
    it(`rejects ${what}`, () => rejects(() => parseDeviceMap(devices), message));
  }

  it('accepts the label characters A-Z a-z 0-9 _ . : - up to 64', () => {
    const label = 'Aa0_.:-'.padEnd(64, 'z');
    assert.equal(parseDeviceMap({ [label]: ['type=disk', 'target=vdb'] })[0]!.label, label);
  });

  it('reports the label "__proto__" instead of losing it', () => {
    const devices = JSON.parse('{"__proto__": ["type=disk", "target=vdb"]}') as object;
    // JSON.parse keeps it as an own key; the bus decoder turns it into the prototype.
    const decoded = Object.setPrototypeOf({}, ['type=disk']) as object;
    rejects(() => parseDeviceMap(decoded), /"__proto__": this label is reserved/);
    assert.equal(parseDeviceMap(devices)[0]!.label, '__proto__');
  });

  it('shortens a huge label in the message', () => {
    assert.throws(
      () => parseDevice('x'.repeat(5000), ['type=disk', 'target=vdb']),
      (err: Error) => err.message.length < 200,
    );
  });
});
