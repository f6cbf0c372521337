/**
 * The libvirt backend keeps each domain's XML and fetches it again after an
 * event of the domain, for the next request. While a detach of vmdevd's own
 * is still in libvirt, that fetch waits for the call to return: the event
 * is mostly that detach's own DEVICE_REMOVED, which comes before the call
 * returns, and the fetch and its parsing would then run while the outcome
 * is on its way to the client and while libvirtd still finishes the call.
 *
 * Staged with a real libvirtd and a proxy on its socket
 * (test/harness/libvirt-proxy.ts) that holds libvirtd's reply to the
 * detach: the DEVICE_REMOVED event goes through, the call does not return.
 *
 * 1. vmdevd detaches the VM's SCSI disk; DeviceDetached comes from the
 *    event while the call's reply is held;
 * 2. no XML is asked of libvirtd meanwhile (a later call's reply is the
 *    barrier);
 * 3. the reply goes through: the XML is fetched again.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { useProxiedVm } from './proxied-vm.js';

/** remote_protocol.x: REMOTE_PROC_DOMAIN_GET_XML_DESC. */
const PROC_GET_XML_DESC = 14;
/** remote_protocol.x: REMOTE_PROC_DOMAIN_DETACH_DEVICE_FLAGS. */
const PROC_DETACH_DEVICE_FLAGS = 161;

describe('the XML fetched again after an own detach', { timeout: 300_000 }, () => {
  const env = useProxiedVm({});

  it('is fetched once the detach call returns, not at its DEVICE_REMOVED', async () => {
    const { proxy, vm } = env;
    const client = (await env.startVmdevd(120)).client;
    const signals = await client.subscribeAll();
    // The VM's XML is kept from a first request (this one finds no such disk).
    assert.equal(await client.testMethod(vm.name, { warmup: ['type=disk', 'target=sdz'] }), true);
    await signals.waitFor((s) => s.member === 'DeviceDetachFailed' && s.body[1] === 'warmup');

    // 1. The detach's reply is held; its event is not.
    proxy.holdReplies(PROC_DETACH_DEVICE_FLAGS);
    const xmlCalls = () =>
      proxy.seen.filter((p) => p.direction === 'call' && p.header.procedure === PROC_GET_XML_DESC).length;
    const before = xmlCalls();
    assert.equal(await client.testMethod(vm.name, { scsi: ['type=disk', 'target=sda'] }), true);
    const outcome = await signals.waitFor((s) => s.body[1] === 'scsi', 60_000, 'the outcome of the SCSI disk');
    assert.equal(outcome.member, 'DeviceDetached');
    // libvirtd sends the event before it finishes the call: its reply follows, and is held.
    await proxy.until(() => proxy.heldReplies === 1, "the detach call's reply");

    // 2. Nothing asked of libvirtd for the XML meanwhile (the kept XML served the detach).
    await client.getProperty('TestProperty');
    assert.equal(xmlCalls(), before, 'no XML fetched while the detach is still in libvirt');

    // 3. The call returns: the XML is fetched again.
    assert.equal(await proxy.releaseReplies(), 1);
    await proxy.until(() => xmlCalls() > before, 'the XML to be fetched again');
  });
});
