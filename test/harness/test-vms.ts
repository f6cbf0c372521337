/**
 * Small throw-away QEMU VMs on `qemu:///system` for detach tests.
 *
 * Each VM is named `vmdevd-test-<random>` so it cannot collide with a
 * host's own VMs: 64 MiB, one vCPU, no guest OS, machine `pc` (or `q35`)
 * with ACPI (without ACPI, QEMU refuses a PCI unplug outright instead of
 * waiting for the guest), KVM when the QEMU user can use /dev/kvm and TCG
 * otherwise. A `q35` VM also has the SATA controller that machine always
 * has, whose bus QEMU cannot hot-plug.
 * Its devices: a virtio-scsi and a qemu-xhci controller, a SCSI disk
 * (`sda`) and a USB disk (`sdb`), both of which QEMU releases without a
 * guest, and an e1000 NIC on PCI, which it never releases without one.
 *
 * The harness drives libvirt through a {@link TestVmConnection}, which the
 * libvirt plugin's binding `Connection` satisfies; the core does not import
 * the plugin.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { create } from 'xmlbuilder2';

const execFileAsync = promisify(execFile);

type XMLBuilder = ReturnType<typeof create>;

/** The namespace of vmdevd's domain metadata (`<vmdevd:vm type="…"/>`). */
export const VM_METADATA_NAMESPACE = 'urn:vmdevd:vm:1';
/**
 * The namespace of the metadata that names the process that made a test VM
 * (`<vmdevd-test:owner pid="…" start="…" boot="…"/>`): a VM whose process
 * is gone was left behind by a run that was killed, and the next run
 * removes it.
 */
const OWNER_NAMESPACE = 'urn:vmdevd:test-owner:1';
/** The user QEMU runs as under Debian's libvirt. */
const QEMU_USER = 'libvirt-qemu';
const DISK_IMAGE_BYTES = 1024 * 1024;

/** The calls the harness needs from a libvirt connection. */
export interface TestVmConnection {
  defineXml(xml: string): Promise<{ readonly uuid: string; readonly name: string }>;
  getDomain(uuid: string): Promise<{ readonly active: boolean }>;
  create(uuid: string): Promise<void>;
  destroy(uuid: string): Promise<void>;
  undefine(uuid: string, flags?: number): Promise<void>;
}

export type VirtType = 'kvm' | 'qemu';
/** QEMU's machine types the harness makes VMs of: i440FX (`pc`) or Q35 (`q35`, PCI Express). */
export type MachineType = 'pc' | 'q35';

export interface TestVmOptions {
  /** The VM's type in its vmdevd metadata. Default `test`. */
  readonly type?: string;
  /** Start it after defining it. Default true. */
  readonly start?: boolean;
  /** Default: `kvm` when the QEMU user can use /dev/kvm, else `qemu` (TCG); or $VMDEVD_TEST_VIRT_TYPE. */
  readonly virtType?: VirtType;
  /** The NIC's MAC address. Default 52:54:00:76:6d:01. */
  readonly mac?: string;
  /** The VM's name. Default `vmdevd-test-<random>`. */
  readonly name?: string;
  /** The machine type. Default `pc`. */
  readonly machine?: MachineType;
}

/** One device of a test VM. */
export interface TestDevice {
  /** The device's full XML, as defined: for detach (libvirt matches it) and to attach it again. */
  readonly xml: string;
  /** The alias libvirt gives it in a running VM. */
  readonly alias: string;
  /** A disk's image file. */
  readonly source?: string;
}

export interface TestVm {
  readonly name: string;
  readonly uuid: string;
  readonly type: string;
  readonly virtType: VirtType;
  readonly machine: MachineType;
  /** The XML the VM was defined with. */
  readonly xml: string;
  /** The directory of its disk images (readable by QEMU); removed with the VM. */
  readonly dir: string;
  readonly devices: {
    /** `sda` on the virtio-scsi controller. */
    readonly scsiDisk: TestDevice;
    /** `sdb` on the USB controller. */
    readonly usbDisk: TestDevice;
    /** The e1000 NIC on PCI. */
    readonly nic: TestDevice & { readonly mac: string };
  };
  /** Destroys and undefines the VM and deletes its disk images. Idempotent. */
  remove(): Promise<void>;
}

