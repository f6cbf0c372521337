/**
 * The typed face of the native libvirt binding (`native/`, built by node-gyp
 * into `build/Release/vmdevd_libvirt.node`).
 *
 * Every method returns a Promise and runs its libvirt call on one of the
 * connection's own threads; the JavaScript thread never waits for libvirt,
 * and no call waits behind another (a slow detach holds only its thread). Domains are
 * addressed by UUID string: the binding looks the domain up, calls, and
 * frees it on every path, so no libvirt object outlives a call.
 *
 * Events (lifecycle, device added, device removed, device removal failed) and the close
 * callback are registered by {@link Connection.open} before it resolves,
 * so a detach can never be issued before its DEVICE_REMOVED event could be
 * received. libvirt's event loop runs on the main thread's libuv loop, so
 * an event reaches its listener on the thread that received it; the
 * callbacks run on the JavaScript thread, in the order libvirt emitted them.
 * Load this module on the main thread first (a worker may load it later).
 */
import { createRequire } from 'node:module';

/** One domain as libvirt reports it. */
export interface DomainInfo {
  readonly name: string;
  /** Lower-case, with dashes: the key for every per-domain call. */
  readonly uuid: string;
  /** The hypervisor's id while running, -1 otherwise. */
  readonly id: number;
  /** A `VIR_DOMAIN_<STATE>` constant. */
  readonly state: number;
  /** A `VIR_DOMAIN_<STATE>_<REASON>` constant of that state. */
  readonly reason: number;
  readonly persistent: boolean;
  readonly active: boolean;
  /**
   * From {@link Connection.listDomains} with `metadataNamespace`: the domain's
   * metadata element of that namespace, as XML; absent when it has none.
   */
  readonly metadata?: string;
}

/** A domain event, delivered on the JavaScript thread. */
export type DomainEvent =
  | {
      readonly kind: 'lifecycle';
      readonly name: string;
      readonly uuid: string;
      /** A `VIR_DOMAIN_EVENT_<EVENT>` constant. */
      readonly event: number;
      /** A `VIR_DOMAIN_EVENT_<EVENT>_<DETAIL>` constant of that event. */
      readonly detail: number;
    }
  | { readonly kind: 'device-added'; readonly name: string; readonly uuid: string; readonly alias: string }
  | { readonly kind: 'device-removed'; readonly name: string; readonly uuid: string; readonly alias: string }
  | { readonly kind: 'device-removal-failed'; readonly name: string; readonly uuid: string; readonly alias: string };

export interface OpenOptions {
  /** Open read-only (`virConnectOpenReadOnly`): listing and events work, changes do not. */
  readonly readOnly?: boolean;
  /**
   * Called for every domain event of the connection, until `close()` is
   * called. Must not throw: an exception it throws is an uncaught exception.
   * Without it the connection does not subscribe to domain events: libvirtd
   * sends it none, and its process is not woken for them.
   */
  readonly onEvent?: (event: DomainEvent) => void;
  /**
   * Called once when libvirt reports the connection closed by the other
   * side (a `VIR_CONNECT_CLOSE_REASON_*` constant): the daemon went away,
   * keepalive timed out, or a socket error. Not called for `close()`.
   * The connection is unusable afterwards; `close()` it and open a new one.
   */
  readonly onClose?: (reason: number) => void;
}

/** A failed libvirt call: libvirt's own error, as `virGetLastError` described it. */
export class LibvirtError extends Error {
  override readonly name = 'LibvirtError';
  constructor(
    message: string,
    /** A `VIR_ERR_*` constant. */
    readonly code: number,
    /** A `VIR_FROM_*` constant: the part of libvirt that reported it. */
    readonly domain: number,
    /** A `VIR_ERR_NONE`/`VIR_ERR_WARNING`/`VIR_ERR_ERROR` constant. */
    readonly level: number,
  ) {
    super(message);
  }
}

/**
 * The libvirt constants the binding exports, with the values of the
 * headers the addon was compiled against. The list is checked against the
 * addon when this module loads.
 */
