/**
 * Load: 64 D-Bus connections send 20,000 calls in all to one vmdevd with
 * the test backend: valid requests whose labels choose their outcomes,
 * invalid ones, unknown VMs, groups of requests for the same device at
 * once, state writes and reads. Every device of an accepted request gets
 * exactly one outcome signal, the one its label chose; every invalid
 * request its error; the backend's journal shows one detach started per
 * device, a group's included. Prints the counts and the daemon's memory
 * before and after.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TestClient, type CallError } from '../harness/bus-client.js';
import { OutcomeLedger } from '../harness/outcome-ledger.js';
import { describeFigures, processFigures } from '../harness/proc-status.js';
import { startStack, type Stack } from '../harness/stack.js';

const CLIENTS = 64;
const CALLS = 20_000;
const VMS = 100;
/** Requests for one device at once come from this many connections. */
const GROUP = 4;
const vmName = (i: number) => `vm-${String(i).padStart(5, '0')}`;

/** The outcome each label asks of the test backend, and the result it is shown as. */
const KINDS: ReadonlyArray<readonly [prefix: string, result: string]> = [
  ['ok', 'detached'],
  ['ok', 'detached'],
  ['slow', 'detached'],
  ['fail-RemovalFailed', 'RemovalFailed'],
  ['fail-DeviceNotFound', 'DeviceNotFound'],
  ['fail-NotSupported', 'NotSupported'],
  ['throw', 'Failed'],
];

/** Requests that vmdevd must refuse with InvalidArgs, each for its own reason. */
const INVALID: ReadonlyArray<(n: string) => Record<string, string[]>> = [
  (n) => ({ [`bad${n}`]: ['type=floppy'] }),
  (n) => ({ [`bad${n}`]: ['type=interface', 'mac=52:54:00:zz:00:01'] }),
  () => ({}),
  (n) => ({ [`bad label ${n}`]: ['type=disk', 'target=vdb'] }),
  (n) => ({ [`a${n}`]: ['type=disk', 'target=vdq'], [`b${n}`]: ['type=disk', 'target=vdq'] }),
  (n) => ({ [`bad${n}`]: ['type=pci', 'address=0000:zz:00.0'] }),
  (n) => ({ [`bad${n}`]: ['type=disk', 'target=vdb', 'target=vdc'] }),
];

