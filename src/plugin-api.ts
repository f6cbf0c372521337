/**
 * The vmdevd plugin API: the contract between the daemon's core and a backend.
 *
 * A plugin is an npm package (or a directory with a `package.json`) whose
 * entry point exports a {@link VmdevdPlugin}, as its default export or as a
 * named export `plugin`. The daemon imports it, checks {@link VmdevdPlugin.apiVersion},
 * loads its `ContainerModule` into a container of its own (with nothing of the
 * daemon's in it), asks that container
 * for the {@link BackendFactory} it binds, and creates one backend per entry
 * of the config's `backends` list that names the plugin.
 *
 * Versions. A plugin declares the plugin-API version it was built for, as
 * a number it writes down (`apiVersion`, or `vmdevd.apiVersion` in its
 * package.json), not this module's constant, which at run time is the
 * daemon's own. A daemon loads a plugin whose version lies from
 * {@link OLDEST_PLUGIN_API_VERSION} to its own {@link PLUGIN_API_VERSION}:
 * a version only ever adds optional members, so a plugin built for an
 * older one still fits. It refuses a plugin built for a newer version than
 * its own, with a message naming both (the plugin may rely on what this
 * daemon lacks); the refusal shows in `Backends`. A version that removed or
 * changed a member would raise the oldest. As fastify-plugin and homebridge
 * check a plugin's declared host range, so the daemon checks this one.
 *
 * - 1: `start`, `stop`, `detach`, `setState`.
 * - 2: the optional `listDevices` and `attach` (a backend without them
 *   answers `NotSupported`), and the device tokens that describe a disk or
 *   an interface (`source`, `bus`, `format`, `readonly`; `network`,
 *   `bridge`, `user`, `model`). A plugin of version 1 is never given a
 *   detach that carries those tokens: the core answers it `NotSupported`,
 *   since such a plugin cannot check them.
 * - 3: `publish`'s optional {@link PublishOptions} (`typesPending`): the
 *   names and states of a backend's VMs go out before their types are read.
 * - 4: a request's {@link DeviceRequest.aborted}: whether it is aborted,
 *   without making its signal.
 *
 * Import everything from `vmdevd/plugin-api`, including `ContainerModule`, so
 * that the plugin and the daemon share one inversify.
 *
 * Rules that hold for every method a backend implements:
 * - it never blocks the JavaScript thread: hypervisor calls are asynchronous;
 * - it reports failure by rejecting (or by a failed {@link DetachOutcome}),
 *   preferably with a {@link BackendError} whose kind says what went wrong;
 *   anything else it throws is logged and reported as `Failed`;
 * - the core calls it from one thread and never calls `detach`, `attach`,
 *   `listDevices` or `setState` before `start` has resolved or after `stop`
 *   was called.
 */
import { ContainerModule } from 'inversify';

export { ContainerModule };

/**
 * The plugin-API version this daemon implements. A plugin declares the
 * version it was built for; the daemon loads it when that version is from
 * {@link OLDEST_PLUGIN_API_VERSION} to this one (see the module comment).
 */
export const PLUGIN_API_VERSION = 4;

/** The oldest plugin-API version this daemon still loads. */
export const OLDEST_PLUGIN_API_VERSION = 1;

/** The VM states vmdevd publishes. A backend translates its hypervisor's states to these. */
export const VM_STATES = [
  'running',
  'paused',
  'shutdown',
  'shutoff',
  'crashed',
  'pmsuspended',
  'blocked',
  'nostate',
] as const;
export type VmState = (typeof VM_STATES)[number];

/** The states a client may ask for by writing `TestProperty`. */
export const DESIRED_STATES = ['running', 'paused', 'shutdown', 'shutoff'] as const;
export type DesiredState = (typeof DESIRED_STATES)[number];

/** One VM as a backend sees it. */
export interface VmInfo {
  /** The VM's name, unique within its backend. Never contains `/`. */
  readonly name: string;
  /** The VM's UUID when the hypervisor has one (lower-case, with dashes). */
  readonly uuid?: string | undefined;
  /** The VM's type, matched by selectors (libvirt: from the domain metadata). */
  readonly type?: string | undefined;
  readonly state: VmState;
}

/** The device types a client can name in `TestMethod` and `AttachDevices`. */
export const DEVICE_TYPES = ['pci', 'usb', 'scsi', 'mdev', 'disk', 'interface', 'alias'] as const;
export type DeviceType = (typeof DEVICE_TYPES)[number];

