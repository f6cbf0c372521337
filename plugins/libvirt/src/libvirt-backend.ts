/**
 * The libvirt backend: one libvirt connection, the domains it sees, and
 * detaches confirmed by libvirt's DEVICE_REMOVED event.
 *
 * State comes from libvirt's events, never from polling: a lifecycle event
 * updates the domain at once; events that change which domains exist are
 * followed by a lookup. When the connection is lost (libvirtd restarts),
 * the backend reports it, reconnects with backoff, registers its events
 * again and republishes every domain.
 *
 * Detaches and attaches: see DomainQueue for ordering and the clock. The
 * devices of a VM are listed from its XML: see listDevices in
 * domain-devices.ts for the labels. A detach that waits on a guest (a
 * device on PCI: libvirt holds the call about 5 s for the guest to release
 * it) is issued on a second connection to the same URI, opened when first
 * needed: libvirtd serves a client's requests five at a time by default
 * (`max_client_requests`), and a few such detaches on the one connection
 * would hold every other call of the backend behind them.
 *
 * Events come on a connection of their own that makes no calls. A libvirt
 * client reads its socket on the thread of the call in flight, if there is
 * one: an event that came on the main connection during a detach (its
 * DEVICE_REMOVED mostly does) was read by that call's thread and handed to
 * the event loop, one more thread to wake before the outcome. On a
 * connection of its own the event loop reads it at once. Where connections
 * do not share the domains (the test driver on a file of its own), one
 * connection does all.
 */
import type {
  BackendContext,
  DesiredState,
  DeviceOutcome,
  DeviceRequest,
  ListedDevice,
  VmBackend,
  VmInfo,
  VmState,
} from 'vmdevd/plugin-api';
import { BackendError } from 'vmdevd/plugin-api';
import {
  Connection,
  constants as C,
  LibvirtError,
  requestLoopSlice,
  type DomainEvent,
  type DomainInfo,
  type OpenOptions,
} from './binding.js';
import { DomainXml, METADATA_NAMESPACE, listDevices, metadataType } from './domain-devices.js';
import { DomainQueue, type Operation } from './domain-queue.js';
import {
  connectionsShareState,
  isAmbiguousError,
  isConnectionError,
  isRefusedUri,
  toBackendError,
  uriProblem,
} from './libvirt-errors.js';
import { ListingGate } from './listing-gate.js';
import { domainState, stateAfterEvent } from './states.js';

/** The slices asked for in this process (once each: the main thread is one for every backend). */
const slicesAsked = new Set<number>();

export interface LibvirtOptions {
  readonly uri: string;
  readonly keepaliveIntervalSeconds: number;
  readonly keepaliveCount: number;
  readonly reconnectInitialMs: number;
  readonly reconnectMaxMs: number;
  /** The main thread's time slice to ask the kernel for, µs; 0: the kernel's default. */
  readonly loopSliceMicroseconds: number;
}

export const OPTIONS_SCHEMA = {
  type: 'object',
  required: ['uri'],
  additionalProperties: false,
  properties: {
    uri: { type: 'string', minLength: 1, description: 'libvirt connection URI, e.g. qemu:///system' },
    keepaliveIntervalSeconds: { type: 'integer', minimum: 1, maximum: 3600 },
    keepaliveCount: { type: 'integer', minimum: 1, maximum: 100 },
    reconnectInitialMs: { type: 'integer', minimum: 10, maximum: 60000 },
    reconnectMaxMs: { type: 'integer', minimum: 10, maximum: 600000 },
    // The kernel takes 100 µs to 100 ms; 0 asks for nothing.
    loopSliceMicroseconds: {
      type: 'integer',
      minimum: 0,
      maximum: 100000,
      multipleOf: 100,
      description: "the main thread's time slice to ask the kernel for, µs; 0 leaves the kernel's",
    },
  },
} as const;