const CONSTANT_NAMES = [
  'VIR_DOMAIN_NOSTATE',
  'VIR_DOMAIN_RUNNING',
  'VIR_DOMAIN_BLOCKED',
  'VIR_DOMAIN_PAUSED',
  'VIR_DOMAIN_SHUTDOWN',
  'VIR_DOMAIN_SHUTOFF',
  'VIR_DOMAIN_CRASHED',
  'VIR_DOMAIN_PMSUSPENDED',
  'VIR_DOMAIN_RUNNING_UNKNOWN',
  'VIR_DOMAIN_RUNNING_BOOTED',
  'VIR_DOMAIN_RUNNING_MIGRATED',
  'VIR_DOMAIN_RUNNING_RESTORED',
  'VIR_DOMAIN_RUNNING_FROM_SNAPSHOT',
  'VIR_DOMAIN_RUNNING_UNPAUSED',
  'VIR_DOMAIN_RUNNING_WAKEUP',
  'VIR_DOMAIN_RUNNING_CRASHED',
  'VIR_DOMAIN_PAUSED_UNKNOWN',
  'VIR_DOMAIN_PAUSED_USER',
  'VIR_DOMAIN_PAUSED_MIGRATION',
  'VIR_DOMAIN_PAUSED_SAVE',
  'VIR_DOMAIN_PAUSED_DUMP',
  'VIR_DOMAIN_PAUSED_IOERROR',
  'VIR_DOMAIN_PAUSED_WATCHDOG',
  'VIR_DOMAIN_PAUSED_FROM_SNAPSHOT',
  'VIR_DOMAIN_PAUSED_SHUTTING_DOWN',
  'VIR_DOMAIN_PAUSED_SNAPSHOT',
  'VIR_DOMAIN_PAUSED_CRASHED',
  'VIR_DOMAIN_PAUSED_STARTING_UP',
  'VIR_DOMAIN_SHUTDOWN_UNKNOWN',
  'VIR_DOMAIN_SHUTDOWN_USER',
  'VIR_DOMAIN_SHUTOFF_UNKNOWN',
  'VIR_DOMAIN_SHUTOFF_SHUTDOWN',
  'VIR_DOMAIN_SHUTOFF_DESTROYED',
  'VIR_DOMAIN_SHUTOFF_CRASHED',
  'VIR_DOMAIN_SHUTOFF_MIGRATED',
  'VIR_DOMAIN_SHUTOFF_SAVED',
  'VIR_DOMAIN_SHUTOFF_FAILED',
  'VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT',
  'VIR_DOMAIN_SHUTOFF_DAEMON',
  'VIR_DOMAIN_CRASHED_UNKNOWN',
  'VIR_DOMAIN_CRASHED_PANICKED',
  'VIR_DOMAIN_EVENT_DEFINED',
  'VIR_DOMAIN_EVENT_UNDEFINED',
  'VIR_DOMAIN_EVENT_STARTED',
  'VIR_DOMAIN_EVENT_SUSPENDED',
  'VIR_DOMAIN_EVENT_RESUMED',
  'VIR_DOMAIN_EVENT_STOPPED',
  'VIR_DOMAIN_EVENT_SHUTDOWN',
  'VIR_DOMAIN_EVENT_PMSUSPENDED',
  'VIR_DOMAIN_EVENT_CRASHED',
  'VIR_DOMAIN_EVENT_DEFINED_ADDED',
  'VIR_DOMAIN_EVENT_DEFINED_UPDATED',
  'VIR_DOMAIN_EVENT_DEFINED_RENAMED',
  'VIR_DOMAIN_EVENT_UNDEFINED_REMOVED',
  'VIR_DOMAIN_EVENT_UNDEFINED_RENAMED',
  'VIR_DOMAIN_EVENT_STARTED_BOOTED',
  'VIR_DOMAIN_EVENT_STARTED_MIGRATED',
  'VIR_DOMAIN_EVENT_STARTED_RESTORED',
  'VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT',
  'VIR_DOMAIN_EVENT_STARTED_WAKEUP',
  'VIR_DOMAIN_EVENT_SUSPENDED_PAUSED',
  'VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED',
  'VIR_DOMAIN_EVENT_SUSPENDED_IOERROR',
  'VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR',
  'VIR_DOMAIN_EVENT_RESUMED_UNPAUSED',
  'VIR_DOMAIN_EVENT_RESUMED_MIGRATED',
  'VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN',
  'VIR_DOMAIN_EVENT_STOPPED_DESTROYED',
  'VIR_DOMAIN_EVENT_STOPPED_CRASHED',
  'VIR_DOMAIN_EVENT_STOPPED_MIGRATED',
  'VIR_DOMAIN_EVENT_STOPPED_SAVED',
  'VIR_DOMAIN_EVENT_STOPPED_FAILED',
  'VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED',
  'VIR_DOMAIN_EVENT_SHUTDOWN_GUEST',
  'VIR_DOMAIN_EVENT_SHUTDOWN_HOST',
  'VIR_DOMAIN_EVENT_CRASHED_PANICKED',
  'VIR_DOMAIN_AFFECT_CURRENT',
  'VIR_DOMAIN_AFFECT_LIVE',
  'VIR_DOMAIN_AFFECT_CONFIG',
  'VIR_DOMAIN_UNDEFINE_MANAGED_SAVE',
  'VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA',
  'VIR_DOMAIN_UNDEFINE_NVRAM',
  'VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA',
  'VIR_CONNECT_CLOSE_REASON_ERROR',
  'VIR_CONNECT_CLOSE_REASON_EOF',
  'VIR_CONNECT_CLOSE_REASON_KEEPALIVE',
  'VIR_CONNECT_CLOSE_REASON_CLIENT',
  'VIR_ERR_OK',
  'VIR_ERR_INTERNAL_ERROR',
  'VIR_ERR_NO_SUPPORT',
  'VIR_ERR_NO_CONNECT',
  'VIR_ERR_INVALID_CONN',
  'VIR_ERR_INVALID_DOMAIN',
  'VIR_ERR_INVALID_ARG',
  'VIR_ERR_OPERATION_FAILED',
  'VIR_ERR_OPERATION_INVALID',
  'VIR_ERR_OPERATION_UNSUPPORTED',
  'VIR_ERR_OPERATION_TIMEOUT',
  'VIR_ERR_OPERATION_DENIED',
  'VIR_ERR_ACCESS_DENIED',
  'VIR_ERR_AUTH_FAILED',
  'VIR_ERR_NO_DOMAIN',
  'VIR_ERR_DEVICE_MISSING',
  'VIR_ERR_NO_DOMAIN_METADATA',
  'VIR_ERR_SYSTEM_ERROR',
  'VIR_ERR_RPC',
  'VIR_ERR_XML_ERROR',
  'VIR_ERR_XML_DETAIL',
  'VIR_ERR_CONFIG_UNSUPPORTED',
  'VIR_FROM_NONE',
  'VIR_FROM_QEMU',
  'VIR_FROM_TEST',
  'VIR_FROM_REMOTE',
  'VIR_FROM_RPC',
  'VIR_FROM_URI',
  'VIR_FROM_DOMAIN',
  'VIR_ERR_NONE',
  'VIR_ERR_WARNING',
  'VIR_ERR_ERROR',
] as const;

