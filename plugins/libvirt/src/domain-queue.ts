/**
 * The detaches and attaches of one domain.
 *
 * libvirt runs one device operation per domain at a time and holds it about
 * 5 s for a device that waits on the guest (a PCI device: QEMU asks the
 * guest to release it through ACPI hotplug). So the detaches of a request
 * are looked up together in the domain XML and ordered: devices QEMU
 * removes on its own (USB, SCSI), and attaches (QEMU adds a device at
 * once), go before those that need the guest, and one call is in flight
 * per domain. A device's clock is held while it waits in line and starts
 * when its own call is issued.
 *
 * Before a detach, the device the spec names is looked up, and what the
 * spec says of it (a disk's source, bus, format, read-only flag; an
 * interface's network and model) is compared with the XML: libvirt itself
 * would detach whatever disk has the target, or whatever interface has the
 * MAC, so a device that differs is DeviceNotFound.
 *
 * A detach is confirmed by DEVICE_REMOVED for the device's alias (watched
 * before the call is issued, since libvirt can deliver it before the call
 * returns), by the device being gone from the live XML when the call
 * returns, or, for a shut-off domain, by the call itself (it edits the
 * definition). libvirt returning success with the device still attached
 * is not a confirmation: the device stays pending until the event, a
 * DEVICE_REMOVAL_FAILED (RemovalFailed), or the timeout, when the live XML
 * is checked once more so a removed device is never reported as timed out.
 *
 * An attach (virDomainAttachDeviceFlags: the running domain, and with
 * persistent=yes its definition too; a shut-off domain's definition) is
 * confirmed by DEVICE_ADDED, watched before the call is issued, once the
 * live XML shows that the alias it names is the device asked for; or by
 * the device being in the live XML when the call returns; or, for a
 * shut-off domain, by the definition having it. A refusal ends with
 * libvirt's own message, which names the path or the reason.
 */
import type { DeviceOutcome, DeviceRequest } from 'vmdevd/plugin-api';
import { BackendError } from 'vmdevd/plugin-api';
import { constants as C, LibvirtError } from './binding.js';
import { aliasIs, findDevice, mismatch, type DomainXml, type FoundDevice } from './domain-devices.js';
import { toBackendError } from './libvirt-errors.js';
import type { LibvirtBackend, RemovalResult } from './libvirt-backend.js';

export type Operation = 'detach' | 'attach';

interface Item {
  readonly op: Operation;
  readonly request: DeviceRequest;
  readonly resolve: (outcome: DeviceOutcome) => void;
  /** The device found for a detach. */
  found?: FoundDevice;
  flags?: number;
  /** Whether its call waits on the guest, so that others go first. */
  needsGuest?: boolean;
  done: boolean;
  /** The connection went away while the call was in flight: libvirt may never have issued it. */
  callLost?: boolean;
  /** Issued once more after such a loss (only once). */
  reissued?: boolean;
}

function failure(err: unknown, op: Operation = 'detach'): DeviceOutcome {
  const e = err instanceof BackendError ? err : toBackendError(err, op);
  return { ok: false, error: e.kind, message: e.message };
}

/** Whether `xml` has every device the batch's detaches name, as they describe it. */
function allDescribed(batch: readonly Item[], xml: DomainXml): boolean {
  for (const item of batch) {
    if (item.op !== 'detach') continue;
    const found = findDevice(xml, item.request.device);
    if (found === undefined || mismatch(found, item.request.device) !== undefined) return false;
  }
  return true;
}

export class DomainQueue {
  private intake: Item[] = [];
  private waiting: Item[] = [];
  /** What removes the abort listener of each item that has one: those waiting in line. */
  private readonly listening = new Map<Item, () => void>();
  private busy = false;
  /** A detach or attach is in flight in libvirt (not waiting for a reconnect). */
  private inCall = false;
  private onCallEnd: (() => void) | undefined;
  private stopped = false;

  constructor(
    private readonly backend: LibvirtBackend,
    private readonly uuid: string,
  ) {}

