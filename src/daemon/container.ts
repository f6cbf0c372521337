/**
 * The composition root: the only place that decides which class serves
 * which token, and the order in which the daemon's services start (and, in
 * reverse, stop). Plugins get containers of their own, with nothing of the
 * core in them (see plugin-loader.ts).
 */
import { Container } from 'inversify';
import { AccessPolicy, AccountFiles } from '../core/access-policy.js';
import { BackendRegistry, BuiltinPluginDir } from '../core/backend-registry.js';
import { Clock, systemClock } from '../core/clock.js';
import { Config } from '../core/config.js';
import { DeviceJobService, JobGraceMs } from '../core/device-job-service.js';
import { Lifecycle, type LifecycleStage } from '../core/lifecycle.js';
import { RootLogger } from '../core/logger.js';
import { BUILTIN_PLUGIN_DIR, BeforePluginImport } from '../core/plugin-loader.js';
import { StateHub } from '../core/state-hub.js';
import { VmdevService } from '../core/vmdev-service.js';
import { DbusFrontend, InterfaceDefinitionToken } from '../dbus/dbus-frontend.js';
import { loadInterface } from '../dbus/interface-definition.js';
import { MemoryReclaimer } from './memory-reclaimer.js';
import { providePluginApi } from './plugin-api-resolver.js';

export interface ContainerOptions {
  /** Where in-repo plugins are looked up; the package's `plugins/` by default. */
  readonly builtinPluginDir?: string;
  /** How long a backend may take to verify a device after its timeout. */
  readonly jobGraceMs?: number;
  /** The core's time (tests run it by hand). */
  readonly clock?: Clock;
  /** Where user and group names are looked up. */
  readonly accountFiles?: AccountFiles;
}

export function createContainer(config: Config, logger: RootLogger, options: ContainerOptions = {}): Container {
  const container = new Container({ defaultScope: 'Singleton' });
  container.bind(Config).toConstantValue(config);
  container.bind(RootLogger).toConstantValue(logger);
  container.bind(BuiltinPluginDir).toConstantValue(options.builtinPluginDir ?? BUILTIN_PLUGIN_DIR);
  // Before a plugin is imported: its vmdevd/plugin-api must be ours.
  container.bind(BeforePluginImport).toConstantValue(providePluginApi);
  container.bind(JobGraceMs).toConstantValue(options.jobGraceMs ?? 2000);
  container.bind(Clock).toConstantValue(options.clock ?? systemClock);
  container.bind(InterfaceDefinitionToken).toConstantValue(loadInterface());
  container.bind(AccountFiles).toConstantValue(options.accountFiles ?? { passwd: '/etc/passwd', group: '/etc/group' });
  container.bind(AccessPolicy).toSelf();
  container.bind(StateHub).toSelf();
  container.bind(BackendRegistry).toSelf();
  container.bind(DeviceJobService).toSelf();
  container.bind(VmdevService).toSelf();
  container.bind(DbusFrontend).toSelf();
  container.bind(MemoryReclaimer).toConstantValue(new MemoryReclaimer(logger.child('memory')));
  container.bind(Lifecycle).toDynamicValue((ctx) => {
    const registry = ctx.get(BackendRegistry);
    const frontend = ctx.get(DbusFrontend);
    const service = ctx.get(VmdevService);
    const hub = ctx.get(StateHub);
    const stages: LifecycleStage[] = [
      // Plugins load first: options a plugin's schema refuses stop the start.
      [{ name: 'plugins', start: () => registry.load(), stop: () => (registry.dispose(), hub.dispose()) }],
      // The bus and the backends come up side by side.
      [
        { name: 'bus connection', start: () => frontend.connect(), stop: () => frontend.dispose() },
        { name: 'backends', start: () => registry.start(), stop: () => registry.stop() },
      ],
      // Calls are answered from here; on the way down nothing more is
      // accepted, every pending detach and attach gets its outcome while the
      // bus still carries it, then the name is released and the connection
      // closed.
      [
        {
          name: 'requests',
          start: () => frontend.publish(),
          stop: async () => {
            frontend.stopAccepting();
            service.close();
            await frontend.close();
          },
        },
      ],
      [{ name: 'first state map', start: () => frontend.announce() }],
      [ctx.get(MemoryReclaimer)],
    ];
    return new Lifecycle(stages, logger.child('lifecycle'));
  });
  return container;
}