export function readOptions(raw: Readonly<Record<string, unknown>>): LibvirtOptions {
  return {
    uri: raw['uri'] as string,
    keepaliveIntervalSeconds: (raw['keepaliveIntervalSeconds'] as number | undefined) ?? 5,
    keepaliveCount: (raw['keepaliveCount'] as number | undefined) ?? 3,
    reconnectInitialMs: (raw['reconnectInitialMs'] as number | undefined) ?? 500,
    reconnectMaxMs: (raw['reconnectMaxMs'] as number | undefined) ?? 30000,
    loopSliceMicroseconds: (raw['loopSliceMicroseconds'] as number | undefined) ?? 1000,
  };
}

/** What the backend knows of one domain. */
export interface Domain {
  readonly uuid: string;
  readonly name: string;
  readonly type: string | undefined;
  readonly state: VmState;
  readonly persistent: boolean;
  readonly active: boolean;
}

const CLOSE_REASONS: Record<number, string> = {
  [C.VIR_CONNECT_CLOSE_REASON_ERROR]: 'a socket error',
  [C.VIR_CONNECT_CLOSE_REASON_EOF]: 'libvirt closed the connection',
  [C.VIR_CONNECT_CLOSE_REASON_KEEPALIVE]: 'keepalive timed out',
  [C.VIR_CONNECT_CLOSE_REASON_CLIENT]: 'closed by the client',
};

export type RemovalResult = 'removed' | 'failed';
export type RemovalListener = (result: RemovalResult, stray: boolean) => void;
/** Called with the alias of a device libvirt reports added to the domain. */
export type AddedListener = (alias: string) => void;

export class LibvirtBackend implements VmBackend {
  private readonly options: LibvirtOptions;
  private conn: Connection | undefined;
  /** The connection events come on: a second one, or `conn` itself (see the top of this file). */
  private eventConn: Connection | undefined;
  private generation = 0;
  /** Connections made so far (see connectionNumber). */
  private connectionsMade = 0;
  private domains = new Map<string, Domain>();
  private reloading: Set<string> | undefined;
  /** Domains listed without their type, until readTypes reads it (a lookup reads it too). */
  private untyped = new Set<string>();
  private readonly removalWatchers = new Map<string, Set<RemovalListener>>();
  private readonly addedWatchers = new Map<string, Set<AddedListener>>();
  private readonly queues = new Map<string, DomainQueue>();
  private readonly connectedWaiters = new Set<() => void>();
  private readonly strayEvents = new Set<string>();
  /** Domain XML by UUID, dropped on every event of the domain (see domainXml). */
  private readonly xmlCache = new Map<string, XmlKept>();
  /** The last XML fetched of each domain and kind, parsed: a fetch that returns the same text reuses it. */
  private readonly lastXml = new Map<string, { live?: DomainXml; config?: DomainXml }>();
  /** The second connection, for detaches that wait on a guest; of one generation of the main one. */
  private guestLane: { readonly generation: number; readonly conn: Promise<Connection | undefined> } | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private backoffMs: number;
  private stopped = false;

  constructor(
    readonly ctx: BackendContext,
    private readonly listings: ListingGate = new ListingGate(0),
  ) {
    this.options = readOptions(ctx.options);
    this.backoffMs = this.options.reconnectInitialMs;
  }

  get uri(): string {
    return this.options.uri;
  }

  /** The open connection, or a BackendUnavailable error. */
  connection(): Connection {
    if (this.conn === undefined) throw new BackendError('BackendUnavailable', `not connected to ${this.uri}`);
    return this.conn;
  }

  isConnected(): boolean {
    return this.conn !== undefined;
  }

  /**
   * The connection for a call that may wait seconds for a guest (see the
   * top of this file): the second connection, or the main one when the
   * second cannot be opened. Throws BackendUnavailable when not connected.
   */
  async guestConnection(): Promise<Connection> {
    const main = this.connection();
    if (!connectionsShareState(this.uri)) return main;
    const generation = this.generation;
    if (this.guestLane?.generation !== generation) {
      this.closeGuestLane();
      this.guestLane = { generation, conn: this.openGuestLane(generation) };
    }
    return (await this.guestLane.conn) ?? main;
  }

