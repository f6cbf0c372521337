/**
 * Detach jobs. Every device of an accepted request ends with exactly one
 * outcome: the backend's confirmed result, `Timeout`, or `Failed` at shutdown.
 *
 * A device already pending on the same VM (same backend, VM and device
 * identity) joins the pending job instead of issuing a second detach; each
 * request still gets its own outcome under its own label.
 *
 * The clock: a device has `detachTimeoutSeconds`, counted from acceptance,
 * or from when the backend says it issued the detach (`issued()`); a backend
 * that makes a device wait behind another operation pauses it (`hold()`).
 * When it runs out, the request's signal is aborted and the backend has a
 * short grace period to answer with what it verified (a removal, a lost
 * connection, its own Timeout); a generic failure or no answer is `Timeout`.
 */
import { inject, injectable } from 'inversify';
import type { DetachOutcome, DetachRequest, DeviceSpec, Logger } from '../plugin-api.js';
import { BackendRegistry, type BackendHost } from './backend-registry.js';
import { Config } from './config.js';
import type { Disposable } from './disposable.js';
import { Emitter, type Event } from './event.js';
import { RootLogger } from './logger.js';
import { StateHub, type VmEntry } from './state-hub.js';

export const DetachGraceMs = Symbol('DetachGraceMs');

export interface DetachFinished {
  /** The VM's key in the state map when the outcome was reached. */
  readonly vm: string;
  /** The client's label for the device. */
  readonly device: string;
  readonly outcome: DetachOutcome;
}

interface Subscriber {
  readonly label: string;
  readonly vmKey: string;
}

class DetachJob {
  readonly subscribers: Subscriber[] = [];
  /** Made when the backend first looks at the request's signal: most never do. */
  controller: AbortController | undefined;
  abortReason: 'timeout' | 'shutdown' | undefined;

  /** Aborts the request's signal, now or when the backend first reads it. */
  abort(reason: 'timeout' | 'shutdown'): void {
    this.abortReason ??= reason;
    this.controller?.abort(reason);
  }

  signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.abortReason !== undefined) this.controller.abort(this.abortReason);
    }
    return this.controller.signal;
  }
  settled = false;
  timedOut = false;
  /** When the clock runs out (performance.now() ms); Infinity while held. */
  deadline = Infinity;
  grace: NodeJS.Timeout | undefined;

  constructor(
    readonly key: string,
    readonly host: BackendHost,
    readonly vm: VmEntry,
    readonly device: DeviceSpec,
  ) {}
}

@injectable()
export class DetachService implements Disposable {
  private readonly jobs = new Map<string, DetachJob>();
  private readonly onDidFinishEmitter = new Emitter<DetachFinished>();
  private readonly log: Logger;
  private readonly timeoutMs: number;
  private sweeper: NodeJS.Timeout | undefined;

  /** Fires once per device of every accepted request. */
  readonly onDidFinish: Event<DetachFinished> = this.onDidFinishEmitter.event;

  constructor(
    @inject(Config) config: Config,
    @inject(BackendRegistry) private readonly registry: BackendRegistry,
    @inject(StateHub) private readonly hub: StateHub,
    @inject(RootLogger) logger: RootLogger,
    @inject(DetachGraceMs) private readonly graceMs: number,
  ) {
    this.log = logger.child('detach');
    this.timeoutMs = Math.round(config.detachTimeoutSeconds * 1000);
  }

  /** Number of detaches in progress (joined requests count once). */
  pendingCount(): number {
    return this.jobs.size;
  }

  /** Starts one detach per device, or joins a pending one. Returns at once. */
  start(host: BackendHost, vm: VmEntry, devices: readonly DeviceSpec[]): void {
    for (const device of devices) {
      const key = `${host.id}\u0000${vm.vm.name}\u0000${device.identity}`;
      const subscriber = { label: device.label, vmKey: vm.key };
      const pending = this.jobs.get(key);
      if (pending !== undefined) {
        pending.subscribers.push(subscriber);
        this.log.info('joined a pending detach', {
          vm: vm.key,
          device: device.label,
          with: pending.subscribers[0]!.label,
        });
        continue;
      }
      const job = new DetachJob(key, host, vm, device);
      job.subscribers.push(subscriber);
      this.jobs.set(key, job);
      this.run(job);
    }
  }

