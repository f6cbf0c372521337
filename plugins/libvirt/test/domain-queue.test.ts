/**
 * One domain's line of detaches, against a double of the libvirt backend
 * (our own component; the real one is tested against libvirtd elsewhere):
 * a detach that waits behind another one in flight ends at its abort; only
 * a detach that waits (in line, or for its confirmation) has an abort
 * listener on its request's signal, for as long as it waits; and a detach
 * that never waits never makes its signal.
 */
import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { describe, it } from 'node:test';
import type { DeviceOutcome, DeviceRequest, DeviceSpec } from 'vmdevd/plugin-api';
import { DomainXml } from '../src/domain-devices.js';
import { DomainQueue } from '../src/domain-queue.js';
import type { LibvirtBackend, RemovalResult } from '../src/libvirt-backend.js';

const UUID = '1c6b9d2e-3f4a-4b5c-8d6e-7f8091a2b3c4';

const XML = `<domain type='kvm' id='1'>
  <name>vm1</name>
  <devices>
    <controller type='scsi' index='0' model='virtio-scsi'><alias name='scsi0'/></controller>
    <disk type='file' device='disk'>
      <source file='/images/a.img'/><target dev='sda' bus='scsi'/>
      <alias name='scsi0-0-0-0'/><address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/images/b.img'/><target dev='sdb' bus='scsi'/>
      <alias name='scsi0-0-0-1'/><address type='drive' controller='0' bus='0' target='0' unit='1'/>
    </disk>
  </devices>
</domain>`;

/** What the libvirt binding throws for a call on a connection that died. */
const LOST = new Error('Cannot write data: Broken pipe');

/**
 * What the queue asks of the backend, with each detach call held until the
 * test lets it return or fail. `dead` makes the connection fail its calls
 * while the backend still counts it as up (its close callback has not come
 * yet); `reconnect` brings up the next one.
 */
function fakeBackend() {
  const calls: Array<{ target: string; finish: () => void; fail: (err: Error) => void }> = [];
  const watchers = new Map<string, (r: RemovalResult, stray: boolean) => void>();
  const waiters = new Set<() => void>();
  const state = {
    xml: XML,
    /** The XML the backend keeps and has at hand (none: every lookup asks domainXml). */
    kept: undefined as DomainXml | undefined,
    /** Each domainXml asked of the backend: the XML kept, or fresh from libvirt. */
    asked: [] as Array<'kept' | 'fresh'>,
    dead: false,
    number: 1,
    stopped: false,
    waits: 0,
  };
  const conn = {
    detachDevice: (_uuid: string, xml: string) =>
      new Promise<void>((resolve, reject) => {
        if (state.dead) return reject(LOST);
        calls.push({ target: /dev='(\w+)'/.exec(xml)![1]!, finish: resolve, fail: reject });
      }),
  };
  const backend = {
    uri: 'qemu:///system',
    ctx: { log: { debug() {}, info() {}, warn() {}, error() {} } },
    domain: () => ({ uuid: UUID, name: 'vm1', active: true, persistent: false }),
    domainXml: (_uuid: string, _inactive = false, fresh = false) => {
      state.asked.push(fresh ? 'fresh' : 'kept');
      return state.dead ? Promise.reject(LOST) : Promise.resolve(new DomainXml(state.xml));
    },
    domainXmlNow: () => state.kept,
    isConnected: () => !state.stopped,
    get connectionNumber() {
      return state.number;
    },
    onConnectedAfter: (number: number, fn: () => void) => {
      // A queue that waits again at once, in a loop of microtasks, would hang the test instead of failing it.
      if (++state.waits > 1000) throw new Error('the queue waits for a connection over and over');
      if (state.stopped || state.number !== number) {
        fn();
        return () => {};
      }
      waiters.add(fn);
      return () => waiters.delete(fn);
    },
    connection: () => conn,
    guestConnection: () => Promise.resolve(conn),
    isLost: (err: unknown) => Promise.resolve(err === LOST),
    watchRemoval: (_uuid: string, alias: string, cb: (r: RemovalResult, stray: boolean) => void) => {
      watchers.set(alias, cb);
      return () => watchers.get(alias) === cb && watchers.delete(alias);
    },
    expectStrayEvent: () => {},
  };
  const reconnect = () => {
    state.dead = false;
    state.number++;
    for (const fn of [...waiters]) fn();
    waiters.clear();
  };
  /** As the backend stops: its queues first, then every wait for a connection. */
  const stop = (queue: DomainQueue) => {
    state.stopped = true;
    queue.stop();
    for (const fn of [...waiters]) fn();
    waiters.clear();
  };
  return { backend: backend as unknown as LibvirtBackend, calls, watchers, state, reconnect, stop, waiters };
}