export type ConstantName = (typeof CONSTANT_NAMES)[number];
export type Constants = { readonly [name in ConstantName]: number };

/** The addon as it is loaded; only this module talks to it. */
interface NativeConnection {
  close(): Promise<number>;
  setKeepAlive(interval: number, count: number): Promise<boolean>;
  isAlive(): Promise<boolean>;
  listDomains(metadataNamespace: string | undefined): Promise<DomainInfo[]>;
  defineXml(xml: string): Promise<DomainInfo>;
  getDomain(uuid: string): Promise<DomainInfo>;
  getXml(uuid: string, inactive: boolean): Promise<string>;
  getMetadata(uuid: string, namespaceUri: string, inactive: boolean): Promise<string | undefined>;
  detachDevice(uuid: string, xml: string, flags: number): Promise<void>;
  detachDeviceAlias(uuid: string, alias: string, flags: number): Promise<void>;
  attachDevice(uuid: string, xml: string, flags: number): Promise<void>;
  create(uuid: string): Promise<void>;
  resume(uuid: string): Promise<void>;
  suspend(uuid: string): Promise<void>;
  shutdown(uuid: string): Promise<void>;
  destroy(uuid: string): Promise<void>;
  undefine(uuid: string, flags: number): Promise<void>;
}

/**
 * How the addon hands over a domain event: its kind (an index of
 * `EVENT_KINDS`), the domain's name and UUID, then the lifecycle event and
 * its detail, or the device's alias.
 */
