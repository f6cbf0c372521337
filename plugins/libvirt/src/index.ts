/**
 * The libvirt plugin: backends on libvirt's C library through this
 * package's own Node-API binding.
 *
 * Options: `uri` (required, e.g. `qemu:///system`), `keepaliveIntervalSeconds`
 * (5) and `keepaliveCount` (3), `reconnectInitialMs` (500) and
 * `reconnectMaxMs` (30000) for the backoff after the connection is lost.
 */
import { BackendFactory, ContainerModule, PLUGIN_API_VERSION, type VmdevdPlugin } from 'vmdevd/plugin-api';
import { LibvirtBackend, OPTIONS_SCHEMA } from './libvirt-backend.js';

const factory: BackendFactory = {
  optionsSchema: OPTIONS_SCHEMA,
  create: (context) => new LibvirtBackend(context),
};

export const plugin: VmdevdPlugin = {
  apiVersion: PLUGIN_API_VERSION,
  name: 'libvirt',
  module: new ContainerModule(({ bind }) => {
    bind<BackendFactory>(BackendFactory).toConstantValue(factory);
  }),
};

export default plugin;
