/**
 * The libvirt backend takes libvirt's events on a connection of its own,
 * which makes no call of a domain. A libvirt client reads its socket on the
 * thread of the call in flight, if there is one: on a connection that
 * also makes calls, a detach's DEVICE_REMOVED (it comes while the call is
 * still in libvirt) would be read by that call's thread and handed on to
 * the event loop, one more thread to wake before the outcome.
 *
 * Seen through a proxy on a real libvirtd's socket
 * (test/harness/libvirt-proxy.ts), which numbers the connections: vmdevd
 * detaches the VM's SCSI disk; the connection that registered for events
 * made no call of a domain and got the DEVICE_REMOVED; the detach went on
 * another connection, which registered for no event.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RPC_CALL, RPC_MESSAGE } from 'vmdevd/testing/libvirt-proxy';
import { useProxiedVm } from './proxied-vm.js';

/** remote_protocol.x: REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY. */
const PROC_EVENT_REGISTER = 316;
/** remote_protocol.x: REMOTE_PROC_DOMAIN_DETACH_DEVICE_FLAGS. */
const PROC_DETACH_DEVICE_FLAGS = 161;
/** remote_protocol.x: REMOTE_PROC_DOMAIN_EVENT_CALLBACK_DEVICE_REMOVED. */
const PROC_EVENT_DEVICE_REMOVED = 333;
/**
 * What opening a connection and registering for its events asks of
 * libvirtd (remote_protocol.x): AUTH_LIST 66, CONNECT_SUPPORTS_FEATURE 60,
 * CONNECT_OPEN 1, CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY 316,
 * CONNECT_REGISTER_CLOSE_CALLBACK 360. Nothing of a domain.
 */
const OPEN_AND_EVENTS = new Set([1, 60, 66, 316, 360]);

describe('events on a connection of their own', { timeout: 300_000 }, () => {
  const env = useProxiedVm({});

  it('a detach goes on another connection than its DEVICE_REMOVED, which makes no call of a domain', async () => {
    const { proxy, vm } = env;
    const client = (await env.startVmdevd(120)).client;
    const signals = await client.subscribeAll();
    assert.equal(await client.testMethod(vm.name, { scsi: ['type=disk', 'target=sda'] }), true);
    const outcome = await signals.waitFor((s) => s.body[1] === 'scsi', 60_000, 'the outcome of the SCSI disk');
    assert.equal(outcome.member, 'DeviceDetached');

    const on = (procedure: number, type: number) =>
      new Set(
        proxy.seen.filter((p) => p.header.type === type && p.header.procedure === procedure).map((p) => p.connection),
      );
    const registered = [...on(PROC_EVENT_REGISTER, RPC_CALL)];
    assert.equal(registered.length, 1, `one connection registers for events (${registered.join(', ')})`);
    const events = registered[0]!;
    assert.deepEqual([...on(PROC_EVENT_DEVICE_REMOVED, RPC_MESSAGE)], [events], 'DEVICE_REMOVED on that connection');

    const detached = [...on(PROC_DETACH_DEVICE_FLAGS, RPC_CALL)];
    assert.equal(detached.length, 1);
    assert.notEqual(detached[0], events, 'the detach on another connection');

    const asked = new Set(
      proxy.seen
        .filter((p) => p.connection === events && p.direction === 'call' && p.header.type === RPC_CALL)
        .map((p) => p.header.procedure),
    );
    const beyond = [...asked].filter((p) => !OPEN_AND_EVENTS.has(p));
    assert.deepEqual(beyond, [], `the events connection asked only to open and register (${[...asked].join(', ')})`);
  });
});
