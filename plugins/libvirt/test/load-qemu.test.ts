/**
 * Load on real VMs: 64 D-Bus connections send 640 calls to vmdevd with the
 * libvirt backend on qemu:///system, against three small QEMU VMs and a
 * fourth whose PCI NIC no guest ever releases. Detaches of the same disk
 * from many connections at once, disks the VMs do not have, invalid
 * requests, unknown VMs and reads; then state writes. Every device of an
 * accepted request gets exactly one outcome signal, and the NIC does not
 * hold up the other VMs: their outcomes and their new states arrive while
 * the NIC is still pending (its outcome comes at its timeout, after them).
 * Prints the counts and the daemon's memory.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { TestClient, type CallError, type StateFollower } from 'vmdevd/testing/bus-client';
import { startLibvirtd, type Libvirtd } from 'vmdevd/testing/libvirtd';
import { OutcomeLedger } from 'vmdevd/testing/outcome-ledger';
import { describeFigures, processFigures } from 'vmdevd/testing/proc-status';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { createTestVm, type TestVm } from 'vmdevd/testing/test-vms';
import { Connection, type DomainEvent } from '../src/binding.js';

const CLIENTS = 64;
const CALLS_PER_CLIENT = 10;
/** The NIC's timeout: it ends the test's one pending device, after everything else. */
const TIMEOUT_S = 30;