describe('load: 64 connections, 20,000 calls, the test backend', { timeout: 600_000 }, () => {
  let stack: Stack;
  const clients: TestClient[] = [];

  before(async () => {
    stack = await startStack({
      backends: [{ vms: [], generate: VMS, detachDelayMs: 1, slowMs: 20, stateDelayMs: 1 }],
      // Long enough that no device of this test times out: each outcome is the one its label chose.
      config: { detachTimeoutSeconds: 600, logLevel: 'info' },
    });
    for (let i = 0; i < CLIENTS; i++) clients.push(await TestClient.connect(stack.bus.address));
  });
  after(async () => {
    for (const c of clients) c.close();
    await stack?.stop();
  });

  it('gives every accepted device exactly one outcome, every bad request its error, and starts nothing twice', async () => {
    const ledger = await OutcomeLedger.attach(stack.client);
    const memoryBefore = processFigures(stack.daemon.pid);
    const requests: Record<string, number> = {};
    const replies: Record<string, number> = {};
    const expected = new Map<string, string>();
    /** Labels of each group of requests for one device, by the group's prefix. */
    const groups = new Map<string, number>();
    const count = (map: Record<string, number>, key: string) => (map[key] = (map[key] ?? 0) + 1);
    const replyName = (r: unknown) =>
      r === true || r === false ? String(r) : ((r as CallError).type ?? (r as Error).message);

    const releaseWhenAnswered = async (prefix: string) => {
      const left = groups.get(prefix)! - 1;
      groups.set(prefix, left);
      // Every request of the group was answered, so each joined the one detach that waits.
      if (left === 0) await stack.control('test', { cmd: 'release', prefix });
    };

    const runClient = async (c: number) => {
      const client = clients[c]!;
      // CALLS / CLIENTS each, the remainder to the first connections; the
      // members of a group (GROUP consecutive connections) make the same steps.
      const calls = Math.floor(CALLS / CLIENTS) + (c < CALLS % CLIENTS ? 1 : 0);
      for (let i = 0; i < calls; i++) {
        const n = `${c}x${i}`;
        const vm = vmName((c * 31 + i) % VMS);
        const slot = i % 20;
        if (slot < 10 || slot >= 18) {
          const devices: Record<string, string[]> = {};
          for (let d = 0; d < 1 + (i % 3); d++) {
            const [prefix, result] = KINDS[(c + i + d) % KINDS.length]!;
            const label = `${prefix}-${n}-${d}`;
            devices[label] =
              d === 1
                ? ['type=interface', `mac=52:54:${hex(c)}:${hex(i >> 8)}:${hex(i & 255)}:${hex(d)}`]
                : ['type=disk', `target=d${n}y${d}`];
            expected.set(`${vm}/${label}`, result);
          }
          count(requests, 'TestMethod valid');
          count(replies, `TestMethod valid: ${replyName(await ledger.detach(client, vm, devices))}`);
        } else if (slot < 12) {
          count(requests, 'TestMethod invalid');
          const reply = await client.testMethod(vm, INVALID[(c + i) % INVALID.length]!(n)).catch((e: unknown) => e);
          count(replies, `TestMethod invalid: ${replyName(reply)}`);
        } else if (slot < 14) {
          count(requests, 'TestMethod unknown VM');
          const reply = await ledger.detach(client, `no-such-vm-${n}`, { [`d${n}`]: ['type=disk', 'target=vdb'] });
          count(replies, `TestMethod unknown VM: ${replyName(reply)}`);
        } else if (slot < 16) {
          // The same device from GROUP connections at the same step: one detach, every label an outcome.
          const g = Math.floor(c / GROUP);
          const prefix = `wait-g${g}s${i}-`;
          const label = `${prefix}${c}`;
          if (!groups.has(prefix)) groups.set(prefix, GROUP);
          const shared = vmName((g * 7 + i) % VMS);
          expected.set(`${shared}/${label}`, 'detached');
          count(requests, 'TestMethod same device');
          const reply = await ledger.detach(client, shared, { [label]: ['type=disk', `target=g${g}s${i}`] });
          count(replies, `TestMethod same device: ${replyName(reply)}`);
          await releaseWhenAnswered(prefix);
        } else if (slot === 16) {
          count(requests, 'Set TestProperty');
          const reply = await client
            .setProperty('TestProperty', 'a{ss}', { [vm]: i % 40 < 20 ? 'paused' : 'running' })
            .then(() => 'ok', replyName);
          count(replies, `Set TestProperty: ${reply}`);
        } else {
          count(requests, 'Get TestProperty');
          const map = await client.getProperty<Record<string, string>>('TestProperty').catch(replyName);
          count(replies, `Get TestProperty: ${typeof map === 'object' ? `${Object.keys(map).length} VMs` : map}`);
        }
      }
    };
    const started = performance.now();
    // Each connection sends its share in turn: 64 calls in flight at any time.
    const perClient = Array.from({ length: CLIENTS }, (_, c) => c);
    await Promise.all(perClient.map((c) => runClient(c)));
    const callsDone = performance.now();
    await ledger.settled(120_000);
    // The barrier: the reply to a later call on the observing connection comes after every signal sent before it.
    await stack.client.getProperty('Backends');
    const memoryAfter = processFigures(stack.daemon.pid);
    const summary = ledger.summary();
    const journal = stack.journal();
    const detaches = journal.filter((e) => e['op'] === 'detach');
    const perDevice = new Map<string, number>();
    for (const e of detaches) {
      const key = `${String(e['vm'])} ${String(e['identity'])}`;
      perDevice.set(key, (perDevice.get(key) ?? 0) + 1);
    }
    const twice = [...perDevice].filter(([, n]) => n > 1);

    console.log(
      `# load: ${total(requests)} calls from ${CLIENTS} connections in ${((callsDone - started) / 1000).toFixed(1)} s`,
    );
    console.log(`# requests by kind: ${JSON.stringify(requests)}`);
    console.log(`# replies and errors by name: ${JSON.stringify(replies)}`);
    console.log(`# outcomes: ${JSON.stringify(summary.results)} for ${summary.accepted} accepted devices`);
    console.log(
      `# detaches started (journal): ${detaches.length} for ${perDevice.size} devices; state writes started: ${journal.filter((e) => e['op'] === 'setState').length}`,
    );
    console.log(`# daemon before: ${describeFigures(memoryBefore)}`);
    console.log(`# daemon after:  ${describeFigures(memoryAfter)}`);

    assert.equal(total(requests), CALLS);
    const valid = (requests['TestMethod valid'] ?? 0) + (requests['TestMethod same device'] ?? 0);
    assert.equal((replies['TestMethod valid: true'] ?? 0) + (replies['TestMethod same device: true'] ?? 0), valid);
    assert.equal(
      replies['TestMethod invalid: org.freedesktop.DBus.Error.InvalidArgs'],
      requests['TestMethod invalid'],
      'every invalid request is refused with InvalidArgs',
    );
    assert.equal(replies['TestMethod unknown VM: false'], requests['TestMethod unknown VM'], 'an unknown VM is false');
    assert.equal(replies['Set TestProperty: ok'], requests['Set TestProperty']);
    assert.deepEqual(summary.missing, [], 'no accepted device is left without an outcome');
    assert.deepEqual(summary.duplicated, [], 'no device has two outcomes');
    assert.deepEqual(summary.strays, []);
    assert.deepEqual(summary.refusedWithOutcome, []);
    assert.equal(summary.exactlyOne, expected.size);
    const wrong = [...expected].filter(([key, result]) => {
      const [vm, label] = key.split('/') as [string, string];
      return ledger.outcomesOf(vm, label)[0]?.result !== result;
    });
    assert.deepEqual(wrong.slice(0, 10), [], 'each outcome is the one the label chose');
    assert.deepEqual(twice, [], 'nothing is started twice for one device');
    assert.equal(perDevice.size, expected.size - (requests['TestMethod same device'] ?? 0) + groups.size);
  });
});

function hex(n: number): string {
  return (n & 255).toString(16).padStart(2, '0');
}

function total(map: Record<string, number>): number {
  return Object.values(map).reduce((a, b) => a + b, 0);
}