  submit(op: Operation, request: DeviceRequest): Promise<DeviceOutcome> {
    return new Promise<DeviceOutcome>((resolve) => {
      // Built whole: overwriting a function property of a fresh object
      // literal costs V8 a new object shape per item, and what the new
      // function reaches then survives scavenges into the old generation.
      const item: Item = {
        op,
        request,
        done: false,
        resolve: (outcome) => {
          if (item.done) return;
          item.done = true;
          resolve(outcome);
        },
      };
      if (this.stopped) return item.resolve({ ok: false, error: 'Failed', message: 'the libvirt backend is stopping' });
      this.intake.push(item);
      // The core hands over all devices of a request in one synchronous
      // loop: a microtask classifies them together, without waiting for a
      // turn of the event loop.
      if (this.intake.length === 1) queueMicrotask(() => void this.classify());
    });
  }

  /** Whether a detach or attach of this domain is in flight in libvirt. */
  get calling(): boolean {
    return this.inCall;
  }

  /** Runs `fn` once the call in flight returns (one such `fn` at a time: a later one replaces it). */
  afterCall(fn: () => void): void {
    this.onCallEnd = fn;
  }

  stop(): void {
    this.stopped = true;
    this.onCallEnd = undefined;
    for (const item of [...this.intake, ...this.waiting]) {
      this.unlisten(item);
      item.resolve({ ok: false, error: 'Failed', message: 'the libvirt backend is stopping' });
    }
    this.intake = [];
    this.waiting = [];
  }

  private get name(): string {
    return this.backend.domain(this.uuid)?.name ?? this.uuid;
  }

  private aborted(item: Item): void {
    this.listening.delete(item); // a listener added with `once` is gone once it ran
    const i = this.waiting.indexOf(item);
    if (i < 0) return;
    this.waiting.splice(i, 1);
    item.resolve(this.notIssued(item));
  }

  /**
   * An item waiting in line is answered when its request is aborted (its
   * timeout, or shutdown); one being classified is checked there, one in
   * flight has a wait of its own. So only the items left in line get an
   * abort listener, and lose it when they leave it; the others never make
   * their request's signal. One per request would cost more than it looks
   * (see DeviceRequest.signal): the signal and what its listener reaches
   * outlive young collections, into the old generation.
   */
  private listenWhileWaiting(): void {
    for (const item of [...this.waiting]) {
      if (this.listening.has(item)) continue;
      if (item.request.aborted) {
        this.aborted(item);
        continue;
      }
      const signal = item.request.signal;
      const onAbort = () => this.aborted(item);
      signal.addEventListener('abort', onAbort, { once: true });
      this.listening.set(item, () => signal.removeEventListener('abort', onAbort));
    }
  }

  /**
   * Waits until `arm`'s wake is called, the request is aborted, or a
   * connection made after `connection` (the one the last check was made
   * on) is up: an event may have been lost with the one before. The abort
   * listener lasts as long as the wait (see listenWhileWaiting).
   */
  private async waitForWake(
    request: DeviceRequest,
    connection: number,
    arm: (wake: () => void) => void,
  ): Promise<void> {
    const signal = request.signal;
    let wake!: () => void;
    const woken = new Promise<void>((resolve) => (wake = resolve));
    signal.addEventListener('abort', wake, { once: true });
    const unwait = this.backend.onConnectedAfter(connection, wake);
    try {
      arm(wake);
      await woken;
    } finally {
      unwait();
      signal.removeEventListener('abort', wake);
    }
  }

  private unlisten(item: Item): void {
    this.listening.get(item)?.();
    this.listening.delete(item);
  }

  /** The outcome of a detach or attach issued, and not yet confirmed, when the backend stops. */
  private stoppedWhile(item: Item): DeviceOutcome {
    const what = `the ${deviceText(item.request.device)} of VM "${this.name}"`;
    return {
      ok: false,
      error: 'Failed',
      message: `the libvirt backend is stopping; whether ${what} was ${item.op === 'detach' ? 'removed' : 'attached'} is unknown`,
    };
  }