/** Whether QEMU, running as libvirt's QEMU user, can open /dev/kvm for reading and writing. */
export async function kvmUsable(): Promise<boolean> {
  let device;
  try {
    device = await stat('/dev/kvm');
  } catch {
    return false;
  }
  const mode = device.mode;
  if ((mode & 0o006) === 0o006) return true;
  try {
    const [uid, groups] = await Promise.all([
      execFileAsync('id', ['-u', QEMU_USER]).then((out) => Number(out.stdout.trim())),
      execFileAsync('id', ['-G', QEMU_USER]).then((out) => out.stdout.trim().split(/\s+/).map(Number)),
    ]);
    if (device.uid === uid && (mode & 0o600) === 0o600) return true;
    return groups.includes(device.gid) && (mode & 0o060) === 0o060;
  } catch {
    // No such user: QEMU runs as someone we cannot check; TCG always works.
    return false;
  }
}

async function defaultVirtType(): Promise<VirtType> {
  const forced = process.env['VMDEVD_TEST_VIRT_TYPE'];
  if (forced === 'kvm' || forced === 'qemu') return forced;
  return (await kvmUsable()) ? 'kvm' : 'qemu';
}

function fileDisk(parent: XMLBuilder, file: string, target: string, bus: string): XMLBuilder {
  const disk = parent.ele('disk', { type: 'file', device: 'disk' });
  disk.ele('driver', { name: 'qemu', type: 'raw' });
  disk.ele('source', { file });
  disk.ele('target', { dev: target, bus });
  return disk;
}

function nic(parent: XMLBuilder, mac: string): XMLBuilder {
  const element = parent.ele('interface', { type: 'user' });
  element.ele('mac', { address: mac });
  element.ele('model', { type: 'e1000' });
  return element;
}

/** One device element on its own, as a string. */
function deviceXml(build: (parent: XMLBuilder) => XMLBuilder): string {
  const document = create();
  build(document);
  return document.end({ headless: true });
}

/** A libvirt domain definition for a test VM. */
export function testVmXml(options: {
  readonly name: string;
  readonly type: string;
  readonly virtType: VirtType;
  readonly scsiImage: string;
  readonly usbImage: string;
  readonly mac: string;
  readonly machine?: MachineType;
}): string {
  const domain = create().ele('domain', { type: options.virtType });
  domain.ele('name').txt(options.name);
  const metadata = domain.ele('metadata');
  metadata.ele(VM_METADATA_NAMESPACE, 'vmdevd:vm', { type: options.type });
  metadata.ele(OWNER_NAMESPACE, 'vmdevd-test:owner', thisProcess());
  domain.ele('memory', { unit: 'MiB' }).txt('64');
  domain.ele('vcpu').txt('1');
  domain
    .ele('os')
    .ele('type', { arch: 'x86_64', machine: options.machine ?? 'pc' })
    .txt('hvm');
  domain.ele('features').ele('acpi');
  domain.ele('on_poweroff').txt('destroy');
  domain.ele('on_reboot').txt('restart');
  domain.ele('on_crash').txt('destroy');
  const devices = domain.ele('devices');
  devices.ele('controller', { type: 'scsi', index: '0', model: 'virtio-scsi' });
  devices.ele('controller', { type: 'usb', index: '0', model: 'qemu-xhci' });
  fileDisk(devices, options.scsiImage, 'sda', 'scsi');
  fileDisk(devices, options.usbImage, 'sdb', 'usb');
  nic(devices, options.mac);
  devices.ele('memballoon', { model: 'none' });
  return domain.end({ prettyPrint: true, headless: true });
}

/** An empty raw disk image of 1 MiB, for a test VM or a device to attach to one. */
export async function createDiskImage(path: string): Promise<void> {
  await writeFile(path, '');
  await truncate(path, DISK_IMAGE_BYTES);
}

/**
 * Defines (and by default starts) a test VM. Remove it with `remove()` in an
 * `after()` hook or a `finally`, even when the test fails.
 */
export async function createTestVm(connection: TestVmConnection, options: TestVmOptions = {}): Promise<TestVm> {
  if (isListing(connection)) {
    sweeping ??= removeOrphanedVms(connection);
    await sweeping;
  }
  const name = options.name ?? `vmdevd-test-${randomBytes(4).toString('hex')}`;
  const type = options.type ?? 'test';
  const mac = options.mac ?? '52:54:00:76:6d:01';
  const virtType = options.virtType ?? (await defaultVirtType());
  const machine = options.machine ?? 'pc';
  // mkdtemp makes the directory 0700: QEMU's user could not reach the images.
  const dir = await mkdtemp(join(tmpdir(), `${name}-`));
  let uuid: string | undefined;
  try {
    await chmod(dir, 0o755);
    const scsiImage = join(dir, 'scsi.img');
    const usbImage = join(dir, 'usb.img');
    for (const image of [scsiImage, usbImage]) await createDiskImage(image);
    const xml = testVmXml({ name, type, virtType, scsiImage, usbImage, mac, machine });
    uuid = (await connection.defineXml(xml)).uuid;
    if (options.start !== false) await connection.create(uuid);
    const definedUuid = uuid;
    let removed = false;
    return {
      name,
      uuid: definedUuid,
      type,
      virtType,
      machine,
      xml,
      dir,
      devices: {
        scsiDisk: {
          xml: deviceXml((parent) => fileDisk(parent, scsiImage, 'sda', 'scsi')),
          alias: 'scsi0-0-0-0',
          source: scsiImage,
        },
        usbDisk: {
          xml: deviceXml((parent) => fileDisk(parent, usbImage, 'sdb', 'usb')),
          alias: 'usb-disk1',
          source: usbImage,
        },
        nic: { xml: deviceXml((parent) => nic(parent, mac)), alias: 'net0', mac },
      },
      async remove() {
        if (removed) return;
        removed = true;
        await removeVm(connection, definedUuid, dir);
      },
    };
  } catch (error) {
    await removeVm(connection, uuid, dir).catch(() => {});
    throw error;
  }
}