/** One device of a `TestMethod` or `AttachDevices` request, validated by the core. */
export interface DeviceSpec {
  /** The client's label for the device, echoed in the outcome signals. */
  readonly label: string;
  readonly type: DeviceType;
  /**
   * The tokens other than `type` and `persistent`, normalised: PCI
   * addresses get their domain (`0000:`), ids and MACs are lower-case,
   * numbers have no leading zeros.
   *
   * Some name the device (a disk's `target`, an interface's `mac`, a host
   * device's address or ids); the others describe it: a disk's `source`
   * (an absolute path), `bus`, `format`, `readonly`, an interface's
   * `network`, `bridge` or `user`, and `model` (plugin API 2, see
   * {@link DESCRIPTIVE_PARAMS}). An attach has every descriptive token it
   * needs. A detach may carry them too (a client passes on what
   * `GetDevices` listed): the backend then checks that the device it finds
   * has those values, and a device that differs is `DeviceNotFound`.
   */
  readonly params: Readonly<Record<string, string>>;
  /**
   * `persistent=yes`: a detach also removes the device from the persistent
   * definition, an attach also adds it there.
   */
  readonly persistent: boolean;
  /**
   * The libvirt device XML the core built for it with xmlbuilder2 (on first
   * read), from every token (an attach needs the source, bus and so on;
   * libvirt's detach reads only what names the device), or `undefined` for
   * type `alias`, which is detached by `params.name`.
   */
  readonly xml: string | undefined;
  /** A canonical string that is equal for two specs naming the same device the same way. */
  readonly identity: string;
}

/**
 * The tokens that describe a device rather than name it, per type (plugin
 * API 2): what an attach needs, and what a detach checks when given.
 */
export const DESCRIPTIVE_PARAMS: Readonly<Record<DeviceType, readonly string[]>> = {
  pci: [],
  usb: [],
  scsi: [],
  mdev: [],
  disk: ['source', 'bus', 'format', 'readonly'],
  interface: ['network', 'bridge', 'user', 'model'],
  alias: [],
};

/** The error kinds a backend reports; each maps to one D-Bus error name. */
export const FAILURE_KINDS = [
  'DeviceNotFound',
  'NotSupported',
  'RemovalFailed',
  'Timeout',
  'BackendUnavailable',
  'Failed',
] as const;
export type FailureKind = (typeof FAILURE_KINDS)[number];

/** An error a backend throws (or rejects with) to say what kind of failure it was. */
export class BackendError extends Error {
  override readonly name = 'BackendError';
  constructor(
    readonly kind: FailureKind,
    message: string,
  ) {
    super(message);
  }
}

/** The confirmed outcome of one detach or attach. */
export type DeviceOutcome =
  { readonly ok: true } | { readonly ok: false; readonly error: FailureKind; readonly message: string };
/** The confirmed outcome of one detach: `{ ok: true }` once the device is gone. */
export type DetachOutcome = DeviceOutcome;
/** The confirmed outcome of one attach: `{ ok: true }` once the device is there (plugin API 2). */
export type AttachOutcome = DeviceOutcome;

/** One device to detach from, or attach to, one VM. */
export interface DeviceRequest {
  readonly vm: VmInfo;
  readonly device: DeviceSpec;
  /**
   * How long the device may take, counted from when the backend issues its
   * call (see {@link issued}); `detachTimeoutSeconds` from the config.
   */
  readonly timeoutMs: number;
  /**
   * Aborted when the core stops waiting: at the timeout (reason
   * `'timeout'`) or when the daemon shuts down (reason `'shutdown'`).
   * After a `'timeout'` abort the backend has a short grace period to
   * resolve with what it verified (for example `{ ok: true }` when the
   * device turns out to be gone, or there); after that the core reports
   * `Timeout`. The core makes the signal when a backend first reads it:
   * read it only to wait on it (an `abort` listener, added only for as long
   * as the backend waits) or for the reason of an abort, and check
   * {@link aborted} otherwise. On Node 20 every AbortSignal made outlives
   * young collections into the old generation (Node makes it as an
   * EventTarget and then changes its prototype), and a listener takes what
   * it reaches there too: under load, a signal per request lengthens every
   * scavenge (`bench/README.md`).
   */
  readonly signal: AbortSignal;
  /** Whether `signal` is aborted, read without making the signal (plugin API 4). */
  readonly aborted: boolean;
  /**
   * Pauses the core's clock for this device while it waits for another
   * operation of the same VM. Optional: a backend that issues every call
   * at once never calls it.
   */
  hold(): void;
  /** Starts this device's clock now, with the full `timeoutMs`. */
  issued(): void;
}
/** One device to detach from one VM. */
export type DetachRequest = DeviceRequest;
/** One device to attach to one VM (plugin API 2). */
export type AttachRequest = DeviceRequest;

/** One device of a VM, as `listDevices` reports it (plugin API 2). */
export interface ListedDevice {
  /**
   * Its label: the device's alias where it has one, else one the backend
   * derives from the device, stably (1-64 characters of A-Za-z0-9_.:-,
   * unique within the VM).
   */
  readonly label: string;
  /**
   * Its tokens, in the format of the device map (`type=…` first): enough
   * to detach it, and, where the tokens can describe the device in full
   * (see {@link DESCRIPTIVE_PARAMS}), to attach it again as it was.
   */
  readonly tokens: readonly string[];
}

/** Whether a backend can reach its hypervisor; shown in the `Backends` property. */
export type BackendHealth = { readonly connected: true } | { readonly connected: false; readonly reason: string };

