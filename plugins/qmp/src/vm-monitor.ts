/**
 * One VM: vmdevd's own QMP monitor of one QEMU process, its state, its
 * detaches and its state changes.
 *
 * State comes from `query-status` when the monitor connects (QEMU keeps no
 * events for a client that is not connected, so nothing from before
 * counts), then from QEMU's events, in the order they come with the
 * replies. A socket that closes, refuses connections (QEMU killed by a
 * signal leaves its socket file behind) or does not exist is `shutoff`;
 * one vmdevd cannot use (permission denied, a monitor that sends no
 * greeting) is a problem the backend shows in its health, and the VM's
 * state is then unknown (`nostate`).
 *
 * The monitor reconnects when the socket closes: at once, then with
 * backoff, and at once again whenever the backend sees the socket file
 * change (QEMU started again on it).
 */
import {
  BackendError,
  DESCRIPTIVE_PARAMS,
  type DesiredState,
  type DetachOutcome,
  type DetachRequest,
  type ListedDevice,
  type Logger,
  type VmInfo,
  type VmState,
} from 'vmdevd/plugin-api';
import { DeviceDetach, type DetachHost, type DetachWatcher } from './device-detach.js';
import { listedDevices, peripherals, resolveDevice, SUPPORTED_TYPES } from './device-resolver.js';
import {
  QmpClient,
  QmpClosedError,
  QmpCommandError,
  QmpConnectError,
  QmpProtocolError,
  type QmpEvent,
  type QmpReply,
} from './qmp-client.js';
import { eventEffect, runState } from './run-states.js';

export interface MonitorTiming {
  readonly commandTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly reconnectInitialMs: number;
  readonly reconnectMaxMs: number;
}

/** What a monitor needs from its backend. */
export interface MonitorOwner {
  readonly log: Logger;
  readonly timing: MonitorTiming;
  /** The monitor's VM (state, UUID) or its problem changed. */
  changed(monitor: VmMonitor): void;
  /** The monitor will try again later: its socket's directory is worth watching (again). */
  retrying(monitor: VmMonitor): void;
}

type Phase = 'idle' | 'connecting' | 'up' | 'down' | 'stopped';

const NO_UUID = '00000000-0000-0000-0000-000000000000';

export class VmMonitor implements DetachHost {
  private phase: Phase = 'idle';
  private client: QmpClient | undefined;
  private attemptPromise: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private backoffMs: number;
  private generation = 0;
  /** False from a connect until `query-status` answered: events before that are older than its answer. */
  private statusKnown = false;
  private state: VmState = 'shutoff';
  private uuid: string | undefined;
  private problemText: string | undefined;
  private whyDown = 'not connected yet';
  /** The socket changed while an attempt was under way: the next one is not to wait. */
  private changedMeanwhile = false;
  private readonly watchers = new Set<DetachWatcher>();
  private readonly eventListeners = new Set<(event: QmpEvent) => void>();

  constructor(
    readonly name: string,
    readonly type: string | undefined,
    readonly socket: string,
    private readonly owner: MonitorOwner,
  ) {
    this.backoffMs = owner.timing.reconnectInitialMs;
  }

  get vmName(): string {
    return this.name;
  }

  get log(): Logger {
    return this.owner.log;
  }

  get info(): VmInfo {
    return { name: this.name, type: this.type, uuid: this.uuid, state: this.state };
  }

  /** An operator error that keeps vmdevd from this VM, for the backend's health. */
  get problem(): string | undefined {
    return this.problemText;
  }

  currentClient(): QmpClient | undefined {
    return this.phase === 'up' ? this.client : undefined;
  }

  downReason(): string {
    return this.whyDown;
  }

  watch(watcher: DetachWatcher): () => void {
    this.watchers.add(watcher);
    return () => this.watchers.delete(watcher);
  }

  /** The first connect; resolves once it succeeded or failed. */
  start(): Promise<void> {
    return this.attempt();
  }

  /** The socket file changed: if not connected, try now, with the backoff from its start. */
  poke(): void {
    if (this.phase === 'connecting') this.changedMeanwhile = true;
    if (this.phase !== 'down') return;
    this.connectNow();
  }

  private connectNow(): void {
    this.owner.log.debug('the socket changed; connecting now', { vm: this.name, socket: this.socket });
    this.backoffMs = this.owner.timing.reconnectInitialMs;
    void this.attempt();
  }

