/**
 * The libvirt backend in the real daemon on libvirt's test driver: the
 * `test` domain in TestProperty, state changes through the binding seen in
 * TestSignal, and a libvirt refusal mapped to its error name.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { SignalLog } from 'vmdevd/testing/bus-client';
import { startStack, type Stack } from 'vmdevd/testing/stack';

describe('libvirt backend on test:///default', () => {
  let stack: Stack;
  let signals: SignalLog;
  before(async () => {
    stack = await startStack({
      backends: [],
      extraBackends: [{ id: 'test-driver', plugin: 'libvirt', uri: 'test:///default' }],
    });
    signals = await stack.client.subscribeAll();
  });
  after(async () => {
    await stack?.stop();
  });

  it('publishes the test domain', async () => {
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { test: 'running' });
    assert.deepEqual(await stack.client.getProperty('Backends'), { 'test-driver': 'connected' });
    const details = (await stack.client.getProperty<Record<string, Record<string, string>>>('Vms'))['test']!;
    assert.equal(details['backend'], 'test-driver');
    assert.match(details['uuid']!, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  });

  it("asks the kernel for a 1,000 µs slice for the daemon's main thread, and says what it got", () => {
    const log = stack.daemon.output();
    const sched = readFileSync(`/proc/${stack.daemon.pid}/sched`, 'utf8');
    const slice = /^se\.slice\s*:\s*(\d+)/m.exec(sched);
    const shortened =
      /main thread: shorter time slice, so that an event gets a CPU sooner sliceUs=(\d+) wasUs=(\d+)/.exec(log);
    // A slice inherited from the test runner (or its caller) may already be as short.
    const already = /main thread: its time slice was already as short as asked sliceUs=(\d+) askedUs=1000/.exec(log);
    assert.doesNotMatch(log, /could not shorten/);
    if (shortened === null && already === null) {
      // A kernel before 6.12 keeps no slice per thread.
      assert.match(log, /this kernel takes no time-slice request \(Linux 6\.12 and later do\): default scheduling/);
      return;
    }
    const granted = Number((shortened ?? already)![1]);
    if (shortened !== null) assert.equal(granted, Math.min(1000, Number(shortened[2])));
    assert.ok(granted <= 1000, `a slice of ${granted} µs`);
    assert.equal(Number(slice?.[1]) / 1000, granted);
  });

  it('suspends and resumes it through the binding, and TestSignal shows both', async () => {
    await stack.client.setProperty('TestProperty', 'a{ss}', { test: 'paused' });
    await signals.waitFor(
      (s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)['test'] === 'paused',
    );
    await stack.client.setProperty('TestProperty', 'a{ss}', { test: 'running' });
    await signals.waitFor(
      (s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)['test'] === 'running',
      5000,
    );
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { test: 'running' });
  });

  it('powers it off and starts it again', async () => {
    await stack.client.setProperty('TestProperty', 'a{ss}', { test: 'shutoff' });
    await signals.waitFor(
      (s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)['test'] === 'shutoff',
    );
    await stack.client.setProperty('TestProperty', 'a{ss}', { test: 'running' });
    await signals.waitFor(
      (s) =>
        s.member === 'TestSignal' &&
        signals.signals.indexOf(s) > 0 &&
        (s.body[0] as Record<string, string>)['test'] === 'running' &&
        signals.named('TestSignal').some((x) => (x.body[0] as Record<string, string>)['test'] === 'shutoff'),
    );
  });

  it('maps what the test driver cannot do (detach) to NotSupported, and a missing device to DeviceNotFound', async () => {
    assert.equal(
      await stack.client.testMethod('test', { vda: ['type=disk', 'target=vda'], ghost: ['type=disk', 'target=vdz'] }),
      true,
    );
    const vda = await signals.waitFor((s) => s.member === 'DeviceDetachFailed' && s.body[1] === 'vda');
    assert.equal(vda.body[2], 'org.example.dbustest.Error.NotSupported');
    assert.match(vda.body[3] as string, /detaching the disk vda from VM "test": .*not supported/i);
    const ghost = await signals.waitFor((s) => s.member === 'DeviceDetachFailed' && s.body[1] === 'ghost');
    assert.equal(ghost.body[2], 'org.example.dbustest.Error.DeviceNotFound');
  });

  it('answers DeviceNotFound for a disk target in the form of a QEMU id, which no libvirt disk has', async () => {
    assert.equal(
      await stack.client.testMethod('test', {
        qemuId: ['type=disk', 'target=drive-scsi0-0-0-0'],
        qemuDev: ['type=disk', 'target=usbstor0'],
      }),
      true,
    );
    for (const label of ['qemuId', 'qemuDev']) {
      const s = await signals.waitFor((x) => x.member === 'DeviceDetachFailed' && x.body[1] === label);
      assert.equal(s.body[2], 'org.example.dbustest.Error.DeviceNotFound');
      assert.match(s.body[3] as string, /VM "test" has no disk (drive-scsi0-0-0-0|usbstor0)/);
    }
  });
});

/**
 * On a file of its own, the test driver gives every connection a world of
 * its own (two connections do not see each other's changes): the backend
 * then makes its calls on the connection its events come on, or it would
 * never see an event of what it did.
 */
describe('libvirt backend on the test driver with a node file', () => {
  let stack: Stack;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vmdevd-test-node-'));
    const file = join(dir, 'node.xml');
    writeFileSync(
      file,
      `<node><domain type='test'><name>filevm</name><memory>65536</memory><os><type>hvm</type></os></domain></node>`,
    );
    stack = await startStack({
      backends: [],
      extraBackends: [{ id: 'file', plugin: 'libvirt', uri: `test://${file}` }],
    });
  });
  after(async () => {
    await stack?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it('sees the state it sets', async () => {
    const signals = await stack.client.subscribeAll();
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { filevm: 'running' });
    await stack.client.setProperty('TestProperty', 'a{ss}', { filevm: 'paused' });
    await signals.waitFor(
      (s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)['filevm'] === 'paused',
    );
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { filevm: 'paused' });
  });
});