describe('load on real VMs through libvirt', { timeout: 600_000 }, () => {
  let libvirtd: Libvirtd;
  let conn: Connection;
  let stack: Stack;
  const events: DomainEvent[] = [];
  const vms: TestVm[] = [];
  const clients: TestClient[] = [];
  let state: StateFollower;

  before(async () => {
    libvirtd = await startLibvirtd();
    conn = await Connection.open(libvirtd.uri, { onEvent: (e) => events.push(e) });
    for (let i = 0; i < 4; i++) vms.push(await createTestVm(conn));
    stack = await startStack({
      backends: [],
      extraBackends: [{ id: 'local', plugin: 'libvirt', uri: libvirtd.uri }],
      config: { detachTimeoutSeconds: TIMEOUT_S, logLevel: 'info' },
    });
    state = await stack.client.followState();
    // From here on TestSignal follows every change of this map.
    state.last = await stack.client.getProperty<Record<string, string>>('TestProperty');
    for (let i = 0; i < CLIENTS; i++) clients.push(await TestClient.connect(stack.bus.address));
  });

  after(async () => {
    for (const c of clients) c.close();
    await stack?.stop();
    for (const vm of vms) await vm.remove().catch(() => undefined);
    if (conn) await conn.close();
    await libvirtd?.stop();
  });

  it('gives every accepted device one outcome; the NIC no guest releases holds up no other VM', async () => {
    const [nicVm, ...busy] = vms as [TestVm, ...TestVm[]];
    await state.until((m) => vms.every((vm) => m[vm.name] === 'running'));
    const ledger = await OutcomeLedger.attach(stack.client);
    const memoryBefore = processFigures(stack.daemon.pid);
    const requests: Record<string, number> = {};
    const replies: Record<string, number> = {};
    const count = (map: Record<string, number>, key: string) => (map[key] = (map[key] ?? 0) + 1);
    const nic = ['type=interface', `mac=${nicVm.devices.nic.mac}`];

    assert.equal(await ledger.detach(stack.client, nicVm.name, { nic }), true);
    const started = performance.now();
    const runClient = async (c: number) => {
      const client = clients[c]!;
      for (let i = 0; i < CALLS_PER_CLIENT; i++) {
        const vm = busy[(c + i) % busy.length]!;
        const n = `${c}x${i}`;
        let kind: string;
        let reply: string | boolean | CallError;
        switch ((c + i) % 8) {
          case 0:
          case 1:
            // The same two disks from many connections at once: one detach each, the rest join it or find it gone.
            kind = 'TestMethod disk';
            reply = await ledger.detach(client, vm.name, {
              [`scsi-${n}`]: ['type=disk', 'target=sda'],
              [`usb-${n}`]: ['type=disk', 'target=sdb'],
            });
            break;
          case 2:
            kind = 'TestMethod missing disk';
            reply = await ledger.detach(client, vm.name, { [`ghost-${n}`]: ['type=disk', 'target=sdz'] });
            break;
          case 3:
            // More requests for the NIC: they join its pending detach.
            kind = 'TestMethod same NIC';
            reply = await ledger.detach(client, nicVm.name, { [`nic-${n}`]: nic });
            break;
          case 4:
            kind = 'TestMethod invalid';
            reply = await client
              .testMethod(vm.name, { [`bad${n}`]: ['type=disk', 'target=sda', 'bus=floppy'] })
              .catch((e: unknown) => e as CallError);
            break;
          case 5:
            kind = 'TestMethod unknown VM';
            reply = await ledger.detach(client, `vmdevd-test-missing-${n}`, { d: ['type=disk', 'target=sda'] });
            break;
          case 6:
            kind = 'Get TestProperty';
            reply = await client.getProperty('TestProperty').then(
              () => 'ok',
              (e: unknown) => e as CallError,
            );
            break;
          default:
            kind = 'Get Vms';
            reply = await client.getProperty('Vms').then(
              () => 'ok',
              (e: unknown) => e as CallError,
            );
        }
        count(requests, kind);
        count(replies, `${kind}: ${typeof reply === 'object' ? reply.type : String(reply)}`);
      }
    };
    await Promise.all(clients.map((_, c) => runClient(c)));
    // Every device but the NIC's has its outcome; then the other VMs' states change through writes.
    await ledger.settledExcept([nicVm.name], 120_000);
    for (const want of ['paused', 'running'] as const) {
      const shown = state.until((m) => busy.every((vm) => m[vm.name] === want));
      await stack.client.setProperty('TestProperty', 'a{ss}', Object.fromEntries(busy.map((vm) => [vm.name, want])));
      await shown;
    }
    const othersDone = performance.now();
    // The barrier: this reply comes after every signal sent before it. The NIC is still pending.
    await stack.client.getProperty('Backends');
    const nicPendingAfterOthers = ledger.outcomesOf(nicVm.name, 'nic').length === 0;
    assert.match(await conn.getXml(nicVm.uuid), new RegExp(nicVm.devices.nic.mac), 'the NIC is still attached');

    await ledger.settled((TIMEOUT_S + 30) * 1000);
    await stack.client.getProperty('Backends');
    const memoryAfter = processFigures(stack.daemon.pid);
    const summary = ledger.summary();
    const ours = new Set(vms.map((vm) => vm.uuid));
    const removed = events.filter((e) => e.kind === 'device-removed' && ours.has(e.uuid));
    const joined = stack.daemon.output().match(/joined a pending detach/g)?.length ?? 0;

    console.log(
      `# libvirt load: ${total(requests)} calls from ${CLIENTS} connections on ${busy.length} VMs and one NIC VM; the others were done ${((othersDone - started) / 1000).toFixed(1)} s after the NIC was asked for (its timeout: ${TIMEOUT_S} s)`,
    );
    console.log(`# requests by kind: ${JSON.stringify(requests)}`);
    console.log(`# replies and errors by name: ${JSON.stringify(replies)}`);
    console.log(`# outcomes: ${JSON.stringify(summary.results)} for ${summary.accepted} accepted devices`);
    console.log(
      `# detaches started: ${summary.accepted - joined} (${joined} requests joined a pending one); DEVICE_REMOVED events: ${removed.map((e) => `${e.name.slice(-8)}/${e.kind === 'device-removed' ? e.alias : ''}`).join(' ')}`,
    );
    console.log(`# daemon before: ${describeFigures(memoryBefore)}`);
    console.log(`# daemon after:  ${describeFigures(memoryAfter)}`);

    assert.ok(nicPendingAfterOthers, 'the other VMs had their outcomes and states while the NIC was pending');
    assert.deepEqual(summary.missing, []);
    assert.deepEqual(summary.duplicated, []);
    assert.deepEqual(summary.strays, []);
    assert.deepEqual(summary.refusedWithOutcome, []);
    assert.equal(summary.exactlyOne, summary.accepted);
    assert.equal(replies['TestMethod invalid: org.freedesktop.DBus.Error.InvalidArgs'], requests['TestMethod invalid']);
    assert.equal(replies['TestMethod unknown VM: false'], requests['TestMethod unknown VM']);
    for (const label of ['nic', ...ledger.devicesWithPrefix('nic-').map((d) => d.key.split('/')[1]!)]) {
      assert.deepEqual(
        ledger.outcomesOf(nicVm.name, label).map((o) => o.result),
        ['Timeout'],
        label,
      );
    }
    for (const vm of busy) {
      for (const [prefix, alias] of [
        ['scsi-', vm.devices.scsiDisk.alias],
        ['usb-', vm.devices.usbDisk.alias],
      ] as const) {
        const results = ledger
          .devicesWithPrefix(prefix)
          .filter((d) => d.key.startsWith(`${vm.name}/`))
          .map((d) => d.outcomes[0]!.result);
        assert.ok(results.includes('detached'), `${vm.name} ${alias}: detached`);
        assert.deepEqual(
          results.filter((r) => r !== 'detached' && r !== 'DeviceNotFound'),
          [],
          `${vm.name} ${alias}: detached, or found gone`,
        );
        assert.equal(
          removed.filter((e) => e.uuid === vm.uuid && e.kind === 'device-removed' && e.alias === alias).length,
          1,
          `${vm.name} ${alias}: removed once`,
        );
      }
    }
    assert.deepEqual(
      ledger
        .devicesWithPrefix('ghost-')
        .flatMap((d) => d.outcomes.map((o) => o.result))
        .filter((r) => r !== 'DeviceNotFound'),
      [],
    );
  });
});

function total(map: Record<string, number>): number {
  return Object.values(map).reduce((a, b) => a + b, 0);
}
