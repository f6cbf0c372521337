/**
 * Finds the QEMU device a device spec names, from QEMU's own view: its id
 * under `/machine/peripheral`, which `device_del` takes and
 * `DEVICE_DELETED` reports.
 *
 * - `alias`: the id itself;
 * - `disk`: the device id, or its drive's id (`-drive id=`) or block node
 *   name (`-blockdev node-name=`), through `query-block`. Its `qdev` is the
 *   device id, or a path inside the device (a `usb-storage` keeps its disk
 *   at `/machine/peripheral/ID/ID.0/legacy[0]`, a `virtio-blk-pci` at
 *   `…/ID/virtio-backend`), where `device_del` would remove only the inner
 *   part: the device is always `/machine/peripheral/ID`;
 * - `interface`: the device whose `mac` property is the MAC;
 * - `usb`: the `usb-host` device with that vendor and product, or host bus
 *   and address;
 * - `pci`: the device at that address of the guest's PCI topology, from
 *   `query-pci`.
 */
import { BackendError, type DeviceSpec } from 'vmdevd/plugin-api';
import type { QmpClient } from './qmp-client.js';

export const PERIPHERAL = '/machine/peripheral';
/** The spec types this backend detaches. */
export const SUPPORTED_TYPES = ['alias', 'disk', 'interface', 'usb', 'pci'] as const;

export interface ResolvedDevice {
  /** The device's id. */
  readonly id: string;
  /** How to name it in messages: `disk drive-scsi0 (device scsi0)`. */
  readonly description: string;
}

interface QomProperty {
  readonly name: string;
  readonly type: string;
}

/** The ids of the devices under /machine/peripheral, with their QOM types. */
export async function peripherals(client: QmpClient, timeoutMs?: number): Promise<Map<string, string>> {
  const list = (await client.execute('qom-list', { path: PERIPHERAL }, { timeoutMs })) as QomProperty[];
  const devices = new Map<string, string>();
  for (const p of list) {
    const m = /^child<(.+)>$/.exec(p.type);
    if (m !== null) devices.set(p.name, m[1]!);
  }
  return devices;
}

/** The peripheral id a QOM path or a `qdev` value belongs to, or undefined (a device without an id). */
export function peripheralId(qdev: string): string | undefined {
  if (qdev === '') return undefined;
  if (!qdev.startsWith('/')) return qdev;
  const m = /^\/machine\/peripheral\/([^/]+)(?:\/|$)/.exec(qdev);
  return m === null ? undefined : m[1];
}

/** A property of every device in `ids`; devices without it are left out. */
async function propertyOf<T>(
  client: QmpClient,
  ids: readonly string[],
  property: string,
): Promise<Map<string, T | undefined>> {
  const values = await Promise.all(
    ids.map((id) =>
      client.execute('qom-get', { path: `${PERIPHERAL}/${id}`, property }).then(
        (value) => value as T,
        () => undefined,
      ),
    ),
  );
  return new Map(ids.map((id, i) => [id, values[i]]));
}

function notFound(vm: string, what: string): BackendError {
  return new BackendError('DeviceNotFound', `VM "${vm}" has no ${what}`);
}

function noId(vm: string, what: string): BackendError {
  return new BackendError(
    'NotSupported',
    `the ${what} of VM "${vm}" has no device id, and vmdevd detaches devices by id (give it one: -device …,id=NAME)`,
  );
}

interface BlockInfo {
  readonly device?: string;
  readonly qdev?: string;
  readonly inserted?: { readonly 'node-name'?: string };
}

interface PciDevice {
  readonly bus: number;
  readonly slot: number;
  readonly function: number;
  readonly qdev_id?: string;
  readonly pci_bridge?: { readonly devices?: readonly PciDevice[] };
}

function* pciDevices(devices: readonly PciDevice[] | undefined): Generator<PciDevice> {
  for (const d of devices ?? []) {
    yield d;
    yield* pciDevices(d.pci_bridge?.devices);
  }
}

/**
 * The device `spec` names in the VM behind `client`. Rejects with a
 * `BackendError`: `DeviceNotFound`, or `NotSupported` for a type this
 * backend does not detach and for a device without an id.
 */