function disk(target: string): DeviceSpec {
  return {
    label: target,
    type: 'disk',
    params: { target },
    persistent: false,
    xml: `<disk type='file' device='disk'><target dev='${target}'/></disk>`,
    identity: `disk:${target}`,
  };
}

/**
 * A request as the core makes it: `controller` aborts it, and `signalReads`
 * counts the queue's reads of `signal` (the core makes the signal at the first).
 */
function request(target: string): DeviceRequest & { controller: AbortController; signalReads: number } {
  const controller = new AbortController();
  return {
    controller,
    signalReads: 0,
    vm: { name: 'vm1', uuid: UUID, type: 'x', state: 'running' },
    device: disk(target),
    timeoutMs: 30_000,
    get signal() {
      this.signalReads++;
      return controller.signal;
    },
    get aborted() {
      return controller.signal.aborted;
    },
    hold: () => {},
    issued: () => {},
  };
}

/** Lets the queue's microtasks and promise chains run. */
const settle = () => new Promise<void>((r) => setImmediate(r));

/** A queue given a detach of sda, then one of sdb, which waits behind it. */
function twoInLine() {
  const fake = fakeBackend();
  const queue = new DomainQueue(fake.backend, UUID);
  const first = request('sda');
  const second = request('sdb');
  const outcomes: Record<string, DeviceOutcome> = {};
  void queue.submit('detach', first).then((o) => (outcomes['sda'] = o));
  void queue.submit('detach', second).then((o) => (outcomes['sdb'] = o));
  return { ...fake, queue, first, second, outcomes };
}

/** A queue with one detach of sda whose call returned: it waits for DEVICE_REMOVED. */
async function waitingForItsEvent() {
  const fake = fakeBackend();
  const queue = new DomainQueue(fake.backend, UUID);
  const only = request('sda');
  const result: { outcome?: DeviceOutcome } = {};
  void queue.submit('detach', only).then((o) => (result.outcome = o));
  await settle();
  fake.calls[0]!.finish();
  await settle();
  assert.equal(result.outcome, undefined, 'waiting for DEVICE_REMOVED');
  return { fake, queue, only, result };
}

