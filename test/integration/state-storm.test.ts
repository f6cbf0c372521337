/**
 * State storms: the test backend changes the states of 1,000 VMs as fast
 * as it can for 10 s, twice (states at random; every VM through the same
 * sweep, ending with a step back to the map of the turn before). TestSignal
 * keeps up by coalescing, and the last map it publishes, like
 * `Get TestProperty`, equals the backend's final state. Prints the changes,
 * the signals and the daemon's memory.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import dbus from 'dbus-next';
import { BUS_NAME, INTERFACE } from '../harness/bus-client.js';
import { describeFigures, processFigures } from '../harness/proc-status.js';
import { startStack, type Stack } from '../harness/stack.js';

const VMS = 1000;
const STORM_MS = 10_000;

describe('state storms: 1,000 VMs for 10 s', { timeout: 300_000 }, () => {
  let stack: Stack;
  /** The last TestSignal's map, and how many arrived. */
  let last: Record<string, string> | undefined;
  let received = 0;
  const waiters = new Set<() => void>();

  before(async () => {
    stack = await startStack({ backends: [{ vms: [], generate: VMS }], config: { logLevel: 'info' } });
    stack.client.bus.on('message', (msg: dbus.Message) => {
      if (msg.type !== dbus.MessageType.SIGNAL || msg.member !== 'TestSignal') return;
      last = msg.body[0] as Record<string, string>;
      received++;
      for (const w of [...waiters]) w();
    });
    await stack.client.call({
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus',
      member: 'AddMatch',
      signature: 's',
      body: [`type='signal',sender='${BUS_NAME}',interface='${INTERFACE}',member='TestSignal'`],
    });
  });
  after(async () => {
    await stack?.stop();
  });

  /** Resolves once the last TestSignal shows `map`; the deadline only guards against a hang. */
  function lastShows(map: Record<string, string>, timeoutMs = 60_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (last === undefined || !sameMap(last, map)) return;
        done();
        resolve();
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no TestSignal showed the backend's final state within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });
  }

  for (const pattern of ['random', 'sweep'] as const) {
    it(`publishes the backend's final state last (${pattern})`, async () => {
      const before = processFigures(stack.daemon.pid);
      const signalsBefore = received;
      await stack.control('test', { cmd: 'storm', durationMs: STORM_MS, pattern });
      const storm = stack.journal().findLast((e) => e['op'] === 'storm')!;
      const final = storm['final'] as Record<string, string>;
      assert.equal(Object.keys(final).length, VMS);
      await lastShows(final);
      // The barrier: a reply sent after every earlier signal. Nothing published after the final map differs from it.
      const property = await stack.client.getProperty<Record<string, string>>('TestProperty');
      const after = processFigures(stack.daemon.pid);
      console.log(
        `# storm ${pattern}: ${String(storm['changes'])} changes in ${String(storm['turns'])} turns of ${VMS} VMs in ${STORM_MS / 1000} s; ${received - signalsBefore} TestSignals`,
      );
      console.log(`# daemon before: ${describeFigures(before)}`);
      console.log(`# daemon after:  ${describeFigures(after)}`);
      assert.ok(sameMap(last!, final), 'the last TestSignal shows the final state');
      assert.deepEqual(property, final, 'TestProperty shows the final state');
      assert.ok(received - signalsBefore >= 1);
    });
  }
});

function sameMap(a: Record<string, string>, b: Record<string, string>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}