export async function resolveDevice(client: QmpClient, vm: string, spec: DeviceSpec): Promise<ResolvedDevice> {
  const p = spec.params;
  switch (spec.type) {
    case 'alias': {
      const id = p['name']!;
      if (!(await peripherals(client)).has(id)) throw notFound(vm, `device with id ${id}`);
      return { id, description: `device ${id}` };
    }
    case 'disk': {
      const target = p['target']!;
      const blocks = (await client.execute('query-block')) as BlockInfo[];
      for (const block of blocks) {
        const qdev = block.qdev ?? '';
        const id = peripheralId(qdev);
        const drive = block.device ?? '';
        const node = block.inserted?.['node-name'] ?? '';
        if (target !== id && target !== drive && target !== node) continue;
        if (id === undefined) {
          // A drive without a device has nothing to unplug.
          if (qdev === '') throw notFound(vm, `disk device for drive ${target}`);
          throw noId(vm, `disk ${target}`);
        }
        return { id, description: id === target ? `disk ${id}` : `disk ${target} (device ${id})` };
      }
      throw notFound(vm, `disk ${target} (no device or drive of that id)`);
    }
    case 'interface': {
      const mac = p['mac']!;
      const ids = [...(await peripherals(client)).keys()];
      for (const [id, value] of await propertyOf<string>(client, ids, 'mac')) {
        if (typeof value === 'string' && value.toLowerCase() === mac)
          return { id, description: `interface ${mac} (device ${id})` };
      }
      throw notFound(vm, `interface with MAC ${mac} among its devices with an id`);
    }
    case 'usb': {
      const hosts = [...(await peripherals(client))].filter(([, type]) => type === 'usb-host').map(([id]) => id);
      const byVendor = p['vendor'] !== undefined;
      const [first, second] = byVendor ? ['vendorid', 'productid'] : ['hostbus', 'hostaddr'];
      const want = byVendor
        ? [parseInt(p['vendor']!, 16), parseInt(p['product']!, 16)]
        : [Number(p['bus']), Number(p['device'])];
      const [a, b] = await Promise.all([
        propertyOf<number>(client, hosts, first),
        propertyOf<number>(client, hosts, second),
      ]);
      const what = byVendor ? `USB device ${p['vendor']}:${p['product']}` : `USB device ${p['bus']}.${p['device']}`;
      for (const id of hosts) {
        if (a.get(id) === want[0] && b.get(id) === want[1]) return { id, description: `${what} (device ${id})` };
      }
      throw notFound(vm, `${what} (no usb-host device with an id has it)`);
    }
    case 'pci': {
      const address = p['address']!;
      const [domain, bus, rest] = address.split(':') as [string, string, string];
      const [slot, fn] = rest.split('.') as [string, string];
      const what = `PCI device ${address}`;
      if (parseInt(domain, 16) === 0) {
        const buses = (await client.execute('query-pci')) as Array<{ readonly devices?: readonly PciDevice[] }>;
        for (const b of buses) {
          for (const d of pciDevices(b.devices)) {
            if (d.bus !== parseInt(bus, 16) || d.slot !== parseInt(slot, 16) || d.function !== parseInt(fn, 10))
              continue;
            if (d.qdev_id === undefined || d.qdev_id === '') throw noId(vm, what);
            return { id: d.qdev_id, description: `${what} (device ${d.qdev_id})` };
          }
        }
      }
      throw notFound(vm, `${what} in its PCI topology`);
    }
    case 'scsi':
    case 'mdev':
      throw new BackendError(
        'NotSupported',
        `the qmp backend does not detach ${spec.type} devices; it takes the types ${SUPPORTED_TYPES.join(', ')}`,
      );
  }
}

/**
 * The QOM types vmdevd lists: disks, network interfaces and host devices
 * (no controllers, input, sound, video, balloon or consoles).
 */
const LISTED_TYPES =
  /^(scsi-(hd|cd|block|generic)|usb-storage|usb-bot|usb-uas|virtio-blk(-pci)?|ide-(hd|cd)|nvme|virtio-net(-pci)?|e1000e?|rtl8139|usb-net|vmxnet3|usb-host|vfio-pci)$/;
const ID = /^[A-Za-z0-9_.:-]{1,64}$/;

/**
 * The devices of a VM that a client can detach, from QEMU's own device tree:
 * each by its id (which is its label), as an `alias` spec. QEMU has no
 * description of a device from which vmdevd could attach it again, so the
 * listing is for detaching.
 */
export async function listedDevices(
  client: QmpClient,
  timeoutMs?: number,
): Promise<Array<{ label: string; tokens: string[] }>> {
  const listed: Array<{ label: string; tokens: string[] }> = [];
  for (const [id, type] of await peripherals(client, timeoutMs)) {
    if (LISTED_TYPES.test(type) && ID.test(id)) listed.push({ label: id, tokens: ['type=alias', `name=${id}`] });
  }
  return listed.sort((a, b) => a.label.localeCompare(b.label));
}
