/**
 * Reading libvirt domain XML: listing a domain's devices as device tokens;
 * finding the device a device spec names, checking what the spec says of
 * it, its alias (to match DEVICE_REMOVED and DEVICE_ADDED) and whether
 * unplugging it waits on the guest; and the VM type in vmdevd's metadata.
 */
import type { DeviceSpec, ListedDevice } from 'vmdevd/plugin-api';
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
  /** What the XML says of the device, for the tokens that describe one (see {@link facts}). */
  readonly facts: Readonly<Record<string, string | undefined>>;
}

/** The disk buses, formats and NIC models the device tokens can say. */
const DISK_BUSES = ['scsi', 'usb', 'virtio', 'sata'];
const DISK_FORMATS = ['raw', 'qcow2'];
const NIC_MODELS = ['virtio', 'e1000e', 'e1000', 'rtl8139'];
const LABEL = /^[A-Za-z0-9_.:-]{1,64}$/;

/** Numeric equality of values libvirt may write in hex (`0x0a`) or decimal. */
function sameNumber(a: string | undefined, b: string): boolean {
  if (a === undefined) return false;
  const n = (s: string) => (/^0x/i.test(s) ? parseInt(s, 16) : Number(s));
  return n(a) === n(b);
}

function hexEqual(a: string | undefined, b: string): boolean {
  return a !== undefined && parseInt(a, 16) === parseInt(b, 16);
}

/**
 * What a disk's or an interface's XML says, by the name of the token that
 * would say it: the values libvirt has, whatever they are (a bus of `ide`,
 * an interface of type `direct`), so that a spec is compared with the
 * device as it is. `undefined` where the XML says nothing of it.
 */
function facts(device: El): Record<string, string | undefined> {
  if (device.name === 'disk') {
    const source = child(device, 'source');
    const type = attr(device, 'type');
    return {
      source: type === 'file' ? attr(source, 'file') : type === 'block' ? attr(source, 'dev') : undefined,
      bus: attr(child(device, 'target'), 'bus'),
      format: attr(child(device, 'driver'), 'type'),
      readonly: child(device, 'readonly') !== undefined ? 'yes' : 'no',
    };
  }
  if (device.name === 'interface') {
    const type = attr(device, 'type');
    const source = child(device, 'source');
    return {
      network: type === 'network' ? attr(source, 'network') : undefined,
      bridge: type === 'bridge' ? attr(source, 'bridge') : undefined,
      user: type === 'user' ? 'yes' : undefined,
      model: attr(child(device, 'model'), 'type'),
    };
  }
  return {};
}

/**
 * The descriptive tokens of a disk or interface when they describe it in
 * full, so that an attach of them gives the same device back; `undefined`
 * when they cannot (a network disk, a CD-ROM, a bus or format or model
 * the tokens do not have, an interface of another type): such a device is
 * listed by the token that names it only, and can be detached, not
 * attached.
 */
function describedTokens(device: El): string[] | undefined {
  const f = facts(device);
  if (device.name === 'disk') {
    const type = attr(device, 'type');
    const source = f['source'];
    // The core builds <disk type='block'> for a path under /dev, a file otherwise.
    if (attr(device, 'device') !== 'disk' || source === undefined || (type === 'block') !== source.startsWith('/dev/'))
      return undefined;
    if (!DISK_BUSES.includes(f['bus'] ?? '')) return undefined;
    const format = f['format'];
    if (format !== undefined && !DISK_FORMATS.includes(format)) return undefined;
    const tokens = [`source=${source}`, `bus=${f['bus']!}`];
    if (format !== undefined) tokens.push(`format=${format}`);
    if (f['readonly'] === 'yes') tokens.push('readonly=yes');
    return tokens;
  }
  if (device.name === 'interface') {
    const tokens: string[] = [];
    if (f['network'] !== undefined) tokens.push(`network=${f['network']}`);
    else if (f['bridge'] !== undefined) tokens.push(`bridge=${f['bridge']}`);
    else if (f['user'] !== undefined) tokens.push('user=yes');
    else return undefined;
    const model = f['model'];
    if (model !== undefined) {
      if (!NIC_MODELS.includes(model)) return undefined;
      tokens.push(`model=${model}`);
    }
    return tokens;
  }
  return undefined;
}

/** `0x0a` or `10` → 10. */
function numberOf(value: string | undefined): number | undefined {
  if (value === undefined || !/^(0x[0-9a-f]+|[0-9]+)$/i.test(value)) return undefined;
  return /^0x/i.test(value) ? parseInt(value, 16) : Number(value);
}

function hex(value: number | undefined, digits: number): string | undefined {
  return value === undefined ? undefined : value.toString(16).padStart(digits, '0');
}

/**
 * The tokens that name a device, and the label derived from them for a
 * device without an alias; `undefined` for a device vmdevd does not list
 * (not a disk, interface or host device of a type it names).
 */
function naming(device: El): { tokens: string[]; label: string } | undefined {
  switch (device.name) {
    case 'disk': {
      const target = attr(child(device, 'target'), 'dev');
      return target === undefined ? undefined : { tokens: ['type=disk', `target=${target}`], label: `disk-${target}` };
    }
    case 'interface': {
      const mac = attr(child(device, 'mac'), 'address')?.toLowerCase();
      return mac === undefined ? undefined : { tokens: ['type=interface', `mac=${mac}`], label: `interface-${mac}` };
    }
    case 'hostdev':
      return hostdevNaming(device);
    default:
      return undefined;
  }
}

