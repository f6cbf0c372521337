/**
 * Reading libvirt domain XML: finding the device a device spec names, its
 * alias (to match DEVICE_REMOVED) and whether unplugging it waits on the
 * guest; and the VM type in vmdevd's metadata.
 */
import type { DeviceSpec } from 'vmdevd/plugin-api';
import { attr, child, parseXml, type XmlElement as El } from './xml-tree.js';

export const METADATA_NAMESPACE = 'urn:vmdevd:vm:1';

export interface FoundDevice {
  /** The device's alias in this XML (live XML always has one; a definition only for user aliases). */
  readonly alias: string | undefined;
  /**
   * True when the guest must release the device (it sits on a PCI bus, so
   * QEMU asks the guest through ACPI hotplug and waits); false for devices
   * QEMU removes on its own (USB, SCSI).
   */
  readonly needsGuest: boolean;
}

/** Numeric equality of values libvirt may write in hex (`0x0a`) or decimal. */
function sameNumber(a: string | undefined, b: string): boolean {
  if (a === undefined) return false;
  const n = (s: string) => (/^0x/i.test(s) ? parseInt(s, 16) : Number(s));
  return n(a) === n(b);
}

function hexEqual(a: string | undefined, b: string): boolean {
  return a !== undefined && parseInt(a, 16) === parseInt(b, 16);
}

function matches(device: El, spec: DeviceSpec): boolean {
  const p = spec.params;
  const source = child(device, 'source');
  const address = child(source, 'address');
  switch (spec.type) {
    case 'pci': {
      if (device.name !== 'hostdev' || attr(device, 'type') !== 'pci') return false;
      const [dom, bus, rest] = p['address']!.split(':') as [string, string, string];
      const [slot, fn] = rest.split('.') as [string, string];
      return (
        hexEqual(attr(address, 'domain') ?? '0', dom) &&
        hexEqual(attr(address, 'bus'), bus) &&
        hexEqual(attr(address, 'slot'), slot) &&
        hexEqual(attr(address, 'function'), fn)
      );
    }
    case 'usb': {
      if (device.name !== 'hostdev' || attr(device, 'type') !== 'usb') return false;
      if (p['vendor'] !== undefined) {
        if (
          !hexEqual(attr(child(source, 'vendor'), 'id'), p['vendor']) ||
          !hexEqual(attr(child(source, 'product'), 'id'), p['product']!)
        )
          return false;
      }
      if (p['bus'] !== undefined) {
        if (!sameNumber(attr(address, 'bus'), p['bus']) || !sameNumber(attr(address, 'device'), p['device']!))
          return false;
      }
      return true;
    }
    case 'scsi':
      return (
        device.name === 'hostdev' &&
        attr(device, 'type') === 'scsi' &&
        attr(child(source, 'adapter'), 'name') === p['adapter'] &&
        sameNumber(attr(address, 'bus'), p['bus']!) &&
        sameNumber(attr(address, 'target'), p['target']!) &&
        sameNumber(attr(address, 'unit'), p['unit']!)
      );
    case 'mdev':
      return (
        device.name === 'hostdev' &&
        attr(device, 'type') === 'mdev' &&
        attr(address, 'uuid')?.toLowerCase() === p['uuid']
      );
    case 'disk':
      return device.name === 'disk' && attr(child(device, 'target'), 'dev') === p['target'];
    case 'interface':
      return device.name === 'interface' && attr(child(device, 'mac'), 'address')?.toLowerCase() === p['mac'];
    case 'alias':
      return attr(child(device, 'alias'), 'name') === p['name'];
  }
}

/**
 * A domain's XML as libvirt gave it, parsed once, when first searched: a
 * detach looks at the same XML several times (is every device there, which
 * one, is it in the definition too), and parsing it costs far more than
 * searching it.
 */
export class DomainXml {
  #devices: El | undefined | null = null;

  constructor(readonly text: string) {}

  /** The `<devices>` element. */
  get devices(): El | undefined {
    if (this.#devices === null) this.#devices = child(parseXml(this.text), 'devices');
    return this.#devices;
  }
}

/** The device of a domain's XML that `spec` names, or undefined. */
export function findDevice(domain: DomainXml, spec: DeviceSpec): FoundDevice | undefined {
  const devices = domain.devices;
  if (devices === undefined) return undefined;
  for (const device of devices.children) {
    if (!matches(device, spec)) continue;
    // The guest-side address (not the host source address of a hostdev).
    const guestAddress = child(device, 'address');
    return { alias: attr(child(device, 'alias'), 'name'), needsGuest: attr(guestAddress, 'type') === 'pci' };
  }
  return undefined;
}

/** The `type` attribute of `<vmdevd:vm>` in a metadata element, if any. */
export function metadataType(metadataXml: string | undefined): string | undefined {
  if (metadataXml === undefined) return undefined;
  try {
    const type = parseXml(metadataXml).attributes['type'];
    return type === undefined || type === '' ? undefined : type;
  } catch {
    return undefined;
  }
}