type NativeEventListener = (kind: number, name: string, uuid: string, a: number | string, detail?: number) => void;

/** The kinds of the device events, by the number the addon gives them (a lifecycle event is 0). */
const DEVICE_EVENT_KINDS = [undefined, 'device-added', 'device-removed', 'device-removal-failed'] as const;

/** The listener the addon calls, building each event as an object literal here. */
function nativeListener(onEvent: (event: DomainEvent) => void): NativeEventListener {
  return (kind, name, uuid, a, detail) => {
    if (kind === 0) onEvent({ kind: 'lifecycle', name, uuid, event: a as number, detail: detail! });
    else onEvent({ kind: DEVICE_EVENT_KINDS[kind]!, name, uuid, alias: a as string });
  };
}

interface NativeModule {
  open(
    uri: string,
    readOnly: boolean,
    onEvent: NativeEventListener | undefined,
    onClose: ((reason: number) => void) | undefined,
  ): Promise<NativeConnection>;
  setErrorClass(constructor: typeof LibvirtError): void;
  requestLoopSlice(microseconds: number): LoopSlice;
  readonly constants: Record<string, number>;
}

const native = createRequire(import.meta.url)('../../build/Release/vmdevd_libvirt.node') as NativeModule;
native.setErrorClass(LibvirtError);

function checkConstants(exported: Record<string, number>): Constants {
  const missing = CONSTANT_NAMES.filter((name) => typeof exported[name] !== 'number');
  if (missing.length > 0) {
    throw new Error(`the libvirt addon does not export ${missing.join(', ')}: rebuild it (npm rebuild)`);
  }
  return Object.freeze({ ...exported }) as Constants;
}

export const constants: Constants = checkConstants(native.constants);

/** The main thread's time slice before and after {@link requestLoopSlice}, in µs (0: the kernel keeps none). */
export interface LoopSlice {
  readonly beforeUs: number;
  readonly afterUs: number;
}

/**
 * Asks the kernel to give the main thread (where libvirt's events run, and
 * every other callback of the process) a time slice of at most
 * `microseconds` (a whole number, 100 to 100,000). On Linux 6.12 and later,
 * which schedule ordinary threads by EEVDF, a thread woken with a short
 * slice gets a CPU sooner instead of waiting out the running thread's
 * longer one; its share of the CPU stays the same. A thread that already
 * has a shorter slice keeps it; a kernel before 6.12 keeps no slice
 * (`afterUs` 0). Throws a TypeError or RangeError for a bad argument, and
 * an Error when called off the main thread, when the thread's scheduling
 * policy is not SCHED_OTHER (left as the operator set it), or when the
 * kernel refuses (a seccomp filter without sched_setattr: EPERM).
 */
export function requestLoopSlice(microseconds: number): LoopSlice {
  return native.requestLoopSlice(microseconds);
}

/**
 * One connection to libvirt. Open it with {@link Connection.open}; release it
 * with {@link Connection.close}. A connection that is garbage-collected or
 * still open when its Node.js environment ends is closed then, but only
 * `close()` tells whether anything still held it.
 *
 * While open, the connection keeps the Node.js process alive (it may
 * deliver events). Calls after `close()` reject with an Error whose `code`
 * is `'ERR_LIBVIRT_CONNECTION_CLOSED'`; libvirt's failures reject with a
 * {@link LibvirtError}.
 */
export class Connection {
  readonly #native: NativeConnection;

  private constructor(nativeConnection: NativeConnection) {
    this.#native = nativeConnection;
  }

  /**
   * Opens `uri` (`test:///default`, `qemu:///system`, `qemu+ssh://host/system`, …)
   * and registers the domain events and the close callback before resolving.
   */
  static async open(uri: string, options: OpenOptions = {}): Promise<Connection> {
    const onEvent = options.onEvent && nativeListener(options.onEvent);
    return new Connection(await native.open(uri, options.readOnly === true, onEvent, options.onClose));
  }

