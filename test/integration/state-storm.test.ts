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
import type { StateFollower } from '../harness/bus-client.js';
import { describeFigures, processFigures } from '../harness/proc-status.js';
import { startStack, type Stack } from '../harness/stack.js';

const VMS = 1000;
const STORM_MS = 10_000;

describe('state storms: 1,000 VMs for 10 s', { timeout: 300_000 }, () => {
  let stack: Stack;
  let state: StateFollower;

  before(async () => {
    stack = await startStack({ backends: [{ vms: [], generate: VMS }], config: { logLevel: 'info' } });
    state = await stack.client.followState();
  });
  after(async () => {
    await stack?.stop();
  });

  it('publishes each change of one VM exactly, wherever its key is in the map', async () => {
    // A map this large is encoded from the last one's bytes when one VM
    // changes state (src/dbus/state-bodies.ts): keys at every place, and
    // states of every length. The entries behind the changed one move when
    // its end crosses a multiple of 8 bytes, as names of 4 to 7 bytes do
    // between "paused" and "pmsuspended" ("vm-0050", in the middle, and
    // "vm-é", last); "42" is an integer-like key, first in the map's order.
    for (const name of ['42', 'vm-é', 'vm-0050']) {
      await stack.control('test', { cmd: 'add', vm: { name, uuid: `uuid-${name}`, type: 'added', state: 'running' } });
    }
    await state.until((m) => Object.keys(m).length === VMS + 3, 30_000, 'TestSignal with the added VMs');
    const expected = { ...state.last! };
    const states = ['pmsuspended', 'paused', 'shutdown', 'crashed', 'nostate', 'running'];
    for (const vm of ['vm-0050', '42', 'vm-é', 'vm-00000', 'vm-00500', 'vm-00999']) {
      for (const next of states) {
        const count = state.count;
        await stack.control('test', { cmd: 'state', vm, state: next });
        expected[vm] = next;
        await state.until(() => state.count > count, 30_000, `the TestSignal of ${vm} ${next}`);
        assert.deepEqual(state.last, expected, `the TestSignal after ${vm} went ${next}`);
      }
      const property = await stack.client.getProperty<Record<string, string>>('TestProperty');
      assert.deepEqual(property, expected, `TestProperty after the changes of ${vm}`);
    }
    for (const name of ['42', 'vm-é', 'vm-0050']) await stack.control('test', { cmd: 'remove', name });
    await state.until((m) => Object.keys(m).length === VMS, 30_000, 'TestSignal without the added VMs');
  });

  for (const pattern of ['random', 'sweep'] as const) {
    it(`publishes the backend's final state last (${pattern})`, async () => {
      const before = processFigures(stack.daemon.pid);
      const signalsBefore = state.count;
      await stack.control('test', { cmd: 'storm', durationMs: STORM_MS, pattern });
      const storm = stack.journal().findLast((e) => e['op'] === 'storm')!;
      const final = storm['final'] as Record<string, string>;
      assert.equal(Object.keys(final).length, VMS);
      await state.until((m) => sameMap(m, final), 60_000, "TestSignal with the backend's final state");
      // The barrier: a reply sent after every earlier signal. Nothing published after the final map differs from it.
      const property = await stack.client.getProperty<Record<string, string>>('TestProperty');
      const after = processFigures(stack.daemon.pid);
      console.log(
        `# storm ${pattern}: ${String(storm['changes'])} changes in ${String(storm['turns'])} turns of ${VMS} VMs in ${STORM_MS / 1000} s; ${state.count - signalsBefore} TestSignals`,
      );
      console.log(`# daemon before: ${describeFigures(before)}`);
      console.log(`# daemon after:  ${describeFigures(after)}`);
      assert.ok(sameMap(state.last!, final), 'the last TestSignal shows the final state');
      assert.deepEqual(property, final, 'TestProperty shows the final state');
      assert.ok(state.count - signalsBefore >= 1);
    });
  }
});

function sameMap(a: Record<string, string>, b: Record<string, string>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}
