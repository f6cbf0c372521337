/**
 * Nothing is accepted once shutdown begins, also for a call that was
 * already waiting for its caller's credentials when SIGTERM arrived: the
 * bus's answer to GetConnectionCredentials is held back (a proxy between
 * vmdevd and the bus) until vmdevd has begun to shut down.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { TestClient, type CallError } from '../harness/bus-client.js';
import { startBusProxy, type BusProxy } from '../harness/bus-proxy.js';
import { startPrivateBus, type PrivateBus } from '../harness/dbus-daemon.js';
import { DEFAULT_VMS, TEST_BACKEND } from '../harness/stack.js';
import { makeTempDir, type TempDir } from '../harness/temp-dir.js';
import { startVmdevd, type VmdevdProcess } from '../harness/vmdevd-process.js';

describe('a call in flight when shutdown begins', () => {
  let bus: PrivateBus;
  let proxy: BusProxy;
  let daemon: VmdevdProcess;
  let dir: TempDir;
  let client: TestClient;

  beforeEach(async () => {
    dir = makeTempDir('vmdevd-race-');
    bus = await startPrivateBus();
    proxy = await startBusProxy(bus.socket);
    daemon = await startVmdevd({
      address: proxy.address,
      config: {
        logLevel: 'debug',
        backends: [{ id: 'test', plugin: TEST_BACKEND, vms: DEFAULT_VMS, journal: dir.file('journal.jsonl') }],
      },
    });
    // A client of its own: its credentials are not known to vmdevd yet.
    client = await TestClient.connect(bus.address);
  });
  afterEach(async () => {
    client?.close();
    await daemon?.stop();
    await proxy?.close();
    await bus?.stop();
    dir?.remove();
  });

  const journal = () =>
    existsSync(dir.file('journal.jsonl'))
      ? readFileSync(dir.file('journal.jsonl'), 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Record<string, unknown>)
      : [];

  /** Holds the credential lookup, sends SIGTERM, lets the lookup finish once shutdown began; returns the call's error. */
  async function raceShutdown(call: () => Promise<unknown>): Promise<CallError> {
    const held = proxy.hold((h) => h.member === 'GetConnectionCredentials');
    const result = call().then(
      (value) => ({ value }),
      (error: CallError) => ({ error }),
    );
    const lookup = await held;
    daemon.child.kill('SIGTERM');
    await daemon.waitForOutput(/shutting down/);
    lookup.release();
    const r = await result;
    assert.ok('error' in r, `the call was answered ${JSON.stringify((r as { value: unknown }).value)}`);
    assert.equal(await daemon.exited(), 0);
    return r.error;
  }

  it('TestMethod: refused as shutting down, and no detach is started', async () => {
    const log = await client.subscribeAll();
    const err = await raceShutdown(() => client.testMethod('vm1', { d1: ['type=disk', 'target=vdb'] }));
    assert.equal(err.type, 'org.example.dbustest.Error.Failed');
    assert.match(err.text, /shutting down and accepts no new requests/);
    assert.deepEqual(
      journal().filter((e) => e['op'] === 'detach'),
      [],
    );
    assert.deepEqual(
      log.signals.filter((s) => s.member.startsWith('DeviceDetach')),
      [],
    );
  });

  it('AttachDevices: refused as shutting down, and no attach is started', async () => {
    const log = await client.subscribeAll();
    const err = await raceShutdown(() =>
      client.call({
        member: 'AttachDevices',
        signature: 'sa{sas}',
        body: ['vm1', { a1: ['type=disk', 'target=vdb', 'source=/images/a1.img', 'bus=virtio'] }],
      }),
    );
    assert.equal(err.type, 'org.example.dbustest.Error.Failed');
    assert.match(err.text, /shutting down and accepts no new requests/);
    assert.deepEqual(
      journal().filter((e) => e['op'] === 'attach'),
      [],
    );
    assert.deepEqual(
      log.signals.filter((s) => s.member.startsWith('DeviceAttach')),
      [],
    );
  });

  it('a write of TestProperty: refused as shutting down, and nothing is applied', async () => {
    const err = await raceShutdown(() => client.setProperty('TestProperty', 'a{ss}', { vm2: 'running' }));
    assert.equal(err.type, 'org.example.dbustest.Error.Failed');
    assert.match(err.text, /shutting down and accepts no new requests/);
    assert.deepEqual(
      journal().filter((e) => e['op'] === 'setState'),
      [],
    );
  });
});
