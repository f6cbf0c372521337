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
 *
 * Either connection lost alone (the proxy cuts it) starts the whole
 * connection over: the backend reports itself disconnected, reconnects,
 * and follows the VM's state again. An events connection lost unnoticed
 * would leave every VM's state stale for good.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RPC_CALL, RPC_MESSAGE, type LibvirtProxy } from 'vmdevd/testing/libvirt-proxy';
import { useProxiedVm } from './proxied-vm.js';
import { backendsIn } from './support.js';

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

/** The connections on which the proxy saw a message of `procedure` and `type`. */
function connectionsWith(proxy: LibvirtProxy, procedure: number, type: number): Set<number> {
  return new Set(
    proxy.seen.filter((p) => p.header.type === type && p.header.procedure === procedure).map((p) => p.connection),
  );
}

describe('events on a connection of their own', { timeout: 300_000 }, () => {
  const env = useProxiedVm({});

  it('a detach goes on another connection than its DEVICE_REMOVED, which makes no call of a domain', async () => {
    const { proxy, vm } = env;
    const client = (await env.startVmdevd(120)).client;
    const signals = await client.subscribeAll();
    assert.equal(await client.testMethod(vm.name, { scsi: ['type=disk', 'target=sda'] }), true);
    const outcome = await signals.waitFor((s) => s.body[1] === 'scsi', 60_000, 'the outcome of the SCSI disk');
    assert.equal(outcome.member, 'DeviceDetached');

    const registered = [...connectionsWith(proxy, PROC_EVENT_REGISTER, RPC_CALL)];
    assert.equal(registered.length, 1, `one connection registers for events (${registered.join(', ')})`);
    const events = registered[0]!;
    assert.deepEqual(
      [...connectionsWith(proxy, PROC_EVENT_DEVICE_REMOVED, RPC_MESSAGE)],
      [events],
      'DEVICE_REMOVED on that connection',
    );

    const detached = [...connectionsWith(proxy, PROC_DETACH_DEVICE_FLAGS, RPC_CALL)];
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

  it('either connection lost alone starts the whole connection over, and events flow again', async () => {
    const { proxy, vm, direct } = env;
    const client = (await env.startVmdevd(120)).client;
    const signals = await client.subscribeAll();
    for (const lost of ['events', 'calls'] as const) {
      const registered = connectionsWith(proxy, PROC_EVENT_REGISTER, RPC_CALL);
      const open = proxy.openConnections;
      const events = open.filter((c) => registered.has(c));
      assert.equal(events.length, 1, `one open connection with events (open: ${open.join(', ')})`);
      const cut = lost === 'events' ? events[0]! : open.find((c) => !registered.has(c))!;
      assert.ok(cut !== undefined, 'an open connection for the calls');
      const since = signals.signals.length;
      proxy.drop(cut);
      await signals.waitFor(
        (s) =>
          signals.signals.indexOf(s) >= since &&
          /^disconnected: lost the connection/.test(backendsIn(s)?.['local'] ?? ''),
        30_000,
        `Backends with local disconnected after the ${lost} connection was cut`,
      );
      await signals.waitFor(
        (s) => signals.signals.indexOf(s) >= since && backendsIn(s)?.['local'] === 'connected',
        30_000,
        'reconnected',
      );

      // The state a direct client sets reaches TestSignal: events flow on the new connection.
      for (const [call, state] of [
        [() => direct.suspend(vm.uuid), 'paused'],
        [() => direct.resume(vm.uuid), 'running'],
      ] as const) {
        const before = signals.signals.length;
        await call();
        await signals.waitFor(
          (s) =>
            signals.signals.indexOf(s) >= before &&
            s.member === 'TestSignal' &&
            (s.body[0] as Record<string, string>)[vm.name] === state,
          30_000,
          `${vm.name} ${state} in TestSignal after the ${lost} connection was cut`,
        );
      }
    }
  });
});