  private async openGuestLane(generation: number): Promise<Connection | undefined> {
    try {
      const conn = await this.open();
      if (this.stopped || generation !== this.generation) {
        await conn.close().catch(() => undefined);
        return undefined;
      }
      return conn;
    } catch (err) {
      this.ctx.log.warn('no second connection for detaches that wait on a guest; they share the main one', {
        uri: this.uri,
        error: (err as Error).message,
      });
      return undefined;
    }
  }

  private closeGuestLane(): void {
    const lane = this.guestLane;
    this.guestLane = undefined;
    if (lane === undefined) return;
    void lane.conn.then((conn) => conn?.close()).catch(() => undefined);
  }

  /**
   * The number of the connection made last (the one up, if any): what a
   * call found out on one connection says nothing of the next, since a
   * detach's removal, say, may have been lost with libvirtd.
   */
  get connectionNumber(): number {
    return this.connectionsMade;
  }

  /**
   * Calls `fn` once a connection made after connection `number` is up (at
   * once if one is), or when the backend stops; returns what cancels the
   * wait. A connection that died before its close callback came is still
   * the one up: `isConnected` says true for it, and only this wait wakes
   * at the connection that follows it.
   */
  onConnectedAfter(number: number, fn: () => void): () => void {
    const ready = () => this.stopped || (this.conn !== undefined && this.connectionsMade !== number);
    if (ready()) {
      fn();
      return () => {};
    }
    const check = () => {
      if (!ready()) return;
      this.connectedWaiters.delete(check);
      fn();
    };
    this.connectedWaiters.add(check);
    return () => this.connectedWaiters.delete(check);
  }

  domain(uuid: string): Domain | undefined {
    return this.domains.get(uuid);
  }

  /**
   * The domain's live XML, or with `inactive` its definition. Kept between
   * calls and dropped on any event of the domain (lifecycle, device added,
   * removed or removal failed, which is every way its devices change), so a
   * detach need not wait for a round trip to libvirt first. `fresh` asks
   * libvirt in any case.
   */
  domainXml(uuid: string, inactive = false, fresh = false): Promise<DomainXml> {
    const known = this.xmlCache.get(uuid);
    const entry: XmlKept = known ?? {};
    if (known === undefined) this.xmlCache.set(uuid, entry);
    const key = inactive ? 'config' : 'live';
    const cached = entry[key];
    if (cached !== undefined && !fresh) return cached;
    const conn = this.connection();
    const now = inactive ? 'configNow' : 'liveNow';
    entry[now] = undefined;
    /** A fetch that failed is not kept: the next caller asks again. */
    const failed = (err: unknown): never => {
      if (entry[key] === fetched) delete entry[key];
      throw err;
    };
    const fetched = conn.getXml(uuid, { inactive }).then((text) => {
      // Asked again for a device it lacks, a domain mostly has not changed:
      // its XML is not parsed again.
      let last = this.lastXml.get(uuid);
      if (last === undefined) this.lastXml.set(uuid, (last = {}));
      let parsed = last[key];
      // (DomainXml parses when first read: this cannot throw.)
      if (parsed?.text !== text) last[key] = parsed = new DomainXml(text);
      if (entry[key] === fetched) entry[now] = parsed;
      return parsed;
    }, failed);
    entry[key] = fetched;
    // Kept for later callers: never an unhandled rejection, whoever asks.
    fetched.catch(ignore);
    return fetched;
  }

  /**
   * The XML `domainXml` keeps, when it has arrived: undefined while none
   * is kept, or while its fetch is in flight. Lets a detach that finds its
   * device in it go on without waiting for a turn of the microtask queue.
   */
  domainXmlNow(uuid: string, inactive = false): DomainXml | undefined {
    const entry = this.xmlCache.get(uuid);
    return inactive ? entry?.configNow : entry?.liveNow;
  }