describe('DomainQueue', () => {
  it('looks a device up in the XML at hand without a wait, and asks libvirt once when that XML lacks it', async () => {
    /** A detach of `target` with `kept` at hand and `xml` in libvirt: what the queue asked, and the calls issued once `wait` resolves. */
    const lookup = async (target: string, kept: string | undefined, xml: string, wait: () => Promise<void>) => {
      const fake = fakeBackend();
      fake.state.kept = kept === undefined ? undefined : new DomainXml(kept);
      fake.state.xml = xml;
      void new DomainQueue(fake.backend, UUID).submit('detach', request(target));
      await wait();
      return { asked: fake.state.asked, issued: fake.calls.map((c) => c.target) };
    };
    // One microtask classifies the batch: with the XML at hand the call is issued in it.
    const oneMicrotask = () => new Promise<void>((resolve) => queueMicrotask(resolve));
    assert.deepEqual(await lookup('sda', XML, XML, oneMicrotask), { asked: [], issued: ['sda'] });

    // Kept from before sdc was added (its event lost): asked fresh once, then found.
    const added = XML.replace(
      '</devices>',
      "<disk type='file' device='disk'><target dev='sdc' bus='scsi'/><alias name='scsi0-0-0-2'/></disk></devices>",
    );
    assert.deepEqual(await lookup('sdc', XML, added, settle), { asked: ['fresh'], issued: ['sdc'] });

    // Not at hand (its fetch in flight): the XML kept is awaited, not fetched again.
    assert.deepEqual(await lookup('sdb', undefined, XML, settle), { asked: ['kept'], issued: ['sdb'] });
  });

  it('ends a detach waiting in line at its abort, and listens to no signal but a waiting one', async () => {
    const { queue, calls, watchers, first, second, outcomes } = twoInLine();
    await settle();

    assert.deepEqual(
      calls.map((c) => c.target),
      ['sda'],
      'one call in flight per domain',
    );
    assert.equal(getEventListeners(first.controller.signal, 'abort').length, 0, 'the detach in flight has no listener');
    assert.equal(first.signalReads, 0, 'nor did it make its signal');
    assert.equal(getEventListeners(second.controller.signal, 'abort').length, 1, 'the waiting detach has one');

    second.controller.abort('timeout');
    await settle();
    assert.deepEqual(outcomes['sdb'], {
      ok: false,
      error: 'Timeout',
      message: 'the detach was still waiting for another operation of the VM',
    });
    assert.equal(getEventListeners(second.controller.signal, 'abort').length, 0);
    assert.deepEqual(
      calls.map((c) => c.target),
      ['sda'],
      'the aborted detach is never issued',
    );

    // The first one ends with its event; the line is free again.
    watchers.get('scsi0-0-0-0')!('removed', false);
    calls[0]!.finish();
    await settle();
    assert.deepEqual(outcomes['sda'], { ok: true });

    const third = request('sdb');
    void queue.submit('detach', third).then((o) => (outcomes['third'] = o));
    await settle();
    assert.deepEqual(
      calls.map((c) => c.target),
      ['sda', 'sdb'],
    );
    assert.equal(getEventListeners(third.controller.signal, 'abort').length, 0, 'issued at once: no listener');
    assert.equal(third.signalReads, 0, 'and no signal made');
    watchers.get('scsi0-0-0-1')!('removed', false);
    calls[1]!.finish();
    await settle();
    assert.deepEqual(outcomes['third'], { ok: true });
  });

  it('listens to the signal of a detach waiting for its event only while it waits', async () => {
    // libvirt's call returns before its event: the device is still in the XML.
    const { fake, only, result } = await waitingForItsEvent();
    assert.equal(getEventListeners(only.controller.signal, 'abort').length, 1, 'waiting for the event');

    fake.watchers.get('scsi0-0-0-0')!('removed', false);
    await settle();
    assert.deepEqual(result.outcome, { ok: true });
    assert.equal(getEventListeners(only.controller.signal, 'abort').length, 0, 'the wait took its listener along');
  });

  it('ends a waiting detach whose request was aborted before it got in line', async () => {
    const { calls, watchers, second, outcomes } = twoInLine();
    // Aborted while both are being looked up in the XML (before any listener could be added).
    second.controller.abort('shutdown');
    await settle();
    assert.deepEqual(outcomes['sdb'], { ok: false, error: 'Failed', message: 'vmdevd is stopping' });
    assert.deepEqual(
      calls.map((c) => c.target),
      ['sda'],
    );
    watchers.get('scsi0-0-0-0')!('removed', false);
    calls[0]!.finish();
    await settle();
    assert.deepEqual(outcomes['sda'], { ok: true });
  });
  it('issues a detach again once the connection after the one its call died on is up, before that death was known', async () => {
    const fake = fakeBackend();
    const queue = new DomainQueue(fake.backend, UUID);
    const only = request('sda');
    let outcome: DeviceOutcome | undefined;
    void queue.submit('detach', only).then((o) => (outcome = o));
    await settle();
    // libvirtd is killed mid-call; the backend has not had the close callback yet.
    fake.state.dead = true;
    fake.calls[0]!.fail(LOST);
    await settle();
    assert.equal(outcome, undefined, 'whether it was removed cannot be known yet');
    assert.equal(fake.calls.length, 1);
    assert.equal(fake.waiters.size, 1, 'it waits for the next connection');

    fake.reconnect();
    await settle();
    assert.deepEqual(
      fake.calls.map((c) => c.target),
      ['sda', 'sda'],
      'the disk still there, its detach is issued again',
    );
    fake.watchers.get('scsi0-0-0-0')!('removed', false);
    fake.calls[1]!.finish();
    await settle();
    assert.deepEqual(outcome, { ok: true });
    assert.equal(fake.waiters.size, 0, 'no wait is left behind');
  });

  it('confirms from the XML of the next connection a removal whose event was lost with the one before', async () => {
    const { fake, result } = await waitingForItsEvent();
    // The removal happens, but libvirtd dies before it sends the event.
    fake.state.dead = true;
    fake.state.xml = XML.replace(/<disk(?:(?!<\/disk>)[\s\S])*dev='sda'[\s\S]*?<\/disk>/, '');
    await settle();
    assert.equal(result.outcome, undefined);

    fake.reconnect();
    await settle();
    assert.deepEqual(result.outcome, { ok: true });
    assert.equal(fake.calls.length, 1, 'nothing issued again');
    assert.equal(fake.waiters.size, 0);
  });

  it('ends a detach waiting for its confirmation when the backend stops, and does not wait on', async () => {
    const { fake, queue, only, result } = await waitingForItsEvent();
    // The backend is removed from the config: its request is not aborted by the core.
    fake.stop(queue);
    await settle();
    assert.deepEqual(result.outcome, {
      ok: false,
      error: 'Failed',
      message: 'the libvirt backend is stopping; whether the disk sda of VM "vm1" was removed is unknown',
    });
    assert.equal(getEventListeners(only.controller.signal, 'abort').length, 0, 'nothing waits on');
    assert.equal(fake.calls.length, 1);
  });
});