  /** Closes the monitor for good; pending detaches end with `message`. */
  stop(message: string): void {
    if (this.phase === 'stopped') return;
    this.phase = 'stopped';
    this.generation++;
    clearTimeout(this.retryTimer);
    const client = this.client;
    this.client = undefined;
    client?.close();
    for (const w of [...this.watchers]) w.stopped(message);
    this.watchers.clear();
    this.eventListeners.clear();
  }

  async detach(request: DetachRequest): Promise<DetachOutcome> {
    const spec = request.device;
    if (!(SUPPORTED_TYPES as readonly string[]).includes(spec.type)) {
      return {
        ok: false,
        error: 'NotSupported',
        message: `the qmp backend does not detach ${spec.type} devices; it takes the types ${SUPPORTED_TYPES.join(', ')}`,
      };
    }
    // QEMU keeps no description vmdevd could check a disk's source or a
    // NIC's network against: refusing them beats ignoring them.
    const unchecked = DESCRIPTIVE_PARAMS[spec.type].filter((p) => spec.params[p] !== undefined);
    if (unchecked.length > 0) {
      return {
        ok: false,
        error: 'NotSupported',
        message: `the qmp backend cannot check ${unchecked.join(', ')} against QEMU; name the device by its id (type=alias or target=) alone`,
      };
    }
    if (this.attemptPromise !== undefined) await this.attemptPromise;
    const client = this.currentClient();
    if (client === undefined) return this.unreachableOutcome();
    let device;
    try {
      device = await resolveDevice(client, this.name, spec);
    } catch (err) {
      if (err instanceof BackendError) return { ok: false, error: err.kind, message: err.message };
      if (err instanceof QmpClosedError) return this.unreachableOutcome();
      return {
        ok: false,
        error: 'Failed',
        message: `looking up the device in VM "${this.name}": ${(err as Error).message}`,
      };
    }
    if (this.phase === 'stopped') return { ok: false, error: 'Failed', message: 'the qmp backend is stopping' };
    if (request.aborted) {
      return request.signal.reason === 'timeout'
        ? { ok: false, error: 'Timeout', message: `looking up the device in VM "${this.name}" took too long` }
        : { ok: false, error: 'Failed', message: 'vmdevd is stopping' };
    }
    return new DeviceDetach(this, client, request, device).run();
  }

  /** The VM's disks, interfaces and host devices, by QEMU device id (see listedDevices). */
  async listDevices(): Promise<ListedDevice[]> {
    if (this.attemptPromise !== undefined) await this.attemptPromise;
    const client = this.currentClient();
    if (client === undefined) {
      if (this.problemText !== undefined) throw new BackendError('BackendUnavailable', this.problemText);
      throw new BackendError(
        'NotSupported',
        `VM "${this.name}" is ${this.state}: ${this.whyDown}; QEMU is not there to ask`,
      );
    }
    try {
      return await listedDevices(client);
    } catch (err) {
      if (err instanceof QmpClosedError)
        throw new BackendError('BackendUnavailable', `VM "${this.name}": ${err.message}`);
      throw new BackendError('Failed', `listing the devices of VM "${this.name}": ${(err as Error).message}`);
    }
  }

  async setState(desired: DesiredState): Promise<void> {
    if (this.attemptPromise !== undefined) await this.attemptPromise;
    const client = this.currentClient();
    const state = this.state;
    const refuse = (why: string) => new BackendError('NotSupported', `VM "${this.name}" is ${state}: ${why}`);
    if (client === undefined) {
      if ((desired === 'shutoff' || desired === 'shutdown') && state === 'shutoff') return;
      if (this.problemText !== undefined) throw new BackendError('BackendUnavailable', this.problemText);
      throw refuse(`${this.whyDown}; vmdevd does not start QEMU processes`);
    }
    const run = async (command: string) => {
      try {
        await client.execute(command);
      } catch (err) {
        if (command === 'quit' && err instanceof QmpClosedError) return; // QEMU went before its reply
        if (err instanceof QmpCommandError)
          throw new BackendError('NotSupported', `QEMU refused ${command} for VM "${this.name}": ${err.desc}`);
        if (err instanceof QmpClosedError)
          throw new BackendError('BackendUnavailable', `VM "${this.name}": ${err.message}`);
        throw new BackendError('Failed', `VM "${this.name}": ${(err as Error).message}`);
      }
    };
    switch (desired) {
      case 'paused':
        if (state === 'running') return run('stop');
        if (state !== 'paused') throw refuse('only a running VM can be paused');
        return;
      case 'running':
        if (state === 'paused') return run('cont');
        if (state === 'pmsuspended') return run('system_wakeup');
        if (state === 'shutdown' || state === 'crashed') {
          // QEMU runs a shut-down or panicked guest again only after a reset
          // (from its firmware), which leaves the VM paused until `cont`.
          const reset = this.nextEvent('RESET');
          await run('system_reset');
          await reset;
          return run('cont');
        }
        if (state !== 'running') throw refuse('it cannot be started from this state');
        return;
      case 'shutdown':
        if (state === 'shutdown') return;
        return run('system_powerdown');
      case 'shutoff':
        return run('quit');
    }
  }