  /** Ends every pending detach with `Failed`: the daemon is going away. */
  shutdown(): void {
    for (const job of [...this.jobs.values()]) {
      this.settle(job, { ok: false, error: 'Failed', message: 'vmdevd shut down before the detach was confirmed' });
      job.abort('shutdown');
    }
  }

  dispose(): void {
    this.shutdown();
    clearInterval(this.sweeper);
    this.sweeper = undefined;
    this.onDidFinishEmitter.dispose();
  }

  private run(job: DetachJob): void {
    const startClock = () => {
      job.deadline = performance.now() + this.timeoutMs;
      this.watchClocks();
    };
    const request: DetachRequest = {
      vm: job.vm.vm,
      device: job.device,
      timeoutMs: this.timeoutMs,
      get signal() {
        return job.signal();
      },
      hold: () => {
        if (!job.settled && !job.timedOut) {
          job.deadline = Infinity;
        }
      },
      issued: () => {
        if (!job.settled && !job.timedOut) startClock();
      },
    };
    startClock();
    void this.registry.detach(job.host, request).then((outcome) => {
      if (job.settled) {
        this.log.info('outcome arrived after the device was already reported', {
          vm: job.vm.key,
          device: job.subscribers[0]!.label,
          outcome: outcome.ok ? 'detached' : outcome.error,
        });
        return;
      }
      // After the timeout, a specific verdict the backend verified stands (the
      // device is gone, or the connection was lost); a generic failure is
      // just the abort, and the outcome is Timeout.
      if (job.timedOut && !outcome.ok && outcome.error === 'Failed') {
        this.settle(job, { ok: false, error: 'Timeout', message: this.timeoutMessage() });
      } else {
        this.settle(job, outcome);
      }
    });
  }

  /**
   * One timer for every job's clock: it looks for expired deadlines a few
   * times per timeout, instead of each device arming, restarting and
   * clearing a timer of its own. A timeout is late by at most a quarter of
   * itself (and 50 ms).
   */
  private watchClocks(): void {
    if (this.sweeper !== undefined) return;
    const every = Math.max(1, Math.min(50, this.timeoutMs / 4));
    this.sweeper = setInterval(() => {
      const now = performance.now();
      for (const job of this.jobs.values()) if (!job.timedOut && job.deadline <= now) this.expire(job);
      if (this.jobs.size === 0) {
        clearInterval(this.sweeper);
        this.sweeper = undefined;
      }
    }, every);
  }

  private timeoutMessage(): string {
    return `the device was not confirmed removed within ${this.timeoutMs / 1000} s`;
  }

  private expire(job: DetachJob): void {
    if (job.settled) return;
    job.timedOut = true;
    job.abort('timeout');
    job.grace = setTimeout(
      () => this.settle(job, { ok: false, error: 'Timeout', message: this.timeoutMessage() }),
      this.graceMs,
    );
  }

  private settle(job: DetachJob, outcome: DetachOutcome): void {
    if (job.settled) return;
    job.settled = true;
    clearTimeout(job.grace);
    this.jobs.delete(job.key);
    const current = this.hub.find(job.host.id, job.vm.vm.name)?.key;
    for (const sub of job.subscribers) {
      const vm = current ?? sub.vmKey;
      // A failure is news at info; a confirmed detach is logged at debug, as
      // the request itself already was.
      if (outcome.ok) this.log.debug('detach finished', { vm, device: sub.label, result: 'detached' });
      else this.log.info('detach finished', { vm, device: sub.label, result: outcome.error, message: outcome.message });
      this.onDidFinishEmitter.fire({ vm, device: sub.label, outcome });
    }
  }
}
