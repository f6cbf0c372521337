/**
 * The libvirt plugin: backends on libvirt's C library through this
 * package's own Node-API binding.
 *
 * Options: `uri` (required, e.g. `qemu:///system`), `keepaliveIntervalSeconds`
 * (5) and `keepaliveCount` (3), `reconnectInitialMs` (500) and
 * `reconnectMaxMs` (30000) for the backoff after the connection is lost,
 * `loopSliceMicroseconds` (1000; 0: none) for the main thread's time slice.
 */
import { BackendFactory, ContainerModule, type VmdevdPlugin } from 'vmdevd/plugin-api';
import { LibvirtBackend, OPTIONS_SCHEMA } from './libvirt-backend.js';
import { ListingGate } from './listing-gate.js';

/** Shared by the daemon's libvirt backends: their type reads wait for the others' listings. */
const listings = new ListingGate(2000);

const factory: BackendFactory = {
  optionsSchema: OPTIONS_SCHEMA,
  create: (context) => new LibvirtBackend(context, listings),
};

export const plugin: VmdevdPlugin = {
  // The plugin API this was written for (2: it lists and attaches devices; 3: it publishes
  // names and states before types; 4: it reads a request's `aborted`), a number as the README asks.
  apiVersion: 4,
  name: 'libvirt',
  module: new ContainerModule(({ bind }) => {
    bind<BackendFactory>(BackendFactory).toConstantValue(factory);
  }),
};

export default plugin;
