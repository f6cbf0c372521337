/**
 * The qmp plugin: backends on QEMU processes reached directly through
 * their QMP sockets, for hosts without libvirt.
 *
 * Options: `vms` (a list of `{ name, type?, socket }`) and/or `socketDir`
 * (every `NAME.qmp` socket there is a VM `NAME`); `commandTimeoutMs`
 * (10000), `connectTimeoutMs` (5000), `reconnectInitialMs` (500) and
 * `reconnectMaxMs` (30000).
 */
import { BackendFactory, ContainerModule, type VmdevdPlugin } from 'vmdevd/plugin-api';
import { QmpBackend } from './qmp-backend.js';
import { OPTIONS_SCHEMA } from './qmp-options.js';

const factory: BackendFactory = {
  optionsSchema: OPTIONS_SCHEMA,
  create: (context) => new QmpBackend(context),
};

export const plugin: VmdevdPlugin = {
  // The plugin API this was written for: 4 (it reads a request's `aborted`). It does not attach
  // devices (vmdevd answers NotSupported), and refuses the tokens that describe a disk or an
  // interface, which QEMU gives it no way to check.
  apiVersion: 4,
  name: 'qmp',
  module: new ContainerModule(({ bind }) => {
    bind<BackendFactory>(BackendFactory).toConstantValue(factory);
  }),
};

export default plugin;
