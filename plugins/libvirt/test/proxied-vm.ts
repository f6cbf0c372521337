// What the tests that stage libvirt's messages share: a real libvirtd, a
// proxy on its socket (test/harness/libvirt-proxy.ts), a direct connection
// that makes one test VM, and a vmdevd that reaches libvirtd through the
// proxy once a test starts it.
import { after, before } from 'node:test';
import { LibvirtProxy } from 'vmdevd/testing/libvirt-proxy';
import { startLibvirtd, type Libvirtd } from 'vmdevd/testing/libvirtd';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { createTestVm, type TestVm, type TestVmOptions } from 'vmdevd/testing/test-vms';
import { Connection } from '../src/binding.js';

export interface ProxiedVm {
  /** Set once the suite's `before` hook has run, like the three below. */
  readonly libvirtd: Libvirtd;
  readonly proxy: LibvirtProxy;
  readonly direct: Connection;
  readonly vm: TestVm;
  /** vmdevd with one libvirt backend, `local`, on the proxy's URI (stopping one started before). */
  startVmdevd(detachTimeoutSeconds: number): Promise<Stack>;
}

/**
 * Registers the `before` hook that makes all this and the `after` hook
 * that lets go of it, failed tests or not: call it at the top of a
 * `describe`. Whatever the proxy still holds is let through before vmdevd
 * stops, so that no call of vmdevd's waits on it.
 */
export function useProxiedVm(vmOptions: TestVmOptions): ProxiedVm {
  const made: { libvirtd?: Libvirtd; proxy?: LibvirtProxy; direct?: Connection; vm?: TestVm; stack?: Stack } = {};
  before(async () => {
    made.libvirtd = await startLibvirtd();
    made.proxy = await LibvirtProxy.start();
    made.direct = await Connection.open(made.libvirtd.uri);
    made.vm = await createTestVm(made.direct, vmOptions);
  });
  after(async () => {
    if (made.proxy !== undefined) {
      await made.proxy.releaseCalls();
      await made.proxy.releaseReplies();
      await made.proxy.releaseEvents();
    }
    await made.stack?.stop();
    await made.proxy?.stop();
    await made.vm?.remove();
    await made.direct?.close();
    await made.libvirtd?.stop();
  });
  return {
    get libvirtd() {
      return made.libvirtd!;
    },
    get proxy() {
      return made.proxy!;
    },
    get direct() {
      return made.direct!;
    },
    get vm() {
      return made.vm!;
    },
    async startVmdevd(detachTimeoutSeconds) {
      await made.stack?.stop();
      made.stack = await startStack({
        backends: [],
        extraBackends: [{ id: 'local', plugin: 'libvirt', uri: made.proxy!.uri }],
        config: { detachTimeoutSeconds },
      });
      return made.stack;
    },
  };
}