  /** The outcome of a detach or attach aborted before it was issued. */
  private notIssued(item: Item): DeviceOutcome {
    if (item.request.signal.reason !== 'timeout') return { ok: false, error: 'Failed', message: 'vmdevd is stopping' };
    if (!this.backend.isConnected()) {
      return {
        ok: false,
        error: 'BackendUnavailable',
        message: `the connection to ${this.backend.uri} was lost before the ${item.op} could be issued`,
      };
    }
    return { ok: false, error: 'Timeout', message: `the ${item.op} was still waiting for another operation of the VM` };
  }

  private async classify(): Promise<void> {
    const batch = this.intake;
    this.intake = [];
    const domain = this.backend.domain(this.uuid);
    if (domain === undefined) {
      for (const item of batch)
        item.resolve({ ok: false, error: 'Failed', message: `VM ${this.uuid} no longer exists` });
      return;
    }
    // Detaches are looked up in the XML first; attaches need nothing of it yet.
    let detaches = 0;
    let persistentDetach = false;
    for (const item of batch) {
      if (item.op !== 'detach') continue;
      detaches++;
      if (item.request.device.persistent) persistentDetach = true;
    }
    let live: DomainXml | undefined;
    let config: DomainXml | undefined;
    if (detaches > 0) {
      const wantConfig = domain.persistent && (!domain.active || persistentDetach);
      try {
        // The XML kept, when it is there, without a wait.
        live = domain.active ? this.backend.domainXmlNow(this.uuid) : undefined;
        config = wantConfig ? this.backend.domainXmlNow(this.uuid, true) : undefined;
        if ((domain.active && live === undefined) || (wantConfig && config === undefined)) {
          live = domain.active ? await this.backend.domainXml(this.uuid) : undefined;
          config = wantConfig ? await this.backend.domainXml(this.uuid, true) : undefined;
        }
        // The XML kept from before lacks a device added (or changed) since
        // only if libvirt sent no event for it; ask once more before calling
        // a device missing.
        if (!allDescribed(batch, live ?? config!)) {
          live = domain.active ? await this.backend.domainXml(this.uuid, false, true) : undefined;
          config = wantConfig ? await this.backend.domainXml(this.uuid, true, true) : undefined;
        }
      } catch (err) {
        for (const item of batch)
          if (item.op === 'detach')
            item.resolve(failure(toBackendError(err, `reading the XML of VM "${domain.name}"`)));
      }
    }
    for (const item of batch) {
      if (item.done) continue;
      if (item.request.aborted) {
        item.resolve(this.notIssued(item));
        continue;
      }
      const spec = item.request.device;
      if (item.op === 'attach') {
        // A running VM gets it now (and in its definition with persistent=yes); a shut-off one in its definition.
        item.flags = domain.active
          ? C.VIR_DOMAIN_AFFECT_LIVE | (spec.persistent ? C.VIR_DOMAIN_AFFECT_CONFIG : 0)
          : C.VIR_DOMAIN_AFFECT_CONFIG;
        item.needsGuest = false;
      } else {
        const where = live ?? config!;
        const found = findDevice(where, spec);
        const differs = found !== undefined ? mismatch(found, spec) : undefined;
        if (found === undefined || differs !== undefined) {
          const has = found === undefined ? 'has no' : 'has a';
          const but = differs !== undefined ? `, but ${differs}` : '';
          item.resolve({
            ok: false,
            error: 'DeviceNotFound',
            message: `VM "${domain.name}" ${has} ${deviceText(spec)}${live === undefined ? ' in its definition' : ''}${but}`,
          });
          continue;
        }
        let flags = live !== undefined ? C.VIR_DOMAIN_AFFECT_LIVE : C.VIR_DOMAIN_AFFECT_CONFIG;
        // persistent=yes also edits the definition, when the device is in it.
        if (live !== undefined && spec.persistent && config !== undefined && findDevice(config, spec) !== undefined)
          flags |= C.VIR_DOMAIN_AFFECT_CONFIG;
        item.found = found;
        item.flags = flags;
        item.needsGuest = found.needsGuest;
      }
      item.request.hold();
      this.enqueue(item);
    }
    this.pump();
  }

