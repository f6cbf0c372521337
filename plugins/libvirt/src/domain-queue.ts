/**
 * The detaches of one domain.
 *
 * libvirt runs one device operation per domain at a time and holds it about
 * 5 s for a device that waits on the guest (a PCI device: QEMU asks the
 * guest to release it through ACPI hotplug). So the detaches of a request
 * are looked up together in the domain XML and ordered: devices QEMU
 * removes on its own (USB, SCSI) go before those that need the guest, and
 * one call is in flight per domain. A device's clock is held while it waits
 * in line and starts when its own call is issued.
 *
 * A detach is confirmed by DEVICE_REMOVED for the device's alias (watched
 * before the call is issued, since libvirt can deliver it before the call
 * returns), by the device being gone from the live XML when the call
 * returns, or, for a shut-off domain, by the call itself (it edits the
 * definition). libvirt returning success with the device still attached
 * is not a confirmation: the device stays pending until the event, a
 * DEVICE_REMOVAL_FAILED (RemovalFailed), or the timeout, when the live XML
 * is checked once more so a removed device is never reported as timed out.
 */
import type { DetachOutcome, DetachRequest } from 'vmdevd/plugin-api';
import { BackendError } from 'vmdevd/plugin-api';
import { constants as C, LibvirtError } from './binding.js';
import { findDevice, type DomainXml, type FoundDevice } from './domain-devices.js';
import { toBackendError } from './libvirt-errors.js';
import type { LibvirtBackend, RemovalResult } from './libvirt-backend.js';

interface Item {
  readonly request: DetachRequest;
  readonly resolve: (outcome: DetachOutcome) => void;
  found?: FoundDevice;
  flags?: number;
  done: boolean;
}

function failure(err: unknown): DetachOutcome {
  const e = err instanceof BackendError ? err : toBackendError(err, 'detach');
  return { ok: false, error: e.kind, message: e.message };
}

export class DomainQueue {
  private intake: Item[] = [];
  private waiting: Item[] = [];
  private busy = false;
  private stopped = false;

  constructor(
    private readonly backend: LibvirtBackend,
    private readonly uuid: string,
  ) {}

  submit(request: DetachRequest): Promise<DetachOutcome> {
    return new Promise<DetachOutcome>((resolve) => {
      const item: Item = { request, done: false, resolve: () => {} };
      (item as { resolve: (o: DetachOutcome) => void }).resolve = (outcome) => {
        if (item.done) return;
        item.done = true;
        resolve(outcome);
      };
      if (this.stopped) return item.resolve({ ok: false, error: 'Failed', message: 'the libvirt backend is stopping' });
      request.signal.addEventListener('abort', () => this.aborted(item), { once: true });
      this.intake.push(item);
      // The core hands over all devices of a request in one synchronous
      // loop: a microtask classifies them together, without waiting for a
      // turn of the event loop.
      if (this.intake.length === 1) queueMicrotask(() => void this.classify());
    });
  }

  stop(): void {
    this.stopped = true;
    for (const item of [...this.intake, ...this.waiting])
      item.resolve({ ok: false, error: 'Failed', message: 'the libvirt backend is stopping' });
    this.intake = [];
    this.waiting = [];
  }

  private get name(): string {
    return this.backend.domain(this.uuid)?.name ?? this.uuid;
  }

  private aborted(item: Item): void {
    const i = this.waiting.indexOf(item);
    if (i < 0) return; // being classified (checked there) or in flight (its own wait handles it)
    this.waiting.splice(i, 1);
    item.resolve(this.notIssued(item));
  }

