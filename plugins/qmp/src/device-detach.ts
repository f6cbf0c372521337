/**
 * One `device_del`, from the moment it is sent to its confirmed outcome.
 *
 * It watches the VM's events before it sends the command: `DEVICE_DELETED`
 * can come before `device_del`'s reply. The device is gone when an event
 * names its id (`device`) or its path `/machine/peripheral/ID`; events of
 * its children carry only their own path and never count.
 *
 * - `DEVICE_DELETED`: detached. `DEVICE_UNPLUG_GUEST_ERROR`: RemovalFailed.
 * - `device_del` errors: DeviceNotFound (the device went meanwhile);
 *   "is already in the process of unplug" (QEMU's native PCIe hotplug
 *   refuses a repeat within 5 s) is the same unplug, still awaited; "does
 *   not support hotplugging" is NotSupported; any other refusal is
 *   RemovalFailed.
 * - At the timeout the device tree is read once more: a device that is gone
 *   is detached, never Timeout.
 * - When the connection is lost, the detach waits: QEMU keeps no events for
 *   a client that is not there, so after a reconnect the device tree says
 *   whether the device went; if the VM is still unreachable at the timeout,
 *   the outcome is BackendUnavailable.
 */
import type { DetachOutcome, DetachRequest, Logger } from 'vmdevd/plugin-api';
import { PERIPHERAL, peripherals, type ResolvedDevice } from './device-resolver.js';
import { QmpClosedError, QmpCommandError, QmpTimeoutError, type QmpClient, type QmpEvent } from './qmp-client.js';

/** How long the last look at the device tree may take after the timeout (the core waits 2 s). */
export const FINAL_CHECK_MS = 1500;

/** What a detach learns from its VM's monitor. */
export interface DetachWatcher {
  /** A `DEVICE_DELETED` or `DEVICE_UNPLUG_GUEST_ERROR` of the VM. */
  deviceEvent(event: QmpEvent): void;
  /** The monitor is connected again; `devices` is its device tree, read after the connect. */
  reconnected(devices: ReadonlyMap<string, string>): void;
  /** The monitor stops for good (the backend stops, or the VM went away). */
  stopped(message: string): void;
}

/** The VM's monitor, as a detach sees it. */
export interface DetachHost {
  readonly vmName: string;
  readonly log: Logger;
  /** The connection, when connected. */
  currentClient(): QmpClient | undefined;
  /** Why the VM cannot be reached, when it cannot. */
  downReason(): string;
  /** Registers a watcher until the returned function is called. */
  watch(watcher: DetachWatcher): () => void;
}

export class DeviceDetach implements DetachWatcher {
  private done = false;
  private resolve: (outcome: DetachOutcome) => void = () => {};
  private unwatch: () => void = () => {};

  constructor(
    private readonly host: DetachHost,
    private readonly client: QmpClient,
    private readonly request: DetachRequest,
    private readonly device: ResolvedDevice,
  ) {}

  private get what(): string {
    return `the ${this.device.description} of VM "${this.host.vmName}"`;
  }

  run(): Promise<DetachOutcome> {
    return new Promise<DetachOutcome>((resolve) => {
      this.resolve = resolve;
      const unwatch = this.host.watch(this);
      // The abort listener goes with the wait (see DeviceRequest.signal).
      const signal = this.request.signal;
      const onAbort = () => void this.aborted();
      signal.addEventListener('abort', onAbort, { once: true });
      this.unwatch = () => {
        unwatch();
        signal.removeEventListener('abort', onAbort);
      };
      this.request.issued();
      this.client.execute('device_del', { id: this.device.id }).then(
        () => this.host.log.debug('device_del accepted', { vm: this.host.vmName, device: this.device.id }),
        (err: unknown) => this.refused(err),
      );
    });
  }

  deviceEvent(event: QmpEvent): void {
    const { device, path } = event.data;
    if (device !== this.device.id && path !== `${PERIPHERAL}/${this.device.id}`) return;
    if (event.event === 'DEVICE_DELETED') this.finish({ ok: true });
    else if (event.event === 'DEVICE_UNPLUG_GUEST_ERROR')
      this.finish({ ok: false, error: 'RemovalFailed', message: `the guest refused to release ${this.what}` });
  }

  reconnected(devices: ReadonlyMap<string, string>): void {
    if (!devices.has(this.device.id)) this.finish({ ok: true });
    else
      this.host.log.debug('device still attached after the reconnect', {
        vm: this.host.vmName,
        device: this.device.id,
      });
  }

  stopped(message: string): void {
    this.finish({ ok: false, error: 'Failed', message });
  }

  private refused(err: unknown): void {
    if (this.done) return;
    const fields = { vm: this.host.vmName, device: this.device.id, error: (err as Error).message };
    if (err instanceof QmpCommandError) {
      if (err.errorClass === 'DeviceNotFound') {
        return this.finish({ ok: false, error: 'DeviceNotFound', message: `${this.what} is no longer there` });
      }
      if (/already in the process of unplug/.test(err.desc)) {
        // The same unplug as before, still pending: its DEVICE_DELETED ends this one too.
        this.host.log.debug('device_del: the device is already being unplugged; waiting for it', fields);
        return;
      }
      if (/does not support hotplugging/.test(err.desc)) {
        return this.finish({
          ok: false,
          error: 'NotSupported',
          message: `${this.what} cannot be unplugged: ${err.desc}`,
        });
      }
      return this.finish({
        ok: false,
        error: 'RemovalFailed',
        message: `QEMU refused to remove ${this.what}: ${err.desc}`,
      });
    }
    // No reply in time, or the connection went: whether QEMU acts on it shows
    // in its events or, after a reconnect, in the device tree.
    if (err instanceof QmpTimeoutError || err instanceof QmpClosedError) {
      this.host.log.warn('device_del got no reply; waiting for the device to go', fields);
      return;
    }
    this.finish({ ok: false, error: 'Failed', message: `detaching ${this.what}: ${(err as Error).message}` });
  }

  private async aborted(): Promise<void> {
    if (this.done) return;
    if (this.request.signal.reason !== 'timeout') {
      return this.finish({ ok: false, error: 'Failed', message: 'vmdevd is stopping' });
    }
    const client = this.host.currentClient();
    if (client === undefined) {
      return this.finish({
        ok: false,
        error: 'BackendUnavailable',
        message: `VM "${this.host.vmName}" cannot be reached (${this.host.downReason()}); whether ${this.what} was removed is unknown`,
      });
    }
    let present: boolean;
    try {
      present = (await peripherals(client, FINAL_CHECK_MS)).has(this.device.id);
    } catch {
      present = true;
    }
    this.finish(
      present
        ? {
            ok: false,
            error: 'Timeout',
            message: `${this.what} is still attached after ${this.request.timeoutMs / 1000} s (no guest released it)`,
          }
        : { ok: true },
    );
  }

  private finish(outcome: DetachOutcome): void {
    if (this.done) return;
    this.done = true;
    this.unwatch();
    this.resolve(outcome);
  }
}
