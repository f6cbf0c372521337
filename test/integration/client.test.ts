/** The typed client module against the real daemon. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { VmdevClient, VmdevClientError, type DeviceOutcome } from '../../src/client/index.js';
import { deadline } from '../harness/deadline.js';
import { startStack, type Stack } from '../harness/stack.js';

describe('vmdevd/client', () => {
  let stack: Stack;
  let client: VmdevClient;
  before(async () => {
    stack = await startStack();
    client = await VmdevClient.connect({ bus: stack.bus.address });
  });
  after(async () => {
    client?.close();
    await stack?.stop();
  });

  it('reads states, backends and VM details', async () => {
    assert.deepEqual(await client.states(), { vm1: 'running', vm2: 'paused', vm3: 'shutoff' });
    assert.deepEqual(await client.backends(), { test: 'connected' });
    assert.deepEqual(
      (await client.vms()).map((v) => [v.key, v.backend, v.type]),
      [
        ['vm1', 'test', 'ivi'],
        ['vm2', 'test', 'cluster'],
        ['vm3', 'test', 'cluster'],
      ],
    );
  });

  it('detach resolves with every outcome: success and failure', async () => {
    const seen: DeviceOutcome[] = [];
    const r = await client.detach(
      'vm1',
      { ok: ['type=disk', 'target=vdb'], 'fail-DeviceNotFound': ['type=disk', 'target=vdc'] },
      { onOutcome: (o) => seen.push(o) },
    );
    assert.equal(r.accepted, true);
    assert.deepEqual(r.pending, []);
    assert.deepEqual(
      [...r.outcomes].sort((a, b) => a.device.localeCompare(b.device)),
      [
        {
          vm: 'vm1',
          device: 'fail-DeviceNotFound',
          ok: false,
          error: 'org.example.dbustest.Error.DeviceNotFound',
          message: 'the test backend failed fail-DeviceNotFound with DeviceNotFound',
        },
        { vm: 'vm1', device: 'ok', ok: true },
      ],
    );
    assert.equal(seen.length, 2);
  });

  it('detach resolves with the daemon Timeout outcome', async () => {
    const r = await client.detach('vm1', { hang: ['type=disk', 'target=vdd'] });
    assert.equal(r.outcomes[0]!.ok, false);
    assert.equal((r.outcomes[0] as { error: string }).error, 'org.example.dbustest.Error.Timeout');
  });

  it('detach never misses an outcome that comes with the reply', async () => {
    // Many fast devices: their outcomes arrive right behind the reply.
    const devices = Object.fromEntries(
      Array.from({ length: 100 }, (_, i) => [`fast${i}`, ['type=alias', `name=ua-${i}`]]),
    );
    // The deadline only ends the test should an outcome be missed: they all come at once.
    const r = await client.detach('vm2', devices, { timeoutMs: 60_000 });
    assert.equal(r.outcomes.length, 100);
    assert.deepEqual(r.pending, []);
  });

  it('detach of an unknown VM is not accepted; errors carry their D-Bus name', async () => {
    assert.deepEqual(await client.detach('ghost', { d: ['type=disk', 'target=vdb'] }), {
      accepted: false,
      outcomes: [],
      pending: [],
    });
    await assert.rejects(
      client.detach('cluster', { d: ['type=disk', 'target=vdb'] }),
      (e: unknown) => e instanceof VmdevClientError && e.errorName === 'org.example.dbustest.Error.AmbiguousSelector',
    );
  });

  it('setStates applies, and onStates follows', async () => {
    let running!: () => void;
    const shown = new Promise<void>((resolve) => (running = resolve));
    const sub = await client.onStates((s) => {
      if (s['vm3'] === 'running') running();
    });
    await client.setStates({ vm3: 'running' });
    await deadline(shown, 30_000, 'TestSignal with vm3=running');
    await sub.dispose();
    await assert.rejects(
      client.setStates({ nope: 'running' }),
      (e: unknown) => e instanceof VmdevClientError && e.errorName === 'org.freedesktop.DBus.Error.InvalidArgs',
    );
  });
});

describe('vmdevd/client with a detach that stays pending', () => {
  // The daemon ends no device for an hour, and the test backend confirms a
  // "wait" device only when told: nothing but the client's own timeoutMs
  // can end the wait below.
  let stack: Stack;
  let client: VmdevClient;
  before(async () => {
    stack = await startStack({ config: { detachTimeoutSeconds: 3600 } });
    client = await VmdevClient.connect({ bus: stack.bus.address });
  });
  after(async () => {
    client?.close();
    await stack?.stop();
  });

  it('detach stops waiting at timeoutMs and lists what is pending', async () => {
    const r = await client.detach('vm1', { 'wait-1': ['type=disk', 'target=vde'] }, { timeoutMs: 200 });
    assert.equal(r.accepted, true);
    assert.deepEqual(r.pending, ['wait-1']);
    assert.deepEqual(r.outcomes, []);
  });
});
