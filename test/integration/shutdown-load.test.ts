/**
 * SIGTERM under load: 64 connections keep sending detaches (some confirmed
 * at once, some slow, many that the test backend never answers) when
 * vmdevd is told to stop. Every device of every accepted request gets
 * exactly one outcome signal, and each comes before the bus name is
 * released (`NameOwnerChanged` is ordered after them on the bus); calls
 * that come too late are refused and start nothing. Prints the counts and
 * the daemon's memory.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { BUS_NAME, TestClient } from '../harness/bus-client.js';
import { OutcomeLedger } from '../harness/outcome-ledger.js';
import { describeFigures, processFigures } from '../harness/proc-status.js';
import { startStack, type Stack } from '../harness/stack.js';

const CLIENTS = 64;
/** SIGTERM once this many calls were answered. */
const CALLS_BEFORE_SIGTERM = 3000;
const VMS = 100;
const vmName = (i: number) => `vm-${String(i).padStart(5, '0')}`;

describe('SIGTERM with detaches pending under load', { timeout: 300_000 }, () => {
  let stack: Stack;
  const clients: TestClient[] = [];

  before(async () => {
    stack = await startStack({
      backends: [{ vms: [], generate: VMS, detachDelayMs: 1, slowMs: 200 }],
      config: { detachTimeoutSeconds: 600, logLevel: 'info' },
    });
    for (let i = 0; i < CLIENTS; i++) clients.push(await TestClient.connect(stack.bus.address));
  });
  after(async () => {
    for (const c of clients) c.close();
    await stack?.stop();
  });

  it('gives each pending device its outcome before the name is released', async () => {
    const ledger = await OutcomeLedger.attach(stack.client, [
      `type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='${BUS_NAME}'`,
    ]);
    const memoryBefore = processFigures(stack.daemon.pid);
    const replies: Record<string, number> = {};
    let answered = 0;
    let memoryAtSigterm: ReturnType<typeof processFigures> | undefined;
    const runClient = async (c: number) => {
      const client = clients[c]!;
      for (let i = 0; ; i++) {
        const kind = ['hang', 'ok', 'slow', 'hang'][i % 4]!;
        const devices: Record<string, string[]> = {};
        for (let d = 0; d < 1 + (i % 2); d++)
          devices[`${kind}-${c}x${i}-${d}`] = ['type=disk', `target=d${c}x${i}y${d}`];
        const reply = await ledger.detach(client, vmName((c + i) % VMS), devices);
        const name = typeof reply === 'boolean' ? String(reply) : reply.type;
        replies[name] = (replies[name] ?? 0) + 1;
        if (++answered === CALLS_BEFORE_SIGTERM) {
          memoryAtSigterm = processFigures(stack.daemon.pid);
          stack.daemon.child.kill('SIGTERM');
        }
        // Refused (shutting down, or the name is gone): this connection is done.
        if (reply !== true) return;
      }
    };
    await Promise.all(clients.map((_, c) => runClient(c)));
    assert.equal(await stack.daemon.exited(), 0, 'a clean shutdown');
    // Every call was answered; every accepted device has its outcome (the deadline only guards against a hang).
    await ledger.settled(60_000);
    // The deadline only guards against a hang: the release follows the daemon's exit.
    const released = await ledger.other(
      (s) => s.member === 'NameOwnerChanged' && s.body[0] === BUS_NAME && s.body[2] === '',
      60_000,
    );
    const summary = ledger.summary();
    const pending = /pending detaches and attaches end as failed count=(\d+)/.exec(stack.daemon.output())?.[1];

    console.log(
      `# SIGTERM after ${CALLS_BEFORE_SIGTERM} answered calls from ${CLIENTS} connections; ${answered} calls in all`,
    );
    console.log(`# replies and errors by name: ${JSON.stringify(replies)}`);
    console.log(
      `# outcomes: ${JSON.stringify(summary.results)} for ${summary.accepted} accepted devices; ${pending ?? 0} detaches pending at SIGTERM`,
    );
    console.log(`# daemon before: ${describeFigures(memoryBefore)}`);
    console.log(`# daemon at SIGTERM: ${describeFigures(memoryAtSigterm!)}`);

    assert.deepEqual(summary.missing, [], 'no accepted device is left without an outcome');
    assert.deepEqual(summary.duplicated, []);
    assert.deepEqual(summary.strays, []);
    assert.deepEqual(summary.refusedWithOutcome, [], 'a refused call starts nothing');
    assert.equal(summary.exactlyOne, summary.accepted);
    assert.ok(Number(pending) > 0, 'detaches were pending when SIGTERM came');
    // A device the backend never answers can only have ended with the shutdown.
    const hung = ledger.devicesWithPrefix('hang-').filter((d) => d.accepted);
    assert.ok(hung.length > 0);
    assert.deepEqual(
      hung.filter((d) => d.outcomes.map((o) => o.result).join() !== 'Failed').map((d) => d.key),
      [],
      'each device left pending ended Failed',
    );
    const lastOutcome = Math.max(...ledger.outcomeSeqs());
    assert.ok(
      lastOutcome < released.seq,
      `the last outcome (#${lastOutcome}) came before NameOwnerChanged (#${released.seq})`,
    );
    assert.doesNotMatch(stack.daemon.output(), /outcome not sent/);
  });
});