  /** Calls that need no guest (attaches among them) overtake those that do, but never one already in flight. */
  private enqueue(item: Item): void {
    const at = item.needsGuest === true ? this.waiting.length : this.waiting.findIndex((w) => w.needsGuest === true);
    this.waiting.splice(at < 0 ? this.waiting.length : at, 0, item);
  }

  private pump(): void {
    this.pumpOnce();
    if (!this.stopped) this.listenWhileWaiting();
  }

  private pumpOnce(): void {
    if (this.busy || this.stopped) return;
    const item = this.waiting.shift();
    if (item === undefined) return;
    this.unlisten(item);
    if (!this.backend.isConnected()) {
      this.waiting.unshift(item);
      this.busy = true;
      this.backend.onConnectedAfter(this.backend.connectionNumber, () => {
        this.busy = false;
        this.pump();
      });
      return;
    }
    this.busy = true;
    this.inCall = true;
    void (item.op === 'attach' ? this.runAttach(item) : this.runDetach(item)).finally(() => {
      this.busy = false;
      this.inCall = false;
      const then = this.onCallEnd;
      this.onCallEnd = undefined;
      then?.();
      this.pump();
    });
  }

  /** Issues one attach; resolves when libvirt's call returns (the domain is free again). */
  private async runAttach(item: Item): Promise<void> {
    const { request } = item;
    const spec = request.device;
    const live = (item.flags! & C.VIR_DOMAIN_AFFECT_LIVE) !== 0;
    // With the definition to edit as well, the call's end is awaited, as for a detach.
    const configToo = (item.flags! & C.VIR_DOMAIN_AFFECT_CONFIG) !== 0;
    let added = false;
    let returned = false;
    let wake: () => void = () => {};
    // DEVICE_ADDED names the new device's alias: it confirms this attach once
    // the XML shows that alias is the device asked for (another client may
    // add a device to the VM meanwhile).
    const onAdded = (alias: string) => {
      void this.backend
        .domainXml(this.uuid, false, true)
        .then((xml) => aliasIs(xml, alias, spec))
        .catch(() => false)
        .then((ours) => {
          if (!ours) return;
          added = true;
          if (!configToo || returned) this.confirmed(item, `DEVICE_ADDED of ${alias}`);
          wake();
        });
    };
    const unwatch = live ? this.backend.watchAdded(this.uuid, onAdded) : () => {};
    request.issued();
    let lost = false;
    try {
      await this.backend.connection().attachDevice(this.uuid, spec.xml!, item.flags!);
    } catch (err) {
      if (!(await this.backend.isLost(err))) {
        unwatch();
        item.resolve(failure(toBackendError(err, `attaching the ${deviceText(spec)} to VM "${this.name}"`), 'attach'));
        return;
      }
      // The connection went away mid-call: whether it happened is checked after the reconnect.
      lost = true;
    }
    returned = true;
    void this.confirmAttached(
      item,
      live,
      lost,
      () => added,
      (fn) => (wake = fn),
    ).finally(unwatch);
  }

  private async confirmAttached(
    item: Item,
    live: boolean,
    lost: boolean,
    added: () => boolean,
    onWake: (fn: () => void) => void,
  ): Promise<void> {
    const { request } = item;
    const what = `the ${deviceText(request.device)} of VM "${this.name}"`;
    for (;;) {
      if (item.done) return;
      if (added()) return this.confirmed(item, 'DEVICE_ADDED');
      if (request.aborted && request.signal.reason !== 'timeout')
        return item.resolve({ ok: false, error: 'Failed', message: 'vmdevd is stopping' });
      if (this.stopped) return item.resolve(this.stoppedWhile(item));
      const connection = this.backend.connectionNumber;
      const here = await this.devicePresent(request.device, live);
      if (here === true) return this.confirmed(item, live ? 'the live XML' : 'the definition');
      if (here === false && lost && item.reissued !== true && !request.aborted) {
        // The call died with the connection and the device is not there:
        // libvirtd never carried it out. Issue it once more, in line, as a
        // detach is.
        item.reissued = true;
        this.enqueue(item);
        this.pump();
        return;
      }
      if (here === false && (lost || !live)) {
        // The call returned (or the connection came back) and the device is not there: it never will be.
        return item.resolve({
          ok: false,
          error: lost ? 'BackendUnavailable' : 'Failed',
          message: lost
            ? `the connection to ${this.backend.uri} was lost during the attach, and VM "${this.name}" does not have the ${deviceText(request.device)}`
            : `libvirt accepted the attach, but the definition of VM "${this.name}" has no ${deviceText(request.device)}`,
        });
      }
      if (request.aborted) {
        return item.resolve(
          here === undefined
            ? {
                ok: false,
                error: 'BackendUnavailable',
                message: `the connection to ${this.backend.uri} was lost; whether ${what} was attached is unknown`,
              }
            : {
                ok: false,
                error: 'Timeout',
                message: `${what} is not there after ${request.timeoutMs / 1000} s`,
              },
        );
      }
      // Wait for the event, the abort, or a reconnect (after which the XML is checked again).
      await this.waitForWake(request, connection, (wake) => {
        onWake(wake);
        if (added()) wake();
      });
    }
  }