/** Levelled logging; each line is tagged with the backend id. */
export interface Logger {
  error(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  debug(message: string, fields?: Record<string, unknown>): void;
}

/**
 * How complete a published list is (plugin API 3).
 *
 * A backend that reads its VMs' types with one call per VM (libvirt reads
 * each domain's metadata) can publish their names and states first, with
 * `typesPending: true`, and the same list with the types once they are
 * read (a `publish` without the flag ends the wait). Meanwhile `TestSignal`
 * and `TestProperty` show the VMs, and every request that resolves a
 * selector (`TestMethod`, `AttachDevices`, `GetDevices`) waits for the
 * types, since any selector may name a type: at most
 * `detachTimeoutSeconds`, then it is refused with `BackendUnavailable`. A
 * backend that loses its hypervisor meanwhile ends the wait too (its VMs
 * are then unavailable, as always). `update` and `remove` leave the flag
 * as it is; the VMs they report carry their types.
 */
export interface PublishOptions {
  readonly typesPending?: boolean;
}

/** What the core gives a backend when it creates it. */
export interface BackendContext {
  /** The backend's id from the config. */
  readonly id: string;
  /** The backend's entry from the config without `id` and `plugin`, validated against the factory's `optionsSchema`. */
  readonly options: Readonly<Record<string, unknown>>;
  readonly log: Logger;
  /**
   * Replaces the whole list of this backend's VMs. Call it once the first
   * complete list is known (that marks the backend ready), and again after
   * a reconnect. Names must be unique within the list. With
   * `{ typesPending: true }` (plugin API 3) the list's names and states are
   * complete but its types are still being read: see {@link PublishOptions}.
   */
  publish(vms: readonly VmInfo[], options?: PublishOptions): void;
  /** Adds or replaces one VM (matched by name), for a change the hypervisor reported. */
  update(vm: VmInfo): void;
  /** Removes one VM by name. */
  remove(name: string): void;
  /** Reports whether the hypervisor is reachable. A new backend starts as disconnected ("starting"). */
  setHealth(health: BackendHealth): void;
}

/**
 * A backend: one connection to one hypervisor, owning a set of VMs.
 */
export interface VmBackend {
  /**
   * Connects and publishes the first list of VMs. Called once. Resolve when
   * the backend is running, even if the hypervisor is not reachable yet
   * (report that with `setHealth` and keep trying); reject only when it can
   * never work (for example an option the hypervisor refuses).
   */
  start(): Promise<void>;
  /** Releases everything the backend holds. Called once, at shutdown. */
  stop(): Promise<void>;
  /**
   * Detaches one device and resolves with the confirmed outcome: `{ ok: true }`
   * only once the hypervisor confirms the device is gone. Must settle, at
   * the latest shortly after `request.signal` is aborted.
   */
  detach(request: DetachRequest): Promise<DetachOutcome>;
  /**
   * Plugin API 2, optional (without it, `GetDevices` answers `NotSupported`).
   * The VM's disks, network interfaces and host devices, and nothing else
   * (no controllers, input, sound, video, balloon or consoles), as the
   * hypervisor has them now: the running VM's, or a shut-off VM's
   * definition. Rejects with a `BackendError` (`BackendUnavailable`,
   * `Failed`, …); the core stops waiting after `detachTimeoutSeconds`.
   */
  listDevices?(vm: VmInfo): Promise<readonly ListedDevice[]>;
  /**
   * Plugin API 2, optional (without it, `AttachDevices` answers
   * `NotSupported` and starts nothing). Attaches one device, to the running
   * VM (and with `persistent` to its definition too) or to a shut-off VM's
   * definition, and resolves with the confirmed outcome: `{ ok: true }` only
   * once the hypervisor confirms the device is there. A refusal carries the
   * hypervisor's own message. Must settle, at the latest shortly after
   * `request.signal` is aborted.
   */
  attach?(request: AttachRequest): Promise<AttachOutcome>;
  /**
   * Asks the hypervisor for a state change and resolves once it accepted
   * the request; the new state itself arrives through `update`/`publish`.
   */
  setState(vm: VmInfo, state: DesiredState): Promise<void>;
}

/** What a plugin binds in its container: it creates the plugin's backends. */
export interface BackendFactory {
  /**
   * A JSON Schema (draft 2020-12 or 07) for a backend's options (its config
   * entry without `id` and `plugin`). An invalid config stops the daemon at
   * start, naming the field.
   */
  readonly optionsSchema?: Record<string, unknown>;
  /** Creates one backend; must not connect yet (that is `start`). */
  create(context: BackendContext): VmBackend;
}

/** The inversify token a plugin binds its {@link BackendFactory} to. */
export const BackendFactory = Symbol.for('vmdevd.plugin-api.BackendFactory');

/** What a plugin package exports. */
export interface VmdevdPlugin {
  /**
   * The plugin-API version it was built for, as a number (not
   * {@link PLUGIN_API_VERSION}, which at run time is the daemon's own). A
   * daemon loads it when this is from its {@link OLDEST_PLUGIN_API_VERSION}
   * to its own version.
   */
  readonly apiVersion: number;
  /** A short name for logs. */
  readonly name: string;
  /** Binds {@link BackendFactory}, and whatever the plugin needs internally. */
  readonly module: ContainerModule;
}
