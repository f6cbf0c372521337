import {
  BackendError,
  BackendFactory,
  ContainerModule,
  type BackendContext,
  type DesiredState,
  type DetachOutcome,
  type DetachRequest,
  type VmBackend,
  type VmInfo,
  type VmdevdPlugin,
} from 'vmdevd/plugin-api';

class MemoryBackend implements VmBackend {
  private vm: VmInfo;

  constructor(private readonly ctx: BackendContext) {
    // The options are checked against optionsSchema below before create() is called.
    const name = (ctx.options['vmName'] as string | undefined) ?? 'demo';
    this.vm = { name, type: 'example', state: 'running' };
  }

  async start(): Promise<void> {
    // Connect to the hypervisor here; then publish the first complete list.
    this.ctx.publish([this.vm]);
    this.ctx.setHealth({ connected: true });
  }

  async stop(): Promise<void> {
    this.ctx.log.info('stopped');
  }

  async detach(request: DetachRequest): Promise<DetachOutcome> {
    request.issued(); // the timeout counts from here
    if (request.device.type === 'alias') {
      throw new BackendError('NotSupported', 'this backend cannot detach by alias');
    }
    this.ctx.log.info('detaching', { device: request.device.label, xml: request.device.xml });
    return { ok: true }; // resolve only once the hypervisor confirms
  }

  async setState(vm: VmInfo, state: DesiredState): Promise<void> {
    this.vm = { ...this.vm, state: state === 'paused' ? 'paused' : state === 'running' ? 'running' : 'shutoff' };
    this.ctx.update(this.vm); // normally the hypervisor's event does this
  }
}

const factory: BackendFactory = {
  optionsSchema: { type: 'object', properties: { vmName: { type: 'string' } } },
  create: (ctx) => new MemoryBackend(ctx),
};

const plugin: VmdevdPlugin = {
  apiVersion: 1, // the plugin API this was built for: a number, not the daemon's constant
  name: 'memory',
  module: new ContainerModule(({ bind }) => {
    bind<BackendFactory>(BackendFactory).toConstantValue(factory);
  }),
};

export default plugin;
