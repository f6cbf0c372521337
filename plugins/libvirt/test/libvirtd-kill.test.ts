/**
 * libvirtd killed (SIGKILL, by its PID) during a burst of detaches from 64
 * D-Bus connections, and started again: every device of every accepted
 * request gets exactly one outcome signal, whether its detach was done
 * before the kill, pending across it (confirmed against the domain XML
 * after the reconnect, or `BackendUnavailable` at its timeout), or asked
 * for after; a disk whose call died with libvirtd is detached after the
 * reconnect, not left attached; requests made while libvirtd is gone are
 * refused with `BackendUnavailable` and start nothing; and detaching works
 * again.
 * Prints the counts and the daemon's memory.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { TestClient } from 'vmdevd/testing/bus-client';
import { startLibvirtd, type Libvirtd } from 'vmdevd/testing/libvirtd';
import { OutcomeLedger } from 'vmdevd/testing/outcome-ledger';
import { describeFigures, processFigures } from 'vmdevd/testing/proc-status';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { createTestVm, type TestVm } from 'vmdevd/testing/test-vms';
import { Connection } from '../src/binding.js';

const CLIENTS = 64;
const CALLS_PER_CLIENT = 8;
/** Kill libvirtd once this many calls of the burst were answered. */
const KILL_AFTER = 128;
const TIMEOUT_S = 15;
const E = 'org.example.dbustest.Error.';