/**
 * Removes the VMs whose names start with `prefix` (left behind by a run that
 * was killed before it could clean up), with the disk image directories the
 * harness made for them. Returns their names.
 */
export async function removeLeftoverVms(connection: ListingConnection, prefix: string): Promise<string[]> {
  const removed: string[] = [];
  for (const domain of await connection.listDomains()) {
    if (!domain.name.startsWith(prefix)) continue;
    const xml = await connection.getXml(domain.uuid);
    const dirs = imageDirs(domain.name, xml);
    await removeVm(connection, domain.uuid, undefined);
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
    removed.push(domain.name);
  }
  return removed;
}

/** A process, as the owner metadata names it: a PID, when it started (in clock ticks since boot), and the boot. */
interface ProcessId {
  readonly pid: string;
  readonly start: string;
  readonly boot: string;
}

function thisProcess(): ProcessId {
  return { pid: String(process.pid), start: startTime(process.pid) ?? '', boot: bootId() };
}

function bootId(): string {
  return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
}

/** Field 22 of /proc/PID/stat (after the command name, which may hold spaces and parentheses). */
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

type ListingConnection = TestVmConnection & {
  listDomains(): Promise<ReadonlyArray<{ readonly uuid: string; readonly name: string }>>;
  getXml(uuid: string): Promise<string>;
};

function isListing(connection: TestVmConnection): connection is ListingConnection {
  const c = connection as Partial<ListingConnection>;
  return typeof c.listDomains === 'function' && typeof c.getXml === 'function';
}

let sweeping: Promise<string[]> | undefined;

/**
 * Removes the test VMs whose owner process is gone (a run killed before it
 * could clean up), with their disk image directories; once per process,
 * before its first VM. A VM of another run still going is left alone: its
 * owner's PID, start time and boot all match a live process. Returns their
 * names.
 */
export async function removeOrphanedVms(connection: ListingConnection): Promise<string[]> {
  const removed: string[] = [];
  const boot = bootId();
  for (const domain of await connection.listDomains()) {
    let xml;
    try {
      xml = await connection.getXml(domain.uuid);
    } catch {
      continue; // gone meanwhile
    }
    const tag = /<[^>]*urn:vmdevd:test-owner:1[^>]*>/.exec(xml)?.[0];
    if (tag === undefined) continue;
    const attribute = (name: string): string | undefined => new RegExp(`\\b${name}=["']([^"']*)["']`).exec(tag)?.[1];
    const pid = Number(attribute('pid'));
    const alive = attribute('boot') === boot && Number.isInteger(pid) && startTime(pid) === attribute('start');
    if (alive) continue;
    try {
      await removeVm(connection, domain.uuid, undefined);
    } catch {
      continue; // removed by someone else meanwhile
    }
    for (const dir of imageDirs(domain.name, xml)) await rm(dir, { recursive: true, force: true });
    removed.push(domain.name);
  }
  return removed;
}

function imageDirs(name: string, xml: string): Set<string> {
  return new Set(
    [...xml.matchAll(/<source file='([^']+)'/g)]
      .map((m) => dirname(m[1]!))
      .filter((d) => d.startsWith(join(tmpdir(), `${name}-`))),
  );
}

async function removeVm(
  connection: TestVmConnection,
  uuid: string | undefined,
  dir: string | undefined,
): Promise<void> {
  try {
    if (uuid !== undefined) {
      // A failed destroy must not be ignored: undefining a running VM
      // would leave it running, as a transient domain.
      if ((await connection.getDomain(uuid)).active) await connection.destroy(uuid);
      await connection.undefine(uuid);
    }
  } finally {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  }
}