  private xmlChanged(uuid: string): void {
    this.xmlCache.delete(uuid);
    // Domains vmdevd detaches from get their XML fetched and parsed again,
    // off the path of the next request: at once, or, while a call of
    // vmdevd's own is in flight on the domain (the event is mostly that
    // call's), once it returns. Fetched meanwhile, the XML would be parsed
    // while the outcome is on its way to the client, and asked of libvirtd
    // while it still finishes the call.
    const queue = this.queues.get(uuid);
    if (queue === undefined) return;
    if (queue.calling) queue.afterCall(() => this.prefetchXml(uuid));
    else this.prefetchXml(uuid);
  }

  private prefetchXml(uuid: string): void {
    if (this.conn === undefined || !this.domains.get(uuid)?.active || this.xmlCache.get(uuid)?.live !== undefined)
      return;
    this.domainXml(uuid)
      .then((d) => d.devices)
      .catch(() => undefined);
  }

  async start(): Promise<void> {
    const problem = uriProblem(this.uri);
    if (problem !== undefined) {
      throw new BackendError(
        'Failed',
        `configuration error: uri ${JSON.stringify(this.uri)}: ${problem}; fix "uri" and reload`,
      );
    }
    this.askForShortSlice();
    try {
      await this.connect();
    } catch (err) {
      // A URI libvirt refuses outright is the config's fault: no retry.
      if (isRefusedUri(err)) {
        throw new BackendError(
          'Failed',
          `configuration error: uri ${JSON.stringify(this.uri)} is refused by libvirt (${(err as Error).message}); fix "uri" and reload`,
        );
      }
      this.connectFailed(err);
    }
  }