describe('libvirtd killed during a burst of detaches', { timeout: 600_000 }, () => {
  let libvirtd: Libvirtd;
  let conn: Connection | undefined;
  let stack: Stack;
  const vms: TestVm[] = [];
  const clients: TestClient[] = [];
  let passed = false;

  before(async () => {
    libvirtd = await startLibvirtd();
    conn = await Connection.open(libvirtd.uri);
    for (let i = 0; i < 4; i++) vms.push(await createTestVm(conn));
    stack = await startStack({
      backends: [],
      extraBackends: [
        { id: 'local', plugin: 'libvirt', uri: libvirtd.uri, reconnectInitialMs: 200, reconnectMaxMs: 1000 },
      ],
      config: { detachTimeoutSeconds: TIMEOUT_S, logLevel: 'info' },
    });
    for (let i = 0; i < CLIENTS; i++) clients.push(await TestClient.connect(stack.bus.address));
  });

  after(async () => {
    // A failure this rare is read from the logs of the run that had it.
    if (!passed) printLogs(stack?.daemon.output(), libvirtd?.logFile);
    for (const c of clients) c.close();
    await stack?.stop();
    // The first connection died with libvirtd: remove the VMs through a new one.
    await conn?.close().catch(() => undefined);
    conn = await Connection.open(libvirtd.uri).catch(() => undefined);
    for (const vm of vms) {
      await conn?.destroy(vm.uuid).catch(() => undefined);
      await conn?.undefine(vm.uuid).catch(() => undefined);
      await vm.remove().catch(() => undefined);
    }
    await conn?.close();
    await libvirtd?.stop();
  });

  it('gives every accepted device exactly one outcome, and detaches again after the restart', async (t) => {
    if (!libvirtd.owned) {
      t.skip('libvirtd was not started by the test, so it is not killed');
      return;
    }
    const [spare, ...busy] = vms as [TestVm, ...TestVm[]];
    const ledger = await OutcomeLedger.attach(stack.client);
    const memoryBefore = processFigures(stack.daemon.pid);
    const replies: Record<string, number> = {};
    let answered = 0;
    let restarted: Promise<void> | undefined;
    const oldPid = libvirtd.pid;

    const runClient = async (c: number) => {
      const client = clients[c]!;
      for (let i = 0; i < CALLS_PER_CLIENT; i++) {
        const vm = busy[(c + i) % busy.length]!;
        const n = `${c}x${i}`;
        const devices: Record<string, string[]> =
          (c + i) % 4 === 0
            ? { [`nic-${n}`]: ['type=interface', `mac=${vm.devices.nic.mac}`] }
            : (c + i) % 4 === 1
              ? { [`ghost-${n}`]: ['type=disk', 'target=sdz'] }
              : { [`scsi-${n}`]: ['type=disk', 'target=sda'], [`usb-${n}`]: ['type=disk', 'target=sdb'] };
        const reply = await ledger.detach(client, vm.name, devices);
        const name = typeof reply === 'boolean' ? String(reply) : reply.type;
        replies[name] = (replies[name] ?? 0) + 1;
        if (++answered === KILL_AFTER) restarted = libvirtd.restart({ signal: 'SIGKILL' });
      }
    };
    await Promise.all(clients.map((_, c) => runClient(c)));
    await restarted;
    assert.notEqual(libvirtd.pid, oldPid, 'libvirtd was killed and started again');
    // The deadline guards against a hang: a detach pending across the loss ends at the latest at its timeout.
    await ledger.settled((2 * TIMEOUT_S + 30) * 1000);
    await stack.client.getProperty('Backends');
    const summary = ledger.summary();

    // And it works again: the spare VM was left alone until now.
    const backendsDeadline = Date.now() + 60_000;
    while ((await stack.client.getProperty<Record<string, string>>('Backends'))['local'] !== 'connected') {
      assert.ok(Date.now() < backendsDeadline, 'the backend reconnects');
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(await ledger.detach(stack.client, spare.name, { afterwards: ['type=disk', 'target=sda'] }), true);
    await ledger.settled(60_000);
    const memoryAfter = processFigures(stack.daemon.pid);

    console.log(
      `# libvirtd killed (pid ${oldPid}, now ${libvirtd.pid}) after ${KILL_AFTER} of ${answered} calls from ${CLIENTS} connections`,
    );
    console.log(`# replies and errors by name: ${JSON.stringify(replies)}`);
    console.log(`# outcomes: ${JSON.stringify(summary.results)} for ${summary.accepted} accepted devices`);
    for (const prefix of ['scsi-', 'usb-', 'nic-', 'ghost-']) {
      const byResult: Record<string, number> = {};
      for (const d of ledger.devicesWithPrefix(prefix)) {
        for (const o of d.outcomes) {
          // The message without the names and numbers that differ per device.
          const why = o.message.replace(/"[^"]*"/g, '…').replace(/\d+/g, 'N');
          const key = why === '' ? o.result : `${o.result}: ${why}`;
          byResult[key] = (byResult[key] ?? 0) + 1;
        }
      }
      console.log(`#   ${prefix.slice(0, -1)}: ${JSON.stringify(byResult)}`);
    }
    console.log(`# daemon before: ${describeFigures(memoryBefore)}`);
    console.log(`# daemon after:  ${describeFigures(memoryAfter)}`);

    assert.equal(answered, CLIENTS * CALLS_PER_CLIENT);
    assert.deepEqual(
      Object.keys(replies).filter((r) => r !== 'true' && r !== `${E}BackendUnavailable`),
      [],
      'accepted, or refused as unavailable while libvirtd was gone',
    );
    assert.deepEqual(summary.missing, []);
    assert.deepEqual(summary.duplicated, []);
    assert.deepEqual(summary.strays, []);
    assert.deepEqual(summary.refusedWithOutcome, [], 'a refused request starts nothing');
    assert.equal(summary.exactlyOne, summary.accepted);
    // QEMU removes a SCSI or USB disk on its own: one reported "still attached" had its call lost with libvirtd.
    const stuckDisks = [...ledger.devicesWithPrefix('scsi-'), ...ledger.devicesWithPrefix('usb-')].filter((d) =>
      d.outcomes.some((o) => /still attached/.test(o.message)),
    );
    assert.deepEqual(
      stuckDisks.map((d) => `${d.key}: ${d.outcomes[0]!.message}`),
      [],
      'no disk is left attached',
    );
    assert.deepEqual(
      ledger.outcomesOf(spare.name, 'afterwards').map((o) => o.result),
      ['detached'],
    );
    passed = true;
  });
});

/** The daemon's output, and the end of libvirtd's log when the harness started it, as test diagnostics. */
function printLogs(daemon: string | undefined, libvirtdLog: string | undefined): void {
  const print = (title: string, text: string) =>
    console.log(
      `# ${title}:\n${text
        .split('\n')
        .map((l) => `#   ${l}`)
        .join('\n')}`,
    );
  if (daemon !== undefined) print("vmdevd's output", daemon);
  if (libvirtdLog === undefined) return;
  try {
    print("the end of libvirtd's log", readFileSync(libvirtdLog, 'utf8').split('\n').slice(-300).join('\n'));
  } catch (err) {
    console.log(`# libvirtd's log ${libvirtdLog}: ${(err as Error).message}`);
  }
}