  // ---- connection ------------------------------------------------------------

  private attempt(): Promise<void> {
    if (this.attemptPromise !== undefined) return this.attemptPromise;
    if (this.phase === 'stopped') return Promise.resolve();
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.phase = 'connecting';
    this.changedMeanwhile = false;
    const attempt = this.connect()
      .catch((err: unknown) => {
        // Not an error QEMU can cause: a bug; the VM is retried like an unreachable one.
        this.owner.log.error('connecting failed unexpectedly', { vm: this.name, error: String(err) });
        if (this.phase !== 'stopped') this.unreachable(err);
      })
      .finally(() => {
        this.attemptPromise = undefined;
      });
    this.attemptPromise = attempt;
    return attempt;
  }

  private async connect(): Promise<void> {
    const generation = ++this.generation;
    const current = () => generation === this.generation && this.phase !== 'stopped';
    const { commandTimeoutMs, connectTimeoutMs } = this.owner.timing;
    let client: QmpClient;
    try {
      client = await QmpClient.connect(this.socket, {
        commandTimeoutMs,
        connectTimeoutMs,
        onEvent: (event) => {
          if (generation === this.generation) this.onEvent(event);
        },
        onClose: (reason) => {
          // During the first reads the failed read reports it (below).
          if (generation === this.generation && this.phase === 'up') this.lost(reason);
        },
      });
    } catch (err) {
      if (current()) this.unreachable(err);
      return;
    }
    if (!current()) {
      client.close();
      return;
    }
    this.client = client;
    this.statusKnown = false;
    let devices: Map<string, string>;
    let uuid: unknown;
    try {
      const status = client.request('query-status', undefined, { onReply: (r) => this.statusRead(r) });
      [, uuid, devices] = await Promise.all([status, client.execute('query-uuid'), peripherals(client)]);
    } catch (err) {
      if (!current()) return;
      this.generation++;
      this.client = undefined;
      client.close();
      const cause = err instanceof QmpClosedError && err.cause instanceof Error ? err.cause : err;
      if (err instanceof QmpClosedError && !(cause instanceof QmpProtocolError)) {
        // QEMU went away right after the handshake: as if it had not been there.
        this.unreachable(new QmpConnectError(err.message, this.socket, 'CLOSED'));
      } else {
        // A protocol error, or an answer QEMU does not give: without its state the VM cannot be followed.
        this.unreachable(cause);
      }
      return;
    }
    if (!current()) return;
    this.phase = 'up';
    this.uuid = typeof uuid === 'object' && uuid !== null ? uuidOf((uuid as { UUID?: unknown }).UUID) : undefined;
    this.backoffMs = this.owner.timing.reconnectInitialMs;
    this.whyDown = '';
    const hadProblem = this.problemText !== undefined;
    this.problemText = undefined;
    this.owner.log.info('connected to the QMP monitor', {
      vm: this.name,
      socket: this.socket,
      qemu: client.greeting.version,
      state: this.state,
      ...(hadProblem ? { resolved: 'the earlier problem' } : {}),
    });
    this.owner.changed(this);
    // What happened to devices while no one listened shows only in the tree.
    for (const w of [...this.watchers]) w.reconnected(devices);
  }

  private statusRead(reply: QmpReply): void {
    const status = (reply.value as { status?: unknown } | undefined)?.status;
    this.statusKnown = true;
    this.setVmState(runState(String(status)));
  }

