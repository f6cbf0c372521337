/**
 * The qmp backend: QEMU processes reached directly through their QMP
 * sockets, one monitor of vmdevd's own per VM.
 *
 * Its VMs are those of `vms` (always shown; `shutoff` while nothing answers
 * on their socket) and, with `socketDir`, one VM `NAME` per socket
 * `NAME.qmp` in that directory, shown while the socket exists. The
 * directories are watched, so a socket that appears (QEMU started, or
 * started again) is connected at once; between changes, a VM that cannot be
 * reached is retried with backoff.
 *
 * Health: `connected` unless vmdevd cannot use something the operator
 * configured (a socket it may not open, a monitor that another client
 * holds, a socket directory that is missing); then `disconnected`, naming
 * it, and the log says it once.
 */
import { readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type {
  BackendContext,
  BackendHealth,
  DesiredState,
  DetachOutcome,
  DetachRequest,
  ListedDevice,
  VmBackend,
  VmInfo,
} from 'vmdevd/plugin-api';
import { BackendError } from 'vmdevd/plugin-api';
import { DirectoryWatcher, type DirectoryChange } from './directory-watcher.js';
import { MAX_SOCKET_PATH, readOptions, VM_NAME_PATTERN, type QmpOptions } from './qmp-options.js';
import { VmMonitor, type MonitorOwner, type MonitorTiming } from './vm-monitor.js';

const NAME = new RegExp(VM_NAME_PATTERN);
const SUFFIX = '.qmp';

interface Entry {
  readonly monitor: VmMonitor;
  /** Listed in `vms` (stays when its socket goes) rather than found in `socketDir`. */
  readonly configured: boolean;
  /** Shown in TestProperty: from the end of its first connect attempt on. */
  shown: boolean;
  /** What was last shown, to report only changes. */
  last: string | undefined;
}

export class QmpBackend implements VmBackend, MonitorOwner {
  private readonly options: QmpOptions;
  private readonly entries = new Map<string, Entry>();
  private readonly watcher: DirectoryWatcher;
  private published = false;
  private stopped = false;
  private dirProblem: string | undefined;
  private scanning: Promise<void> | undefined;
  private rescan = false;
  private dirRetryTimer: NodeJS.Timeout | undefined;
  private dirBackoffMs: number;
  /** Names in socketDir already reported as unusable, so each is logged once. */
  private readonly skipped = new Set<string>();
  private health: string | undefined;

  constructor(private readonly ctx: BackendContext) {
    this.options = readOptions(ctx.options);
    this.dirBackoffMs = this.options.reconnectInitialMs;
    this.watcher = new DirectoryWatcher(
      (change) => this.onDirectoryChange(change),
      (dir, err) => {
        this.ctx.log.warn('stopped watching a directory', { dir, error: err.message });
        if (dir === this.options.socketDir) this.requestScan();
      },
    );
  }

  get log(): BackendContext['log'] {
    return this.ctx.log;
  }

  get timing(): MonitorTiming {
    return this.options;
  }

  async start(): Promise<void> {
    for (const vm of this.options.vms) this.add(vm.name, vm.type, vm.socket, true);
    for (const dir of new Set(this.options.vms.map((vm) => dirname(vm.socket)))) this.watchSocketDirectory(dir, true);
    if (this.options.socketDir !== undefined) await this.scan();
    await Promise.all([...this.entries.values()].map((e) => e.monitor.start()));
    if (this.stopped) return;
    for (const entry of this.entries.values()) {
      entry.shown = true;
      entry.last = JSON.stringify(entry.monitor.info);
    }
    this.published = true;
    this.ctx.publish([...this.entries.values()].map((e) => e.monitor.info));
    this.ctx.log.info('started', {
      vms: this.entries.size,
      ...(this.options.socketDir !== undefined ? { socketDir: this.options.socketDir } : {}),
    });
    this.updateHealth();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.dirRetryTimer);
    this.watcher.close();
    for (const entry of this.entries.values()) entry.monitor.stop('the qmp backend is stopping');
    await this.scanning;
  }

  detach(request: DetachRequest): Promise<DetachOutcome> {
    const entry = this.entries.get(request.vm.name);
    if (entry === undefined) {
      return Promise.resolve({ ok: false, error: 'Failed', message: `VM "${request.vm.name}" no longer exists` });
    }
    return entry.monitor.detach(request);
  }

  async listDevices(vm: VmInfo): Promise<readonly ListedDevice[]> {
    const entry = this.entries.get(vm.name);
    if (entry === undefined) throw new BackendError('Failed', `VM "${vm.name}" no longer exists`);
    return entry.monitor.listDevices();
  }

  async setState(vm: VmInfo, state: DesiredState): Promise<void> {
    const entry = this.entries.get(vm.name);
    if (entry === undefined) throw new BackendError('Failed', `VM "${vm.name}" no longer exists`);
    await entry.monitor.setState(state);
  }

  retrying(monitor: VmMonitor): void {
    const dir = dirname(monitor.socket);
    if (!this.stopped && dir !== this.options.socketDir) this.watchSocketDirectory(dir, false);
  }

  /** Watches the directory of a socket of `vms`; one that does not exist yet is tried again at the next retry. */
  private watchSocketDirectory(dir: string, report: boolean): void {
    if (this.watcher.has(dir)) return;
    try {
      this.watcher.add(dir);
    } catch (err) {
      // Retries with backoff still find QEMU there, only later than a watch would.
      if (report)
        this.ctx.log.warn('cannot watch the directory of a QMP socket', { dir, error: (err as Error).message });
    }
  }

  changed(monitor: VmMonitor): void {
    const entry = this.entries.get(monitor.name);
    if (this.stopped || entry?.monitor !== monitor) return;
    if (this.published && entry.shown) {
      const info = monitor.info;
      const text = JSON.stringify(info);
      if (text !== entry.last) {
        entry.last = text;
        this.ctx.update(info);
      }
    }
    this.updateHealth();
  }

  // ---- VMs -------------------------------------------------------------------

  private add(name: string, type: string | undefined, socket: string, configured: boolean): Entry {
    const entry: Entry = {
      monitor: new VmMonitor(name, type, socket, this),
      configured,
      shown: false,
      last: undefined,
    };
    this.entries.set(name, entry);
    return entry;
  }

  /** A VM found in socketDir: shown once its first connect attempt is over. */
  private discover(name: string, socket: string): void {
    const entry = this.add(name, undefined, socket, false);
    this.ctx.log.info('found a QMP socket', { vm: name, socket });
    void entry.monitor.start().then(() => {
      if (this.stopped || this.entries.get(name) !== entry || !this.published) return;
      entry.shown = true;
      entry.last = JSON.stringify(entry.monitor.info);
      this.ctx.update(entry.monitor.info);
      this.updateHealth();
    });
  }

  private drop(name: string): void {
    const entry = this.entries.get(name);
    if (entry === undefined) return;
    this.entries.delete(name);
    entry.monitor.stop(`VM "${name}" went away: its QMP socket ${entry.monitor.socket} was removed`);
    this.ctx.log.info('QMP socket removed', { vm: name, socket: entry.monitor.socket });
    if (this.published && entry.shown) this.ctx.remove(name);
    this.updateHealth();
  }

  // ---- socket directory ------------------------------------------------------

  private onDirectoryChange(change: DirectoryChange): void {
    if (this.stopped) return;
    for (const entry of this.entries.values()) {
      const socket = entry.monitor.socket;
      if (change.path === socket || (change.path === undefined && dirname(socket) === change.dir)) entry.monitor.poke();
    }
    if (change.dir === this.options.socketDir) this.requestScan();
  }

  /** Scans socketDir soon; changes that come meanwhile are folded into one more scan. */
  private requestScan(): void {
    if (this.stopped) return;
    if (this.scanning !== undefined) {
      this.rescan = true;
      return;
    }
    void this.scan();
  }

  private scan(): Promise<void> {
    if (this.scanning !== undefined) {
      this.rescan = true;
      return this.scanning;
    }
    const run = async () => {
      do {
        this.rescan = false;
        await this.scanOnce().catch((err: unknown) =>
          this.ctx.log.error('scanning socketDir failed unexpectedly', { error: String(err) }),
        );
      } while (this.rescan && !this.stopped);
    };
    this.scanning = run().finally(() => {
      this.scanning = undefined;
    });
    return this.scanning;
  }

  private async scanOnce(): Promise<void> {
    const dir = this.options.socketDir!;
    let found: Map<string, string>;
    let present: Set<string>;
    try {
      // Watch first, then list: a socket made in between shows in the list or as a change.
      if (!this.watcher.has(dir)) this.watcher.add(dir);
      const list = await readdir(dir, { withFileTypes: true });
      found = new Map();
      present = new Set();
      for (const item of list) {
        if (!item.name.endsWith(SUFFIX) || !item.isSocket()) continue;
        const name = item.name.slice(0, -SUFFIX.length);
        const socket = join(dir, item.name);
        present.add(socket);
        if (this.options.vms.some((vm) => vm.socket === socket)) continue;
        const unusable = !NAME.test(name)
          ? `"${name}" is not a VM name (letters, digits, _ . : + -, at most 64)`
          : this.options.vms.some((vm) => vm.name === name)
            ? `vms already has a VM "${name}" with another socket`
            : Buffer.byteLength(socket) > MAX_SOCKET_PATH
              ? `its path is longer than ${MAX_SOCKET_PATH} bytes`
              : undefined;
        if (unusable !== undefined) {
          if (!this.skipped.has(socket)) this.ctx.log.warn('ignoring a socket in socketDir', { socket, why: unusable });
          this.skipped.add(socket);
          continue;
        }
        found.set(name, socket);
      }
    } catch (err) {
      if (this.stopped) return;
      const code = (err as NodeJS.ErrnoException).code;
      this.watcher.drop(dir);
      const why =
        code === 'ENOENT'
          ? 'does not exist'
          : code === 'EACCES'
            ? 'cannot be read by vmdevd (permission denied)'
            : `cannot be read: ${(err as Error).message}`;
      const problem = `socketDir ${dir} ${why}; retrying`;
      if (problem !== this.dirProblem) this.ctx.log.error('cannot read socketDir', { dir, problem });
      this.dirProblem = problem;
      // Its VMs are gone with it.
      for (const [name, entry] of [...this.entries]) if (!entry.configured) this.drop(name);
      this.updateHealth();
      clearTimeout(this.dirRetryTimer);
      this.dirRetryTimer = setTimeout(() => this.requestScan(), this.dirBackoffMs);
      this.dirBackoffMs = Math.min(this.dirBackoffMs * 2, this.options.reconnectMaxMs);
      return;
    }
    if (this.stopped) return;
    if (this.dirProblem !== undefined) {
      this.ctx.log.info('socketDir is readable again', { dir });
      this.dirProblem = undefined;
      this.dirBackoffMs = this.options.reconnectInitialMs;
      this.updateHealth();
    }
    for (const socket of [...this.skipped]) if (!present.has(socket)) this.skipped.delete(socket);
    for (const [name, entry] of [...this.entries]) {
      if (!entry.configured && found.get(name) !== entry.monitor.socket) this.drop(name);
    }
    for (const [name, socket] of found) if (!this.entries.has(name)) this.discover(name, socket);
  }

  // ---- health ----------------------------------------------------------------

  private updateHealth(): void {
    if (!this.published || this.stopped) return;
    const problems = [this.dirProblem, ...[...this.entries.values()].map((e) => e.monitor.problem)].filter(
      (p): p is string => p !== undefined,
    );
    const health: BackendHealth =
      problems.length === 0
        ? { connected: true }
        : {
            connected: false,
            reason:
              problems.length === 1 ? problems[0]! : `${problems[0]} (and ${problems.length - 1} more: see the log)`,
          };
    const text = health.connected ? 'connected' : health.reason;
    if (text === this.health) return;
    this.health = text;
    this.ctx.setHealth(health);
  }
}