  /**
   * Deregisters the events and the close callback, then closes. Resolves with
   * what `virConnectClose` returns: the references to the connection still
   * held elsewhere (0 when nothing leaked; a call still in flight holds one).
   * No callback runs after it resolves.
   */
  close(): Promise<number> {
    return this.#native.close();
  }

  /**
   * Starts keepalive (`virConnectSetKeepAlive`): after `count` unanswered
   * probes sent every `intervalSeconds`, libvirt closes the connection and
   * `onClose` gets `VIR_CONNECT_CLOSE_REASON_KEEPALIVE`. Resolves false when
   * the daemon does not support keepalive; rejects with `VIR_ERR_NO_SUPPORT`
   * for drivers without a daemon (`test:///`).
   */
  setKeepAlive(intervalSeconds: number, count: number): Promise<boolean> {
    return this.#native.setKeepAlive(intervalSeconds, count);
  }

  /** Whether the connection still works (`virConnectIsAlive`). */
  isAlive(): Promise<boolean> {
    return this.#native.isAlive();
  }

  /**
   * Every domain, active and inactive, in a few calls to libvirt whatever
   * their number (their states all at once, which are active and which
   * persistent as filtered lists). With `metadataNamespace`, each domain's
   * metadata element of that namespace as well (one call per domain).
   */
  listDomains(options: { readonly metadataNamespace?: string } = {}): Promise<DomainInfo[]> {
    return this.#native.listDomains(options.metadataNamespace);
  }

  getDomain(uuid: string): Promise<DomainInfo> {
    return this.#native.getDomain(uuid);
  }

  /** The domain XML: live, or with `inactive` the persistent definition. */
  getXml(uuid: string, options: { readonly inactive?: boolean } = {}): Promise<string> {
    return this.#native.getXml(uuid, options.inactive === true);
  }

  /**
   * The domain's `<metadata>` element in `namespaceUri`, as XML, or
   * `undefined` when it has none (`VIR_ERR_NO_DOMAIN_METADATA`).
   * `inactive`: from the persistent definition rather than the current one.
   */
  getMetadata(
    uuid: string,
    namespaceUri: string,
    options: { readonly inactive?: boolean } = {},
  ): Promise<string | undefined> {
    return this.#native.getMetadata(uuid, namespaceUri, options.inactive === true);
  }

  /**
   * `virDomainDetachDeviceFlags`. Resolving means libvirt accepted the
   * request; for a live domain the device is gone only when the
   * `device-removed` event arrives (libvirt may wait a few seconds for the
   * guest inside the call, and may still return with the device in place).
   * `flags`: `VIR_DOMAIN_AFFECT_*`.
   */
  detachDevice(uuid: string, xml: string, flags: number): Promise<void> {
    return this.#native.detachDevice(uuid, xml, flags);
  }

  /** `virDomainDetachDeviceAlias`: as {@link detachDevice}, by the device's alias. */
  detachDeviceAlias(uuid: string, alias: string, flags: number): Promise<void> {
    return this.#native.detachDeviceAlias(uuid, alias, flags);
  }

  /** `virDomainAttachDeviceFlags`. */
  attachDevice(uuid: string, xml: string, flags: number): Promise<void> {
    return this.#native.attachDevice(uuid, xml, flags);
  }

  /** Starts a defined domain (`virDomainCreate`). */
  create(uuid: string): Promise<void> {
    return this.#native.create(uuid);
  }

  resume(uuid: string): Promise<void> {
    return this.#native.resume(uuid);
  }

  suspend(uuid: string): Promise<void> {
    return this.#native.suspend(uuid);
  }

  /** Asks the guest to shut down (ACPI or agent); resolves once asked. */
  shutdown(uuid: string): Promise<void> {
    return this.#native.shutdown(uuid);
  }

  /** Powers the domain off at once. */
  destroy(uuid: string): Promise<void> {
    return this.#native.destroy(uuid);
  }

  /** `virDomainDefineXML`: defines (or updates) a persistent domain. */
  defineXml(xml: string): Promise<DomainInfo> {
    return this.#native.defineXml(xml);
  }

  /** `virDomainUndefineFlags`; `flags`: `VIR_DOMAIN_UNDEFINE_*`. */
  undefine(uuid: string, flags = 0): Promise<void> {
    return this.#native.undefine(uuid, flags);
  }
}