  private onEvent(event: QmpEvent): void {
    for (const listener of [...this.eventListeners]) listener(event);
    if (event.event === 'DEVICE_DELETED' || event.event === 'DEVICE_UNPLUG_GUEST_ERROR') {
      for (const w of [...this.watchers]) w.deviceEvent(event);
      return;
    }
    if (!this.statusKnown) return;
    const effect = eventEffect(event.event, event.data, this.state);
    if (effect === undefined) return;
    if ('state' in effect) {
      this.setVmState(effect.state);
    } else {
      this.client
        ?.request('query-status', undefined, { onReply: (r) => this.statusRead(r) })
        .catch((err: unknown) =>
          this.owner.log.debug('query-status after a reset failed', { vm: this.name, error: String(err) }),
        );
    }
  }

  private setVmState(state: VmState): void {
    if (state === this.state) return;
    this.state = state;
    if (this.phase === 'up') this.owner.changed(this);
  }

  /** Resolves at the next `event` (or after the command timeout). */
  private nextEvent(event: string): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.eventListeners.delete(listener);
        resolve();
      };
      const listener = (e: QmpEvent) => {
        if (e.event === event) done();
      };
      const timer = setTimeout(done, this.owner.timing.commandTimeoutMs);
      this.eventListeners.add(listener);
    });
  }

  private lost(reason: QmpClosedError): void {
    this.client = undefined;
    this.statusKnown = false;
    this.phase = 'down';
    this.whyDown = reason.message;
    if (reason instanceof QmpProtocolError) {
      this.problemText = `VM "${this.name}": ${reason.message}`;
      this.owner.log.error('QMP protocol error', { vm: this.name, socket: this.socket, error: reason.message });
    } else {
      this.owner.log.info('the QMP socket closed', { vm: this.name, socket: this.socket, reason: reason.message });
    }
    this.state = 'shutoff';
    this.owner.changed(this);
    // QEMU may still be there (it was the connection that ended): try at once.
    this.backoffMs = this.owner.timing.reconnectInitialMs;
    void this.attempt();
  }

  private unreachable(err: unknown): void {
    const code = err instanceof QmpConnectError ? err.code : undefined;
    const message = (err as Error)?.message ?? String(err);
    this.phase = 'down';
    this.whyDown = message;
    let problem: string | undefined;
    let state: VmState = 'nostate';
    if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'CLOSED') {
      state = 'shutoff';
    } else if (code === 'EACCES' || code === 'EPERM') {
      problem =
        `permission denied on the QMP socket ${this.socket} of VM "${this.name}": vmdevd (uid ${process.getuid?.() ?? '?'}) ` +
        'needs write access to it; change its owner or mode, or run QEMU as a user whose sockets vmdevd can open';
    } else {
      problem = `VM "${this.name}": ${message}`;
    }
    const changed = problem !== this.problemText || state !== this.state;
    if (problem !== undefined && problem !== this.problemText) {
      this.owner.log.error('cannot use the QMP socket', { vm: this.name, socket: this.socket, problem });
    } else if (changed) {
      this.owner.log.info('no QEMU on the QMP socket', { vm: this.name, socket: this.socket, reason: message });
    }
    this.problemText = problem;
    this.state = state;
    if (changed) this.owner.changed(this);
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.phase === 'stopped') return;
    this.owner.retrying(this);
    clearTimeout(this.retryTimer);
    if (this.changedMeanwhile) {
      // The attempt that just failed may have come before the change (QEMU binds, then listens).
      this.changedMeanwhile = false;
      this.retryTimer = setTimeout(() => this.connectNow(), 0);
      return;
    }
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, this.owner.timing.reconnectMaxMs);
    this.retryTimer = setTimeout(() => void this.attempt(), delay);
  }

  private unreachableOutcome(): DetachOutcome {
    if (this.problemText !== undefined) return { ok: false, error: 'BackendUnavailable', message: this.problemText };
    return { ok: false, error: 'BackendUnavailable', message: `VM "${this.name}" is ${this.state}: ${this.whyDown}` };
  }
}

function uuidOf(value: unknown): string | undefined {
  if (typeof value !== 'string' || value === NO_UUID) return undefined;
  return /^[0-9a-fA-F-]{36}$/.test(value) ? value.toLowerCase() : undefined;
}
