/**
 * The libvirt backend publishes its domains' names and states before their
 * types: the types cost a call per domain (virDomainGetMetadata), the names
 * and states four calls in all. Staged with a real libvirtd and a proxy on
 * its socket (test/harness/libvirt-proxy.ts) that holds every metadata
 * call back:
 *
 * 1. vmdevd starts, owns its name and shows the VM in `TestProperty`
 *    while no type has been read;
 * 2. `GetDevices` by the VM's type waits (a later call's reply comes
 *    first: the bus barrier), since no type is known yet;
 * 3. the metadata calls are let through: the same `GetDevices` is
 *    answered with the VM's devices.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { useProxiedVm } from './proxied-vm.js';

/** remote_protocol.x: REMOTE_PROC_DOMAIN_GET_METADATA. */
const PROC_GET_METADATA = 265;

describe('names and states before types', { timeout: 300_000 }, () => {
  const env = useProxiedVm({ type: `late-${randomBytes(3).toString('hex')}`, start: false });

  it('shows the VM at once, and answers a selector by type once the type is read', async () => {
    const { proxy, vm } = env;
    proxy.holdCalls(PROC_GET_METADATA);
    // 1. Started and on the bus with every metadata call held in the proxy.
    const client = (await env.startVmdevd(120)).client;
    const states = await client.getProperty<Record<string, string>>('TestProperty');
    assert.equal(states[vm.name], 'shutoff');
    assert.deepEqual(await client.getProperty('Backends'), { local: 'connected' });
    await proxy.until(() => proxy.heldCalls > 0, 'vmdevd to ask for the types');

    // 2. A selector by type waits: a later call is answered first.
    let answered = false;
    const devices = client
      .call({ member: 'GetDevices', signature: 's', body: [vm.type] })
      .finally(() => (answered = true));
    await client.getProperty('TestProperty');
    assert.equal(answered, false, 'GetDevices by type is not answered before the type is known');

    // 3. The types are read: the same call finds the VM.
    assert.ok((await proxy.releaseCalls()) > 0);
    const [listed] = (await devices) as [Record<string, string[]>];
    assert.ok(
      Object.values(listed).some((tokens) => tokens.includes('target=sda')),
      `its SCSI disk among the VM's devices: ${JSON.stringify(listed)}`,
    );
  });
});