  /** The outcome of a detach aborted before it was issued. */
  private notIssued(item: Item): DetachOutcome {
    if (item.request.signal.reason !== 'timeout') return { ok: false, error: 'Failed', message: 'vmdevd is stopping' };
    if (!this.backend.isConnected()) {
      return {
        ok: false,
        error: 'BackendUnavailable',
        message: `the connection to ${this.backend.uri} was lost before the detach could be issued`,
      };
    }
    return { ok: false, error: 'Timeout', message: 'the detach was still waiting for another operation of the VM' };
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
    let live: DomainXml | undefined;
    let config: DomainXml | undefined;
    const wantConfig = domain.persistent && (!domain.active || batch.some((i) => i.request.device.persistent));
    const read = async (fresh: boolean) => {
      live = domain.active ? await this.backend.domainXml(this.uuid, false, fresh) : undefined;
      config = wantConfig ? await this.backend.domainXml(this.uuid, true, fresh) : undefined;
    };
    try {
      await read(false);
      // The XML kept from before lacks a device added since only if libvirt
      // sent no event for it; ask once more before calling a device missing.
      if (batch.some((i) => findDevice(live ?? config!, i.request.device) === undefined)) await read(true);
    } catch (err) {
      for (const item of batch) item.resolve(failure(toBackendError(err, `reading the XML of VM "${domain.name}"`)));
      return;
    }
    for (const item of batch) {
      if (item.done) continue;
      if (item.request.signal.aborted) {
        item.resolve(this.notIssued(item));
        continue;
      }
      const spec = item.request.device;
      const where = live ?? config!;
      const found = findDevice(where, spec);
      if (found === undefined) {
        item.resolve({
          ok: false,
          error: 'DeviceNotFound',
          message: `VM "${domain.name}" has no ${deviceText(spec)}${live === undefined ? ' in its definition' : ''}`,
        });
        continue;
      }
      let flags = live !== undefined ? C.VIR_DOMAIN_AFFECT_LIVE : C.VIR_DOMAIN_AFFECT_CONFIG;
      // persistent=yes also edits the definition, when the device is in it.
      if (live !== undefined && spec.persistent && config !== undefined && findDevice(config, spec) !== undefined)
        flags |= C.VIR_DOMAIN_AFFECT_CONFIG;
      item.found = found;
      item.flags = flags;
      item.request.hold();
      // Devices that need no guest overtake those that do, but never one already in flight.
      const at = found.needsGuest ? this.waiting.length : this.waiting.findIndex((w) => w.found!.needsGuest);
      this.waiting.splice(at < 0 ? this.waiting.length : at, 0, item);
    }
    this.pump();
  }

  private pump(): void {
    if (this.busy || this.stopped) return;
    const item = this.waiting.shift();
    if (item === undefined) return;
    if (!this.backend.isConnected()) {
      this.waiting.unshift(item);
      this.busy = true;
      void this.backend.whenConnected().then(() => {
        this.busy = false;
        this.pump();
      });
      return;
    }
    this.busy = true;
    void this.run(item).finally(() => {
      this.busy = false;
      this.pump();
    });
  }

  /** Issues one detach; resolves when libvirt's call returns (the domain is free again). */
  private async run(item: Item): Promise<void> {
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
      const conn = this.backend.connection();
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
    }
    if (!live) {
      unwatch();
      item.resolve({ ok: true });
      return;
    }
    // The domain is free for the next detach; this one waits for its confirmation.
    void this.confirm(
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

  private async confirm(
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
      if (request.signal.aborted && request.signal.reason !== 'timeout')
        return item.resolve({ ok: false, error: 'Failed', message: 'vmdevd is stopping' });
      // Synchronous removals and removals while disconnected show only in the XML.
      const gone = await this.deviceGone(request.device);
      if (gone === true) {
        // Confirmed before (or without) its event: should the event still
        // come, it must not confirm a later device that reuses the alias.
        if (alias !== undefined && result() === undefined) this.backend.expectStrayEvent(this.uuid, alias);
        return item.resolve({ ok: true });
      }
      if (request.signal.aborted) {
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
      await new Promise<void>((resolve) => {
        onWake(resolve);
        request.signal.addEventListener('abort', () => resolve(), { once: true });
        if (!this.backend.isConnected()) void this.backend.whenConnected(request.signal).then(() => resolve());
        if (result() !== undefined) resolve();
      });
    }
  }

  /** True when the device is gone from the live XML; undefined when that cannot be known now. */
  private async deviceGone(spec: DetachRequest['device']): Promise<boolean | undefined> {
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

function deviceText(spec: DetachRequest['device']): string {
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
