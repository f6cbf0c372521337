/**
 * Device XML for libvirt-style backends, built with xmlbuilder2 from validated
 * parameters (never by string concatenation). The XML carries what libvirt
 * needs to find the device in the domain (the source address of a host
 * device, a disk's target, an interface's MAC) and, when the tokens give
 * it, what it needs to attach one (a disk's source, bus, format and
 * read-only flag; an interface's network, bridge or user-mode networking,
 * and model). A detach with the descriptive tokens sends them too; libvirt
 * reads only what names the device.
 */
import { create } from 'xmlbuilder2';
import type { XMLBuilder } from 'xmlbuilder2/lib/interfaces.js';
import type { DeviceType } from '../plugin-api.js';

type Params = Readonly<Record<string, string>>;

function hostdev(type: string, extra: Record<string, string> = {}): XMLBuilder {
  return create().ele('hostdev', { mode: 'subsystem', type, ...extra });
}

const BUILDERS: Readonly<Record<Exclude<DeviceType, 'alias'>, (p: Params) => XMLBuilder>> = {
  pci: (p) => {
    const [domain, bus, rest] = p['address']!.split(':') as [string, string, string];
    const [slot, fn] = rest.split('.') as [string, string];
    const root = hostdev('pci', { managed: 'yes' });
    root
      .ele('source')
      .ele('address', { domain: `0x${domain}`, bus: `0x${bus}`, slot: `0x${slot}`, function: `0x${fn}` });
    return root;
  },
  usb: (p) => {
    const root = hostdev('usb');
    const source = root.ele('source');
    if (p['vendor'] !== undefined) {
      source.ele('vendor', { id: p['vendor'] });
      source.ele('product', { id: p['product']! });
    }
    if (p['bus'] !== undefined) {
      source.ele('address', { bus: p['bus'], device: p['device']! });
    }
    return root;
  },
  scsi: (p) => {
    const root = hostdev('scsi');
    const source = root.ele('source');
    source.ele('adapter', { name: p['adapter']! });
    source.ele('address', { bus: p['bus']!, target: p['target']!, unit: p['unit']! });
    return root;
  },
  mdev: (p) => {
    // libvirt requires a model for mediated devices; vfio-pci is the common one.
    const root = hostdev('mdev', { model: p['model'] ?? 'vfio-pci' });
    root.ele('source').ele('address', { uuid: p['uuid']! });
    return root;
  },
  disk: (p) => {
    const source = p['source'];
    // A path under /dev is a block device (libvirt: <source dev>), anything else a file.
    const block = source?.startsWith('/dev/') === true;
    const root = create().ele('disk', { type: block ? 'block' : 'file', device: 'disk' });
    if (p['format'] !== undefined) root.ele('driver', { name: 'qemu', type: p['format'] });
    if (source !== undefined) root.ele('source', block ? { dev: source } : { file: source });
    root.ele('target', p['bus'] !== undefined ? { dev: p['target']!, bus: p['bus'] } : { dev: p['target']! });
    if (p['readonly'] === 'yes') root.ele('readonly');
    return root;
  },
  interface: (p) => {
    // libvirt finds the interface to detach by its MAC address, whatever its type.
    const type =
      p['network'] !== undefined ? 'network' : p['bridge'] !== undefined ? 'bridge' : p['user'] ? 'user' : 'ethernet';
    const root = create().ele('interface', { type });
    root.ele('mac', { address: p['mac']! });
    if (p['network'] !== undefined) root.ele('source', { network: p['network'] });
    if (p['bridge'] !== undefined) root.ele('source', { bridge: p['bridge'] });
    if (p['model'] !== undefined) root.ele('model', { type: p['model'] });
    return root;
  },
};

/** The device XML for a validated device, or `undefined` for `alias`, which is detached by alias. */
export function buildDeviceXml(type: DeviceType, params: Params): string | undefined {
  if (type === 'alias') return undefined;
  return BUILDERS[type](params).end({ headless: true });
}