  private confirmed(item: Item, by: string): void {
    if (item.done) return;
    this.backend.ctx.log.debug('attach confirmed', { vm: this.name, device: item.request.device.label, by });
    item.resolve({ ok: true });
  }

  /** Issues one detach; resolves when libvirt's call returns (the domain is free again). */
  private async runDetach(item: Item): Promise<void> {
    const { request } = item;
    const spec = request.device;
    const found = item.found!;
    const live = (item.flags! & C.VIR_DOMAIN_AFFECT_LIVE) !== 0;
    let result: 'removed' | 'failed' | undefined;
    let wake: () => void = () => {};
    // The event settles a live-only detach at once, even before libvirt's call
    // returns; with the definition to edit as well, the call's end is awaited.
    const configToo = (item.flags! & C.VIR_DOMAIN_AFFECT_CONFIG) !== 0;
    const onRemoval = (r: RemovalResult, stray: boolean) => {
      // An event that may be an earlier device's (same alias) only makes the
      // XML be checked; the device is confirmed if it is gone from there.
      if (!stray) {
        result = r;
        if (!configToo) this.settleFromEvent(item, r);
      }
      wake();
    };
    // Without an alias (drivers that give none) only the XML can confirm the removal.
    const unwatch =
      live && found.alias !== undefined ? this.backend.watchRemoval(this.uuid, found.alias, onRemoval) : () => {};
    request.issued();
    try {
      // A detach that waits on the guest gets the second connection: nothing else waits behind it.
      const conn = found.needsGuest ? await this.backend.guestConnection() : this.backend.connection();
      if (spec.type === 'alias') await conn.detachDeviceAlias(this.uuid, spec.params['name']!, item.flags!);
      else await conn.detachDevice(this.uuid, spec.xml!, item.flags!);
    } catch (err) {
      if (!(await this.backend.isLost(err))) {
        unwatch();
        item.resolve(
          failure(toBackendError(err, `detaching the ${deviceText(spec)} from VM "${this.name}"`, 'RemovalFailed')),
        );
        return;
      }
      // The connection went away mid-call: whether it happened is checked after the reconnect.
      item.callLost = true;
    }
    if (!live) {
      unwatch();
      item.resolve({ ok: true });
      return;
    }
    // The domain is free for the next detach; this one waits for its confirmation.
    void this.confirmDetached(
      item,
      () => result,
      (fn) => (wake = fn),
    ).finally(unwatch);
  }

  private settleFromEvent(item: Item, r: 'removed' | 'failed'): void {
    if (r === 'removed') item.resolve({ ok: true });
    else
      item.resolve({
        ok: false,
        error: 'RemovalFailed',
        message: `libvirt reported that the removal of the ${deviceText(item.request.device)} of VM "${this.name}" failed`,
      });
  }

