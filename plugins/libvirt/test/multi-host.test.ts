/**
 * One vmdevd serving three hosts through libvirt's remote transport: the
 * local libvirtd (`qemu:///system`), a private libvirtd reached with
 * `qemu+tls://127.0.0.1:PORT/system` (a CA and certificates the test
 * makes), and another reached with `qemu+ssh://` through an sshd on a
 * loopback port with a key the test makes. Both private libvirtds run in
 * mount namespaces of their own, with small QEMU VMs.
 *
 * The VMs of all three show in TestProperty under the key rule (a name
 * that two hosts share is keyed `<backend>/<name>`); a detach on a remote
 * VM is confirmed by that VM's DEVICE_REMOVED; one remote libvirtd killed
 * disconnects only its backend, and once it is back, the backend
 * reconnects and republishes.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Signal, SignalLog } from 'vmdevd/testing/bus-client';
import { startLibvirtd, type Libvirtd } from 'vmdevd/testing/libvirtd';
import { freeLoopbackPort, startPrivateLibvirtd, type PrivateLibvirtd } from 'vmdevd/testing/private-libvirtd';
import { startPrivateSshd, type PrivateSshd } from 'vmdevd/testing/private-sshd';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { makeTestPki, type TestPki } from 'vmdevd/testing/test-pki';
import { createTestVm, type TestVm } from 'vmdevd/testing/test-vms';
import { Connection, constants as C } from '../src/binding.js';
import { EventRecorder } from './event-recorder.js';
import { backendsIn } from './support.js';

const isOutcome = (s: Signal) => s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed';

interface Host {
  readonly id: string;
  readonly uri: string;
  readonly conn: Connection;
  readonly events: EventRecorder;
}

describe('one vmdevd, three hosts: local, qemu+tls, qemu+ssh', { timeout: 600_000 }, () => {
  let libvirtd: Libvirtd | undefined;
  let pki: TestPki | undefined;
  let tlsDaemon: PrivateLibvirtd | undefined;
  let sshDaemon: PrivateLibvirtd | undefined;
  let sshd: PrivateSshd | undefined;
  const hosts = new Map<string, Host>();
  const vms = new Map<string, TestVm>();
  let stack: Stack | undefined;
  let signals: SignalLog;
  const tag = randomBytes(3).toString('hex');
  // The local VM's name is its own; the two remote VMs share one.
  const localName = `vmdevd-mh-${tag}-local`;
  const sharedName = `vmdevd-mh-${tag}-shared`;

  const open = async (id: string, uri: string) => {
    const events = new EventRecorder();
    hosts.set(id, { id, uri, events, conn: await Connection.open(uri, { onEvent: events.onEvent }) });
  };

  before(async () => {
    libvirtd = await startLibvirtd();
    pki = await makeTestPki();
    const tlsPort = await freeLoopbackPort();
    tlsDaemon = await startPrivateLibvirtd({ tls: { port: tlsPort, pki } });
    sshDaemon = await startPrivateLibvirtd();
    sshd = await startPrivateSshd(sshDaemon, await freeLoopbackPort());
    await open('local', libvirtd.uri);
    await open('tls', `qemu+tls://127.0.0.1:${tlsPort}/system?pkipath=${pki.clientDir}`);
    await open('ssh', sshd.uri);
    vms.set('local', await createTestVm(hosts.get('local')!.conn, { name: localName, type: `mh-${tag}` }));
    vms.set('tls', await createTestVm(hosts.get('tls')!.conn, { name: sharedName, type: `mh-${tag}` }));
    vms.set('ssh', await createTestVm(hosts.get('ssh')!.conn, { name: sharedName, type: `mh-${tag}` }));
    const fast = { reconnectInitialMs: 200, reconnectMaxMs: 1000, keepaliveIntervalSeconds: 1, keepaliveCount: 3 };
    stack = await startStack({
      backends: [],
      extraBackends: [...hosts.values()].map((h) => ({ id: h.id, plugin: 'libvirt', uri: h.uri, ...fast })),
      config: { detachTimeoutSeconds: 20 },
    });
    signals = await stack.client.subscribeAll();
  });

  after(async () => {
    await stack?.stop();
    for (const [id, vm] of vms) {
      // Through a connection of this test (the one opened first may have died with its daemon).
      const conn = await Connection.open(hosts.get(id)!.uri).catch(() => undefined);
      if (conn !== undefined) {
        await conn.destroy(vm.uuid).catch(() => undefined);
        await conn.undefine(vm.uuid).catch(() => undefined);
        await conn.close().catch(() => undefined);
      }
      await vm.remove().catch(() => undefined);
    }
    for (const host of hosts.values()) await host.conn.close().catch(() => undefined);
    await sshd?.stop();
    await sshDaemon?.stop();
    await tlsDaemon?.stop();
    pki?.remove();
    await libvirtd?.stop();
  });

  it("shows every host's VMs in TestProperty, a shared name keyed by backend", async () => {
    assert.deepEqual(await stack!.client.getProperty('Backends'), {
      local: 'connected',
      tls: 'connected',
      ssh: 'connected',
    });
    const states = await stack!.client.getProperty<Record<string, string>>('TestProperty');
    assert.equal(states[localName], 'running');
    assert.equal(states[`tls/${sharedName}`], 'running');
    assert.equal(states[`ssh/${sharedName}`], 'running');
    assert.equal(states[sharedName], undefined, 'a name two backends share is never a key on its own');
    // The types come after the names and states. GetDevices waits until no
    // connected backend is still reading types (as every call that resolves
    // a selector does), so its reply is the barrier after which every VM's
    // type is in Vms.
    const [devices] = (await stack!.client.call({ member: 'GetDevices', signature: 's', body: [localName] })) as [
      Record<string, string[]>,
    ];
    assert.ok(Object.keys(devices).length > 0, `the local VM's devices: ${JSON.stringify(devices)}`);
    const details = await stack!.client.getProperty<Record<string, Record<string, string>>>('Vms');
    for (const id of ['tls', 'ssh']) {
      assert.deepEqual(details[`${id}/${sharedName}`], {
        name: sharedName,
        state: 'running',
        backend: id,
        uuid: vms.get(id)!.uuid,
        type: `mh-${tag}`,
      });
    }
    assert.equal(details[localName]!['backend'], 'local');
  });

  it('detaches a disk of each remote VM, each confirmed by its own DEVICE_REMOVED', async () => {
    for (const [id, target, label] of [
      ['tls', 'sda', 'scsi'],
      ['ssh', 'sdb', 'usb'],
    ] as const) {
      const vm = vms.get(id)!;
      const alias = target === 'sda' ? vm.devices.scsiDisk.alias : vm.devices.usbDisk.alias;
      const key = `${id}/${sharedName}`;
      assert.equal(await stack!.client.testMethod(key, { [label]: ['type=disk', `target=${target}`] }), true);
      const outcome = await signals.waitFor((s) => isOutcome(s) && s.body[0] === key && s.body[1] === label, 60_000);
      assert.equal(outcome.member, 'DeviceDetached', JSON.stringify(outcome.body));
      // The host's own event, seen by this test's connection to it.
      const host = hosts.get(id)!;
      await host.events.waitFor(
        `DEVICE_REMOVED ${alias} on ${id}`,
        (e) => e.kind === 'device-removed' && e.uuid === vm.uuid && e.alias === alias,
        30_000,
      );
      assert.ok(!(await host.conn.getXml(vm.uuid)).includes(`dev='${target}'`), `${target} is gone on ${id}`);
    }
  });

  it('a remote libvirtd killed disconnects only its backend; back, it is reconnected and republished', async () => {
    const key = `tls/${sharedName}`;
    const from = signals.signals.length;
    const since = (s: Signal) => signals.signals.indexOf(s) >= from;
    await tlsDaemon!.kill('SIGKILL');
    const down = await signals.waitFor(
      (s) => since(s) && /^disconnected: lost the connection to qemu\+tls:/.test(backendsIn(s)?.['tls'] ?? ''),
      30_000,
      'Backends with tls disconnected',
    );
    assert.equal(backendsIn(down)!['local'], 'connected');
    assert.equal(backendsIn(down)!['ssh'], 'connected');
    // The lost host's VM keeps its last known state.
    assert.equal((await stack!.client.getProperty<Record<string, string>>('TestProperty'))[key], 'running');
    // The other hosts work meanwhile: a state write on the ssh host, a detach on the local one.
    await stack!.client.setProperty('TestProperty', 'a{ss}', { [`ssh/${sharedName}`]: 'paused' });
    await signals.waitFor(
      (s) =>
        since(s) &&
        s.member === 'TestSignal' &&
        (s.body[0] as Record<string, string>)[`ssh/${sharedName}`] === 'paused',
      30_000,
      'the ssh VM paused',
    );
    assert.equal(await stack!.client.testMethod(localName, { local: ['type=disk', 'target=sda'] }), true);
    const local = await signals.waitFor(
      (s) => isOutcome(s) && s.body[0] === localName && s.body[1] === 'local',
      60_000,
    );
    assert.equal(local.member, 'DeviceDetached', JSON.stringify(local.body));
    assert.match((await stack!.client.getProperty<Record<string, string>>('Backends'))['tls']!, /^disconnected: /);

    const back = signals.signals.length;
    await tlsDaemon!.restart();
    await signals.waitFor(
      (s) => signals.signals.indexOf(s) >= back && backendsIn(s)?.['tls'] === 'connected',
      60_000,
      'Backends with tls connected again',
    );
    const republished = await signals.waitFor(
      (s) => signals.signals.indexOf(s) >= back && s.member === 'TestSignal',
      30_000,
      'the map republished',
    );
    const map = republished.body[0] as Record<string, string>;
    assert.equal(map[key], 'running');
    assert.equal(map[`ssh/${sharedName}`], 'paused');
    assert.deepEqual(await stack!.client.getProperty('Backends'), {
      local: 'connected',
      tls: 'connected',
      ssh: 'connected',
    });
    // And the reconnected backend works as before: its VM paused through it.
    await stack!.client.setProperty('TestProperty', 'a{ss}', { [key]: 'paused' });
    await signals.waitFor(
      (s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)[key] === 'paused',
      30_000,
      'the tls VM paused',
    );
    const check = await Connection.open(hosts.get('tls')!.uri);
    try {
      assert.equal((await check.getDomain(vms.get('tls')!.uuid)).state, C.VIR_DOMAIN_PAUSED);
    } finally {
      await check.close();
    }
  });
});