function hostdevNaming(device: El): { tokens: string[]; label: string } | undefined {
  if (attr(device, 'mode') !== 'subsystem') return undefined;
  const source = child(device, 'source');
  const address = child(source, 'address');
  switch (attr(device, 'type')) {
    case 'pci': {
      const [dom, bus, slot, fn] = [
        hex(numberOf(attr(address, 'domain') ?? '0'), 4),
        hex(numberOf(attr(address, 'bus')), 2),
        hex(numberOf(attr(address, 'slot')), 2),
        numberOf(attr(address, 'function')),
      ];
      if (dom === undefined || bus === undefined || slot === undefined || fn === undefined) return undefined;
      const pci = `${dom}:${bus}:${slot}.${fn}`;
      return { tokens: ['type=pci', `address=${pci}`], label: `hostdev-pci-${pci}` };
    }
    case 'usb': {
      const vendor = hex(numberOf(attr(child(source, 'vendor'), 'id')), 4);
      const product = hex(numberOf(attr(child(source, 'product'), 'id')), 4);
      if (vendor !== undefined && product !== undefined) {
        return {
          tokens: ['type=usb', `vendor=0x${vendor}`, `product=0x${product}`],
          label: `hostdev-usb-0x${vendor}:0x${product}`,
        };
      }
      const bus = numberOf(attr(address, 'bus'));
      const dev = numberOf(attr(address, 'device'));
      if (bus === undefined || dev === undefined) return undefined;
      return { tokens: ['type=usb', `bus=${bus}`, `device=${dev}`], label: `hostdev-usb-${bus}.${dev}` };
    }
    case 'scsi': {
      const adapter = attr(child(source, 'adapter'), 'name');
      const [bus, target, unit] = ['bus', 'target', 'unit'].map((n) => numberOf(attr(address, n)));
      // An iSCSI source has no host adapter: vmdevd cannot name it.
      if (adapter === undefined || bus === undefined || target === undefined || unit === undefined) return undefined;
      return {
        tokens: ['type=scsi', `adapter=${adapter}`, `bus=${bus}`, `target=${target}`, `unit=${unit}`],
        label: `hostdev-scsi-${adapter}:${bus}:${target}:${unit}`,
      };
    }
    case 'mdev': {
      const uuid = attr(address, 'uuid')?.toLowerCase();
      if (uuid === undefined) return undefined;
      const model = attr(device, 'model');
      return {
        tokens: [
          'type=mdev',
          `uuid=${uuid}`,
          ...(model !== undefined && /^vfio-(pci|ccw|ap)$/.test(model) ? [`model=${model}`] : []),
        ],
        label: `hostdev-mdev-${uuid}`,
      };
    }
    default:
      return undefined;
  }
}

/**
 * The disks, interfaces and host devices of a domain's XML, in document
 * order, label → tokens. The label is the device's alias where it has one
 * (every device of a running domain; user aliases, `ua-…`, in a
 * definition), else derived from what names it: `disk-TARGET`,
 * `interface-MAC`, `hostdev-pci-DDDD:BB:SS.F`, `hostdev-usb-VENDOR:PRODUCT`
 * (or `hostdev-usb-BUS.DEVICE`), `hostdev-scsi-ADAPTER:BUS:TARGET:UNIT`,
 * `hostdev-mdev-UUID`; a label met twice gets `-2`, `-3`, ….
 */
export function listDevices(domain: DomainXml): ListedDevice[] {
  const listed: ListedDevice[] = [];
  const labels = new Set<string>();
  for (const device of domain.devices?.children ?? []) {
    const named = naming(device);
    if (named === undefined) continue;
    const alias = attr(child(device, 'alias'), 'name');
    let label = alias !== undefined && LABEL.test(alias) ? alias : named.label.slice(0, 64);
    for (let n = 2; labels.has(label); n++) label = `${named.label.slice(0, 60)}-${n}`;
    labels.add(label);
    listed.push({ label, tokens: [...named.tokens, ...(describedTokens(device) ?? [])] });
  }
  return listed;
}

/**
 * Where the device differs from what the spec says of it (its descriptive
 * tokens), as a phrase such as `its source is /a.img, not /b.img`; undefined
 * when it does not. libvirt itself detaches a disk by its target alone and
 * an interface by its MAC.
 */
export function mismatch(found: FoundDevice, spec: DeviceSpec): string | undefined {
  for (const [name, want] of Object.entries(spec.params)) {
    if (!(name in found.facts)) continue;
    const have = found.facts[name];
    if (have !== want) return `its ${name} is ${have === undefined ? 'not set' : have}, not ${want}`;
  }
  return undefined;
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
    return {
      alias: attr(child(device, 'alias'), 'name'),
      needsGuest: attr(guestAddress, 'type') === 'pci',
      facts: facts(device),
    };
  }
  return undefined;
}

/** The device with this alias, if the XML has one. */
export function findByAlias(domain: DomainXml, alias: string): El | undefined {
  return domain.devices?.children.find((d) => attr(child(d, 'alias'), 'name') === alias);
}

/** Whether the device with `alias` is the one `spec` names, as it describes it. */
export function aliasIs(domain: DomainXml, alias: string, spec: DeviceSpec): boolean {
  const device = findByAlias(domain, alias);
  if (device === undefined || !matches(device, spec)) return false;
  return mismatch({ alias, needsGuest: false, facts: facts(device) }, spec) === undefined;
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
