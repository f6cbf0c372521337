/**
 * The daemon's life cycle: start the backends and the bus side by side,
 * take the bus name once the first complete map is known, announce it, and
 * on shutdown give every pending detach its outcome before letting go of
 * the bus and then the backends.
 */
import 'reflect-metadata';
import type { Container } from 'inversify';
import type { Logger } from '../plugin-api.js';
import { BackendRegistry } from '../core/backend-registry.js';
import type { Config } from '../core/config.js';
import { DetachService } from '../core/detach-service.js';
import { errorMessage } from '../core/errors.js';
import { type RootLogger } from '../core/logger.js';
import { StateHub } from '../core/state-hub.js';
import { VmdevService } from '../core/vmdev-service.js';
import { DbusFrontend } from '../dbus/dbus-frontend.js';
import { createContainer, type ContainerOptions } from './container.js';
import { MemoryReclaimer } from './memory-reclaimer.js';

export class Daemon {
  private readonly container: Container;
  private readonly log: Logger;
  private stopping: Promise<void> | undefined;
  private readonly lostListeners: Array<(err: Error) => void> = [];
  private readonly reclaimer: MemoryReclaimer;

  constructor(
    readonly config: Config,
    logger: RootLogger,
    options: ContainerOptions = {},
  ) {
    this.container = createContainer(config, logger, options);
    this.log = logger.child('vmdevd');
    this.reclaimer = new MemoryReclaimer(logger.child('memory'));
  }

  get registry(): BackendRegistry {
    return this.container.get(BackendRegistry);
  }

  /** Called when the bus connection breaks after start. */
  onBusLost(listener: (err: Error) => void): void {
    this.lostListeners.push(listener);
  }

  /** Throws `ConfigError` for a config that cannot work, and any error that prevents start. */
  async start(): Promise<void> {
    const started = performance.now();
    const registry = this.container.get(BackendRegistry);
    const frontend = this.container.get(DbusFrontend);
    await registry.load();
    await Promise.all([frontend.connect((err) => this.lostListeners.forEach((l) => l(err))), registry.start()]);
    await frontend.publish();
    frontend.announce();
    this.log.info('ready', {
      busName: this.config.busName,
      backends: JSON.stringify(registry.healthMap()),
      vms: this.container.get(StateHub).entries().length,
      startMs: Math.round(performance.now() - started),
    });
  }

  /** Stops everything in reverse order of start. Safe to call more than once. */
  stop(reason = 'stop requested'): Promise<void> {
    this.stopping ??= this.doStop(reason);
    return this.stopping;
  }

  private async doStop(reason: string): Promise<void> {
    this.log.info('shutting down', { reason });
    const frontend = this.container.get(DbusFrontend);
    const detaches = this.container.get(DetachService);
    frontend.stopAccepting();
    const pending = detaches.pendingCount();
    // Accepts nothing more, also for calls still waiting for their caller's
    // credentials, and gives every pending detach its outcome now, while the
    // bus still carries it.
    this.container.get(VmdevService).close();
    if (pending > 0) this.log.warn('pending detaches were ended as failed', { count: pending });
    try {
      await frontend.close();
    } catch (err) {
      this.log.warn('closing the bus failed', { error: errorMessage(err) });
    }
    await this.container.get(BackendRegistry).stop();
    this.reclaimer.dispose();
    this.container.get(StateHub).dispose();
    this.container.get(BackendRegistry).dispose();
    detaches.dispose();
    frontend.dispose();
    this.log.info('stopped');
  }
}