  private async confirmDetached(
    item: Item,
    result: () => 'removed' | 'failed' | undefined,
    onWake: (fn: () => void) => void,
  ): Promise<void> {
    const { request } = item;
    const alias = item.found!.alias;
    const what = `the ${deviceText(request.device)} of VM "${this.name}"`;
    for (;;) {
      if (item.done) return;
      const r = result();
      if (r !== undefined) return this.settleFromEvent(item, r);
      if (request.aborted && request.signal.reason !== 'timeout')
        return item.resolve({ ok: false, error: 'Failed', message: 'vmdevd is stopping' });
      if (this.stopped) return item.resolve(this.stoppedWhile(item));
      // Synchronous removals and removals while disconnected show only in the XML.
      const connection = this.backend.connectionNumber;
      const gone = await this.deviceGone(request.device);
      if (gone === true) {
        // Confirmed before (or without) its event: should the event still
        // come, it must not confirm a later device that reuses the alias.
        if (alias !== undefined && result() === undefined) this.backend.expectStrayEvent(this.uuid, alias);
        return item.resolve({ ok: true });
      }
      if (gone === false && item.callLost === true && item.reissued !== true && !request.aborted) {
        // The call died with the connection and the device is still there:
        // libvirtd (killed, restarted) never carried it out, and no event
        // will come. Issue it once more, in line.
        item.reissued = true;
        item.callLost = false;
        this.enqueue(item);
        this.pump();
        return;
      }
      if (request.aborted) {
        if (alias !== undefined) this.backend.expectStrayEvent(this.uuid, alias);
        return item.resolve(
          gone === undefined
            ? {
                ok: false,
                error: 'BackendUnavailable',
                message: `the connection to ${this.backend.uri} was lost; whether ${what} was removed is unknown`,
              }
            : {
                ok: false,
                error: 'Timeout',
                message: `${what} is still attached after ${request.timeoutMs / 1000} s (no guest released it)`,
              },
        );
      }
      // Wait for the event, the abort, or a reconnect (after which the XML is checked again).
      await this.waitForWake(request, connection, (wake) => {
        onWake(wake);
        if (result() !== undefined) wake();
      });
    }
  }

  /**
   * True when the device, as the spec describes it, is in the live XML (or
   * with `live` false, the definition); undefined when that cannot be known now.
   */
  private async devicePresent(spec: DeviceRequest['device'], live: boolean): Promise<boolean | undefined> {
    if (!this.backend.isConnected()) return undefined;
    try {
      const found = findDevice(await this.backend.domainXml(this.uuid, !live, true), spec);
      return found !== undefined && mismatch(found, spec) === undefined;
    } catch (err) {
      if (await this.backend.isLost(err)) return undefined;
      // The domain is gone, or no longer running, or its XML cannot be read: not there.
      return false;
    }
  }

  /** True when the device is gone from the live XML; undefined when that cannot be known now. */
  private async deviceGone(spec: DeviceRequest['device']): Promise<boolean | undefined> {
    if (!this.backend.isConnected()) return undefined;
    try {
      return findDevice(await this.backend.domainXml(this.uuid, false, true), spec) === undefined;
    } catch (err) {
      if (await this.backend.isLost(err)) return undefined;
      // The domain is gone (or no longer running): so is the device.
      if (err instanceof LibvirtError && (err.code === C.VIR_ERR_NO_DOMAIN || err.code === C.VIR_ERR_OPERATION_INVALID))
        return true;
      // Anything else proves nothing: the device counts as still attached.
      return false;
    }
  }
}

function deviceText(spec: DeviceRequest['device']): string {
  const p = spec.params;
  switch (spec.type) {
    case 'pci':
      return `PCI device ${p['address']}`;
    case 'usb':
      return p['vendor'] !== undefined
        ? `USB device ${p['vendor']}:${p['product']}`
        : `USB device ${p['bus']}.${p['device']}`;
    case 'scsi':
      return `SCSI device ${p['adapter']}:${p['bus']}:${p['target']}:${p['unit']}`;
    case 'mdev':
      return `mediated device ${p['uuid']}`;
    case 'disk':
      return `disk ${p['target']}`;
    case 'interface':
      return `interface ${p['mac']}`;
    case 'alias':
      return `device with alias ${p['name']}`;
  }
}
