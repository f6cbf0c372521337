/**
 * The daemon: the container, its declared stages (container.ts) run by one
 * lifecycle, and a config reload. What starts in which order, and stops in
 * reverse, is declared once in the composition root; this file only runs it.
 */
import 'reflect-metadata';
import type { Container } from 'inversify';
import type { Logger } from '../plugin-api.js';
import { AccessPolicy } from '../core/access-policy.js';
import { BackendRegistry } from '../core/backend-registry.js';
import { loadConfig, type Config, type ConfigOverrides } from '../core/config.js';
import { DeviceJobService } from '../core/device-job-service.js';
import type { Disposable } from '../core/disposable.js';
import { ConfigError, errorMessage } from '../core/errors.js';
import { Lifecycle } from '../core/lifecycle.js';
import type { RootLogger } from '../core/logger.js';
import { StateHub } from '../core/state-hub.js';
import { DbusFrontend } from '../dbus/dbus-frontend.js';
import { createContainer, type ContainerOptions } from './container.js';

/** Where a reload reads the config from: the file the daemon started with. */
export interface ConfigSource {
  /** The file, or undefined for the built-in default (nothing to reload). */
  readonly file: string | undefined;
  readonly overrides: ConfigOverrides;
}

/** What a reload did. */
export type ReloadResult =
  | { readonly applied: true; readonly changes: readonly string[] }
  | { readonly applied: false; readonly reason: string };

export class Daemon {
  private readonly container: Container;
  private readonly log: Logger;
  private readonly lifecycle: Lifecycle;
  private stopping: Promise<void> | undefined;
  private reloading: Promise<ReloadResult> | undefined;

  constructor(
    private config: Config,
    private readonly logger: RootLogger,
    options: ContainerOptions = {},
    private readonly source: ConfigSource = { file: undefined, overrides: {} },
  ) {
    this.container = createContainer(config, logger, options);
    this.log = logger.child('vmdevd');
    this.lifecycle = this.container.get(Lifecycle);
  }

  get registry(): BackendRegistry {
    return this.container.get(BackendRegistry);
  }

  /** Called when the bus connection breaks after start. */
  onBusLost(listener: (err: Error) => void): Disposable {
    return this.container.get(DbusFrontend).onDidLoseConnection(listener);
  }

  /**
   * For `--check-config`: loads every backend's plugin and checks its
   * options, creating and starting nothing. Returns what is wrong (a plugin
   * that does not load); throws `ConfigError` for options a plugin refuses.
   */
  async checkBackends(): Promise<string[]> {
    try {
      return await this.registry.check();
    } catch (err) {
      if (err instanceof ConfigError) return [err.message.replace(`${this.config.source}: `, '')];
      throw err;
    }
  }

  /** Throws `ConfigError` for a config that cannot work, and any error that prevents start. */
  async start(): Promise<void> {
    const started = performance.now();
    await this.lifecycle.start();
    this.log.info('ready', {
      busName: this.config.busName,
      backends: JSON.stringify(this.registry.healthMap()),
      vms: this.container.get(StateHub).entries().length,
      startMs: Math.round(performance.now() - started),
    });
  }

  /** Stops everything in reverse order of start. Safe to call more than once. */
  stop(reason = 'stop requested'): Promise<void> {
    this.stopping ??= this.doStop(reason);
    return this.stopping;
  }

  /**
   * Reads the config file again and applies it, or refuses it whole and
   * keeps the running config: an invalid file (the field and the file named
   * in the log), or a change of `bus` or `busName` (those need a restart).
   * `logLevel`, `detachTimeoutSeconds` (for what starts from now on),
   * `access` (the account files are read again too) and `backends` apply
   * at once; a backend whose entry is unchanged is not touched.
   */
  reload(): Promise<ReloadResult> {
    this.reloading ??= this.doReload().finally(() => (this.reloading = undefined));
    return this.reloading;
  }

  private async doReload(): Promise<ReloadResult> {
    const { file, overrides } = this.source;
    if (this.stopping !== undefined) return this.refused('vmdevd is shutting down');
    if (file === undefined)
      return this.refused('vmdevd runs with the built-in default config: there is no file to reload');
    let next: Config;
    try {
      next = loadConfig(file, overrides);
    } catch (err) {
      return this.refused(errorMessage(err));
    }
    const current = this.config;
    for (const field of ['bus', 'busName'] as const) {
      if (next[field] !== current[field]) {
        return this.refused(
          `${file}: ${field}: changed from ${JSON.stringify(current[field])} to ${JSON.stringify(next[field])}, which needs a restart (systemctl restart vmdevd)`,
        );
      }
    }
    let backends: { added: string[]; removed: string[]; changed: string[] };
    try {
      backends = await this.registry.reconfigure(next.backends);
    } catch (err) {
      if (err instanceof ConfigError) return this.refused(err.message);
      throw err;
    }
    const changes: string[] = [];
    if (next.logLevel !== current.logLevel) {
      this.logger.setLevel(next.logLevel);
      changes.push(`logLevel ${next.logLevel}`);
    }
    if (next.detachTimeoutSeconds !== current.detachTimeoutSeconds) {
      this.container.get(DeviceJobService).setTimeoutSeconds(next.detachTimeoutSeconds);
      changes.push(`detachTimeoutSeconds ${next.detachTimeoutSeconds}`);
    }
    this.container.get(AccessPolicy).configure(next.access);
    if (JSON.stringify(next.access) !== JSON.stringify(current.access)) changes.push('access');
    for (const [what, ids] of Object.entries(backends))
      if (ids.length > 0) changes.push(`backends ${what}: ${ids.join(', ')}`);
    this.config = next;
    this.log.info('config reloaded', { file, changes: changes.length > 0 ? changes.join('; ') : 'none' });
    return { applied: true, changes };
  }

  private refused(reason: string): ReloadResult {
    this.log.warn('config reload refused; the running config stays', { reason });
    return { applied: false, reason };
  }

  private async doStop(reason: string): Promise<void> {
    this.log.info('shutting down', { reason });
    const pending = this.container.get(DeviceJobService).pendingCount();
    if (pending > 0) this.log.warn('pending detaches and attaches end as failed', { count: pending });
    await this.lifecycle.stop(reason);
    this.log.info('stopped');
  }
}