  /**
   * Asks the kernel for a short time slice for the main thread, where
   * libvirt's events are read and turned into signals: on Linux 6.12 and
   * later, the thread woken by an event then gets a CPU soon, instead of
   * waiting for the running thread's slice (libvirtd's, or QEMU's) to end.
   * bench/README.md measures it. Its share of the CPU stays the same.
   */
  private askForShortSlice(): void {
    const us = this.options.loopSliceMicroseconds;
    if (us === 0 || slicesAsked.has(us)) return;
    slicesAsked.add(us);
    try {
      const { beforeUs, afterUs } = requestLoopSlice(us);
      if (afterUs === 0) {
        this.ctx.log.info('this kernel takes no time-slice request (Linux 6.12 and later do): default scheduling');
      } else if (afterUs !== beforeUs) {
        this.ctx.log.info('main thread: shorter time slice, so that an event gets a CPU sooner', {
          sliceUs: afterUs,
          wasUs: beforeUs,
        });
      } else {
        // Inherited from whoever started vmdevd, or asked for by another backend.
        this.ctx.log.info('main thread: its time slice was already as short as asked', {
          sliceUs: afterUs,
          askedUs: us,
        });
      }
    } catch (err) {
      this.ctx.log.warn("could not shorten the main thread's time slice: events may wait longer for a CPU", {
        error: (err as Error).message,
      });
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    for (const queue of this.queues.values()) queue.stop();
    const opened = this.letGo();
    this.generation++;
    this.closeGuestLane();
    for (const conn of opened) {
      const refs = await conn.close().catch(() => -1);
      if (refs > 0) this.ctx.log.warn('libvirt connection still referenced after close', { references: refs });
    }
    for (const wake of [...this.connectedWaiters]) wake();
  }

  detach(request: DeviceRequest): Promise<DeviceOutcome> {
    return this.submit('detach', request);
  }

  attach(request: DeviceRequest): Promise<DeviceOutcome> {
    return this.submit('attach', request);
  }

  /**
   * The VM's disks, interfaces and host devices, from its live XML or, shut
   * off, from its definition (asked of libvirt afresh: a listing is what
   * clients act on next).
   */
  async listDevices(vm: VmInfo): Promise<readonly ListedDevice[]> {
    const domain = this.domainOfVm(vm);
    if (domain === undefined) throw new BackendError('Failed', `VM "${vm.name}" no longer exists`);
    try {
      return listDevices(await this.domainXml(domain.uuid, !domain.active, true));
    } catch (err) {
      throw toBackendError(err, `reading the XML of VM "${vm.name}"`);
    }
  }

  private submit(op: Operation, request: DeviceRequest): Promise<DeviceOutcome> {
    const domain = this.domainOfVm(request.vm);
    if (domain === undefined) {
      return Promise.resolve({ ok: false, error: 'Failed', message: `VM "${request.vm.name}" no longer exists` });
    }
    let queue = this.queues.get(domain.uuid);
    if (queue === undefined) {
      queue = new DomainQueue(this, domain.uuid);
      this.queues.set(domain.uuid, queue);
    }
    return queue.submit(op, request);
  }

  private domainOfVm(vm: VmInfo): Domain | undefined {
    return (
      (vm.uuid !== undefined ? this.domains.get(vm.uuid) : undefined) ??
      [...this.domains.values()].find((d) => d.name === vm.name)
    );
  }

  async setState(vm: VmInfo, desired: DesiredState): Promise<void> {
    const conn = this.connection();
    const domain = vm.uuid !== undefined ? this.domains.get(vm.uuid) : undefined;
    if (domain === undefined) throw new BackendError('Failed', `VM "${vm.name}" no longer exists`);
    const { uuid, state } = domain;
    const refuse = (why: string) => new BackendError('NotSupported', `VM "${vm.name}" is ${state}: ${why}`);
    let call: (() => Promise<void>) | undefined;
    switch (desired) {
      case 'running':
        if (state === 'shutoff') call = () => conn.create(uuid);
        else if (state === 'paused') call = () => conn.resume(uuid);
        else if (state === 'pmsuspended' || state === 'crashed') throw refuse('power it off first, then start it');
        break;
      case 'paused':
        if (state === 'running' || state === 'blocked') call = () => conn.suspend(uuid);
        else if (state !== 'paused') throw refuse('only a running VM can be paused');
        break;
      case 'shutdown':
        if (state !== 'shutoff') call = () => conn.shutdown(uuid);
        break;
      case 'shutoff':
        if (state !== 'shutoff') call = () => conn.destroy(uuid);
        break;
    }
    if (call === undefined) return;
    try {
      await call();
    } catch (err) {
      throw toBackendError(err, `setting VM "${vm.name}" to ${desired}`);
    }
  }

  /**
   * Calls `listener` when libvirt reports the device with `alias` removed
   * from the domain (or its removal failed). Register before issuing the
   * detach: the event can come before the call returns. `stray` is true for
   * an event that may belong to an earlier device of the same alias (libvirt
   * reuses aliases): one whose removal vmdevd stopped waiting for, or
   * confirmed from the XML before its event came. Such an event confirms
   * nothing by itself; the listener checks the XML.
   */
  watchRemoval(uuid: string, alias: string, listener: RemovalListener): () => void {
    const key = `${uuid}\u0000${alias}`;
    let set = this.removalWatchers.get(key);
    if (set === undefined) {
      set = new Set();
      this.removalWatchers.set(key, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.removalWatchers.delete(key);
    };
  }

  /**
   * Calls `listener` with the alias of every device libvirt reports added
   * to the domain (DEVICE_ADDED). Register before issuing the attach: the
   * event can come before the call returns. The alias is whatever device
   * was added; the listener checks the XML to tell whether it is its own.
   */
  watchAdded(uuid: string, listener: AddedListener): () => void {
    let set = this.addedWatchers.get(uuid);
    if (set === undefined) {
      set = new Set();
      this.addedWatchers.set(uuid, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.addedWatchers.delete(uuid);
    };
  }

  /**
   * Remembers that a removal event of this alias may still come without a
   * detach waiting for it (the detach was given up, or confirmed from the
   * XML first), so that it is not taken for a later device's.
   */
  expectStrayEvent(uuid: string, alias: string): void {
    this.strayEvents.add(`${uuid}\u0000${alias}`);
    if (this.strayEvents.size > 1000) this.strayEvents.delete(this.strayEvents.values().next().value!);
  }

  /**
   * Whether `err` means the connection is gone. An ambiguous error (a
   * failed system call, which libvirt reports the same way from its daemon
   * and from its transport) is settled by asking the connection.
   */
  async isLost(err: unknown): Promise<boolean> {
    if (isConnectionError(err)) return true;
    if (!isAmbiguousError(err)) return false;
    const conn = this.conn;
    if (conn === undefined) return true;
    return !(await conn.isAlive().catch(() => false));
  }

  // ---- connection ------------------------------------------------------------

  private async connect(): Promise<void> {
    const listed = this.listings.begin();
    try {
      await this.openAndList();
    } finally {
      listed();
    }
  }

  /** Connects, lists the domains, publishes them, and starts reading their types. */
  private async openAndList(): Promise<void> {
    const generation = ++this.generation;
    const stale = () => this.stopped || generation !== this.generation;
    const onEvent = (e: DomainEvent) => this.onEvent(generation, e);
    const onClose = (reason: number) => this.onClose(generation, reason);
    const opened: Connection[] = [];
    try {
      // Both are open, and so events registered, before the listing
      // begins: an event that comes meanwhile is replayed after it (see
      // reload).
      const wanted: OpenOptions[] = [{ onEvent, onClose }];
      if (connectionsShareState(this.uri)) wanted.push({ onClose });
      const settled = await Promise.allSettled(wanted.map((options) => this.open(options)));
      for (const result of settled) if (result.status === 'fulfilled') opened.push(result.value);
      for (const result of settled) if (result.status === 'rejected') throw result.reason;
      if (!stale()) await this.reload(opened.at(-1)!);
    } catch (err) {
      await closeAll(opened);
      throw err;
    }
    if (stale()) {
      await closeAll(opened);
      return;
    }
    // The one for events first, as asked for; alone, it makes the calls too.
    const [events, conn = events] = opened as [Connection, Connection?];
    this.conn = conn;
    this.eventConn = events;
    this.connectionsMade++;
    this.backoffMs = this.options.reconnectInitialMs;
    this.ctx.publish([...this.domains.values()].map(toVmInfo), { typesPending: this.untyped.size > 0 });
    this.ctx.setHealth({ connected: true });
    this.ctx.log.info('connected', { uri: this.uri, domains: this.domains.size });
    for (const wake of [...this.connectedWaiters]) wake();
    if (this.untyped.size > 0) void this.readTypes(conn, generation);
  }

  /** Opens a connection to the URI with the backend's keepalive (where the driver has one). */
  private async open(options: OpenOptions = {}): Promise<Connection> {
    const conn = await Connection.open(this.uri, options);
    try {
      await conn.setKeepAlive(this.options.keepaliveIntervalSeconds, this.options.keepaliveCount);
    } catch (err) {
      // Drivers without a daemon (test:///) have no keepalive; nothing to watch there.
      if (!(err instanceof LibvirtError && err.code === C.VIR_ERR_NO_SUPPORT)) {
        await conn.close().catch(() => undefined);
        throw err;
      }
    }
    return conn;
  }

  /**
   * Lists every domain, without its type: one call for the names and one
   * for the states, where a type costs a call per domain. Events that
   * arrive meanwhile are replayed after (and those domains get their type).
   */
  private async reload(conn: Connection): Promise<void> {
    this.reloading = new Set();
    this.xmlCache.clear();
    this.lastXml.clear();
    try {
      const infos = await conn.listDomains();
      const domains = new Map<string, Domain>();
      for (const info of infos) domains.set(info.uuid, toDomain(info, undefined));
      this.domains = domains;
      this.untyped = new Set(domains.keys());
      const touched = [...this.reloading];
      this.reloading = undefined;
      await Promise.all(touched.map((uuid) => this.lookup(conn, uuid, false)));
    } finally {
      this.reloading = undefined;
    }
  }

  /**
   * The second half of a connect: the types of the domains the listing
   * gave without one, read from their metadata (the binding spreads the
   * calls over a few threads), then the list published again with them,
   * which ends the core's wait for types. A domain looked up meanwhile
   * already has its type and keeps it, as it keeps the state events gave
   * it. A failure that is not the connection's starts the connection over.
   */
  private async readTypes(conn: Connection, generation: number): Promise<void> {
    await this.listings.idle();
    if (generation !== this.generation || this.stopped) return;
    let infos: DomainInfo[];
    try {
      infos = await conn.listDomains({ metadataNamespace: METADATA_NAMESPACE });
    } catch (err) {
      if (generation !== this.generation || this.stopped) return;
      if (await this.isLost(err)) return; // onClose reconnects.
      this.dropConnection(generation, `cannot read the types of its domains: ${(err as Error).message}`);
      return;
    }
    if (generation !== this.generation || this.stopped) return;
    for (const info of infos) {
      const known = this.domains.get(info.uuid);
      if (known === undefined || !this.untyped.has(info.uuid)) continue;
      this.domains.set(info.uuid, { ...known, type: metadataType(info.metadata) });
    }
    this.untyped.clear();
    this.ctx.publish([...this.domains.values()].map(toVmInfo));
    this.ctx.log.debug('read the types of its domains', { uri: this.uri, domains: this.domains.size });
  }

  /** What the backend keeps of a domain: its listing plus the type from its metadata. */
  private async domainOf(conn: Connection, info: DomainInfo): Promise<Domain> {
    let type: string | undefined;
    try {
      type = metadataType(await conn.getMetadata(info.uuid, METADATA_NAMESPACE));
    } catch (err) {
      if (isConnectionError(err)) throw err;
      // The domain went away meanwhile, or has broken metadata: no type.
    }
    return toDomain(info, type);
  }

  /** Looks a domain up again and publishes what changed; removes it if it is gone. */
  private async lookup(conn: Connection, uuid: string, publish = true): Promise<void> {
    let next: Domain | undefined;
    try {
      next = await this.domainOf(conn, await conn.getDomain(uuid));
    } catch (err) {
      if (!(err instanceof LibvirtError && err.code === C.VIR_ERR_NO_DOMAIN)) {
        if (!isConnectionError(err)) this.ctx.log.warn('domain lookup failed', { uuid, error: (err as Error).message });
        return;
      }
    }
    if (conn !== this.conn && this.conn !== undefined) return;
    const old = this.domains.get(uuid);
    if (next === undefined) {
      this.lastXml.delete(uuid);
      if (old === undefined) return;
      this.domains.delete(uuid);
      if (publish) this.ctx.remove(old.name);
      return;
    }
    this.domains.set(uuid, next);
    this.untyped.delete(uuid);
    if (!publish) return;
    if (old !== undefined && old.name !== next.name) this.ctx.remove(old.name);
    this.ctx.update(toVmInfo(next));
  }

  private onEvent(generation: number, e: DomainEvent): void {
    if (generation !== this.generation || this.stopped) return;
    this.xmlChanged(e.uuid);
    if (e.kind === 'device-added') {
      const watchers = this.addedWatchers.get(e.uuid);
      if (watchers !== undefined) for (const w of [...watchers]) w(e.alias);
      else this.ctx.log.debug(e.kind, { vm: e.name, alias: e.alias });
      return;
    }
    if (e.kind === 'device-removed' || e.kind === 'device-removal-failed') {
      const key = `${e.uuid}\u0000${e.alias}`;
      const watchers = this.removalWatchers.get(key);
      const stray = this.strayEvents.delete(key);
      const result = e.kind === 'device-removed' ? 'removed' : 'failed';
      if (watchers !== undefined && watchers.size > 0) {
        for (const w of [...watchers]) w(result, stray);
      } else if (stray) {
        this.ctx.log.info(
          `device ${result === 'removed' ? 'removed' : 'removal failed'} after its detach was reported`,
          {
            vm: e.name,
            alias: e.alias,
          },
        );
      } else {
        this.ctx.log.debug(e.kind, { vm: e.name, alias: e.alias });
      }
      return;
    }
    this.reloading?.add(e.uuid);
    const known = this.domains.get(e.uuid);
    const state = stateAfterEvent(e.event);
    const membership =
      e.event === C.VIR_DOMAIN_EVENT_DEFINED ||
      e.event === C.VIR_DOMAIN_EVENT_UNDEFINED ||
      (e.event === C.VIR_DOMAIN_EVENT_STOPPED && known?.persistent === false);
    // QEMU reports a guest's or the host's shutdown on its monitor, while
    // libvirt reports the stop on another path: the SHUTDOWN event can come
    // after STOPPED. A stopped domain is not shutting down.
    const stale = state === 'shutdown' && known?.state === 'shutoff';
    if (known !== undefined && state !== undefined && !stale) {
      const active = state !== 'shutoff';
      const next = { ...known, state, active };
      this.domains.set(e.uuid, next);
      if (this.conn !== undefined && this.reloading === undefined) this.ctx.update(toVmInfo(next));
    }
    if ((known === undefined || membership) && this.conn !== undefined && this.reloading === undefined) {
      void this.lookup(this.conn, e.uuid);
    }
  }

  private onClose(generation: number, reason: number): void {
    this.dropConnection(generation, CLOSE_REASONS[reason] ?? `reason ${reason}`);
  }

  /** Lets the connection go and reconnects with backoff. */
  private dropConnection(generation: number, why: string): void {
    if (generation !== this.generation || this.stopped) return;
    const opened = this.letGo();
    this.generation++;
    this.ctx.log.warn('lost the connection to libvirt', { uri: this.uri, reason: why });
    this.ctx.setHealth({ connected: false, reason: `lost the connection to ${this.uri} (${why}); reconnecting` });
    this.xmlCache.clear();
    this.lastXml.clear();
    this.closeGuestLane();
    void closeAll(opened);
    this.scheduleReconnect();
  }

  /** Forgets the connections (to close them): the main one and the one for events, once each. */
  private letGo(): Connection[] {
    const opened = [...new Set([this.eventConn, this.conn])].filter((c) => c !== undefined);
    this.conn = undefined;
    this.eventConn = undefined;
    return opened;
  }

  private connectFailed(err: unknown): void {
    if (this.stopped) return;
    const seconds = this.backoffMs / 1000;
    const message = (err as Error)?.message ?? String(err);
    this.ctx.log.warn('cannot connect to libvirt', { uri: this.uri, error: message, retryInSeconds: seconds });
    this.ctx.setHealth({ connected: false, reason: `cannot connect to ${this.uri}: ${message}; retrying` });
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    clearTimeout(this.reconnectTimer);
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.options.reconnectMaxMs);
    this.reconnectTimer = setTimeout(() => {
      this.connect().catch((err: unknown) => this.connectFailed(err));
    }, delay);
  }
}

/** The XML kept of one domain (see domainXml): its fetches, and what they brought once they did. */
interface XmlKept {
  live?: Promise<DomainXml>;
  config?: Promise<DomainXml>;
  liveNow?: DomainXml | undefined;
  configNow?: DomainXml | undefined;
}

function ignore(): void {}

function closeAll(connections: readonly Connection[]): Promise<unknown> {
  return Promise.all(connections.map((c) => c.close().catch(() => undefined)));
}

function toDomain(info: DomainInfo, type: string | undefined): Domain {
  return {
    uuid: info.uuid,
    name: info.name,
    type,
    state: domainState(info.state),
    persistent: info.persistent,
    active: info.active,
  };
}

export function toVmInfo(d: Domain): VmInfo {
  return { name: d.name, uuid: d.uuid, type: d.type, state: d.state };
}
