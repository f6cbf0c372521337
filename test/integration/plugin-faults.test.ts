/**
 * Misbehaving plugins, loaded through the normal plugin path into one
 * daemon next to a good backend (the test backend): one that throws in
 * its own timer and socket handlers, one whose calls return rejected
 * promises, one whose detaches never settle, and one that floods
 * `update()` the whole time. Each is isolated: `Backends` shows the
 * crash where there is one, every device of the bad backend ends by its
 * deadline (the core's clock), and the good backend's requests and
 * signals go on meanwhile. Prints the counts and the daemon's memory.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type { CallError, StateFollower } from '../harness/bus-client.js';
import { OutcomeLedger } from '../harness/outcome-ledger.js';
import { describeFigures, processFigures } from '../harness/proc-status.js';
import { startStack, type Stack } from '../harness/stack.js';

const E = 'org.example.dbustest.Error.';
const TIMEOUT_S = 3;
const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/plugins/${name}/index.js`, import.meta.url));
const disk = (target: string) => ['type=disk', `target=${target}`];

describe('misbehaving plugins, each isolated', { timeout: 300_000 }, () => {
  let stack: Stack;
  let ledger: OutcomeLedger;
  let state: StateFollower;
  let goodChanges = 0;

  before(async () => {
    stack = await startStack({
      backends: [{ id: 'good' }],
      extraBackends: [
        { id: 'thrower', plugin: fixture('throws-in-callback') },
        { id: 'rejecter', plugin: fixture('rejects') },
        { id: 'hanger', plugin: fixture('never-settles') },
        { id: 'flooder', plugin: fixture('floods-update') },
      ],
      config: { detachTimeoutSeconds: TIMEOUT_S, logLevel: 'info' },
    });
    ledger = await OutcomeLedger.attach(stack.client);
    state = await stack.client.followState();
  });
  after(async () => {
    await stack?.stop();
  });

  const backends = () => stack.client.getProperty<Record<string, string>>('Backends');

  /** The good backend goes on: a detach confirmed, and a state change in TestSignal. */
  async function goodBackendGoesOn(label: string): Promise<void> {
    assert.equal(await ledger.detach(stack.client, 'vm1', { [label]: disk(`g${label}`) }), true);
    const want = ++goodChanges % 2 === 1 ? 'paused' : 'running';
    const shown = state.next((m) => m['vm3'] === want);
    await stack.control('good', { cmd: 'state', vm: 'vm3', state: want });
    await shown;
  }

  function report(name: string, before: ReturnType<typeof processFigures>): void {
    console.log(`# ${name}: outcomes so far ${JSON.stringify(ledger.summary().results)}; ${state.count} TestSignals`);
    console.log(`# daemon before: ${describeFigures(before)}`);
    console.log(`# daemon after:  ${describeFigures(processFigures(stack.daemon.pid))}`);
  }

  it('starts every backend connected', async () => {
    assert.deepEqual(await backends(), {
      good: 'connected',
      thrower: 'connected',
      rejecter: 'connected',
      hanger: 'connected',
      flooder: 'connected',
    });
  });

  it('a plugin that throws in its own timer and socket handlers: shown crashed, its devices time out, the others go on', async () => {
    const before = processFigures(stack.daemon.pid);
    assert.equal(await ledger.detach(stack.client, 'tc1', { 'timer-1': disk('sda'), 'socket-1': disk('sdb') }), true);
    await stack.daemon.waitForOutput(
      /a plugin threw an uncaught exception error="throws-in-callback: the timer of timer-1/,
    );
    await stack.daemon.waitForOutput(
      /a plugin threw an uncaught exception error="throws-in-callback: the socket handler/,
    );
    // Both devices are still pending: the good backend's request and signals go on before they end.
    await goodBackendGoesOn('during-throws');
    await ledger.settled(60_000);
    const shown = await backends();
    assert.match(shown['thrower']!, /^disconnected: plugin crashed: throws-in-callback: /);
    for (const id of ['good', 'rejecter', 'hanger', 'flooder']) assert.equal(shown[id], 'connected', id);
    for (const label of ['timer-1', 'socket-1']) {
      const [outcome, ...more] = ledger.outcomesOf('tc1', label);
      assert.equal(outcome?.result, 'Timeout', label);
      assert.equal(more.length, 0);
      assert.ok(ledger.outcomesOf('vm1', 'during-throws')[0]!.seq < outcome.seq, 'the good outcome came first');
    }
    // A request for the crashed backend's VM is refused until it reports health again.
    const refused = (await ledger.detach(stack.client, 'tc1', { later: disk('sdc') })) as CallError;
    assert.equal(refused.type, `${E}BackendUnavailable`);
    report('throws in callbacks', before);
  });

  it('a plugin whose calls return rejected promises: each device Failed, a write refused, still connected', async () => {
    const before = processFigures(stack.daemon.pid);
    assert.equal(
      await ledger.detach(stack.client, 'rj1', {
        'error-1': disk('sda'),
        'plain-1': disk('sdb'),
        'malformed-1': disk('sdc'),
        'fine-1': disk('sdd'),
      }),
      true,
    );
    await goodBackendGoesOn('during-rejects');
    await assert.rejects(stack.client.setProperty('TestProperty', 'a{ss}', { rj1: 'paused' }), (err: CallError) => {
      assert.equal(err.type, `${E}Failed`);
      assert.match(err.text, /rejects: the state change failed/);
      return true;
    });
    await ledger.settled(60_000);
    assert.deepEqual(
      ['error-1', 'plain-1', 'malformed-1', 'fine-1'].map((l) => ledger.outcomesOf('rj1', l).map((o) => o.result)),
      [['Failed'], ['Failed'], ['Failed'], ['detached']],
    );
    assert.equal((await backends())['rejecter'], 'connected');
    report('rejected promises', before);
  });

  it('a plugin whose detaches never settle: the core ends each at its deadline, the others go on', async () => {
    const before = processFigures(stack.daemon.pid);
    assert.equal(
      await ledger.detach(stack.client, 'ns1', {
        'queued-1': disk('sda'),
        'held-1': disk('sdb'),
        'issued-1': disk('sdc'),
      }),
      true,
    );
    await goodBackendGoesOn('during-hang');
    await ledger.settled(60_000);
    const good = ledger.outcomesOf('vm1', 'during-hang')[0]!;
    for (const label of ['queued-1', 'held-1', 'issued-1']) {
      const outcomes = ledger.outcomesOf('ns1', label);
      assert.deepEqual(
        outcomes.map((o) => o.result),
        ['Timeout'],
        label,
      );
      assert.ok(good.seq < outcomes[0]!.seq, 'the good outcome came first');
    }
    assert.match(
      await stack.daemon
        .waitForOutput(/detach finished vm=ns1 device=held-1 result=Timeout message="([^"]+)"/)
        .then((m) => m[1]!),
      new RegExp(`still waiting for another operation of the VM after ${TIMEOUT_S} s`),
    );
    assert.equal((await backends())['hanger'], 'connected');
    report('never settles', before);
  });

  it('a plugin that floods update(): TestSignal keeps coming for the others, and its own devices end', async () => {
    const before = processFigures(stack.daemon.pid);
    const signalsBefore = state.count;
    await stack.client.setProperty('TestProperty', 'a{ss}', { 'flood-000': 'paused' });
    const [, first] = await stack.daemon.waitForOutput(/flood so far vm=flood-000 state=paused updates=(\d+)/);
    assert.equal(await ledger.detach(stack.client, 'flood-001', { 'flooded-1': disk('sda') }), true);
    await goodBackendGoesOn('during-flood');
    await ledger.settled(60_000);
    assert.deepEqual(
      ledger.outcomesOf('flood-001', 'flooded-1').map((o) => o.result),
      ['detached'],
    );
    await stack.client.setProperty('TestProperty', 'a{ss}', { 'flood-000': 'running' });
    const [, second] = await stack.daemon.waitForOutput(/flood so far vm=flood-000 state=running updates=(\d+)/);
    assert.ok(Number(second) > Number(first!), 'the flood went on all along');
    assert.deepEqual(await backends(), {
      good: 'connected',
      thrower: (await backends())['thrower']!,
      rejecter: 'connected',
      hanger: 'connected',
      flooder: 'connected',
    });
    console.log(
      `# flood: ${Number(second) - Number(first)} updates from the flooding backend while ${state.count - signalsBefore} TestSignals were published`,
    );
    report('floods update()', before);
  });
});
