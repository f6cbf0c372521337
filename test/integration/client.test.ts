/** The typed client module against the real daemon. */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { VmdevClient, VmdevClientError, type DeviceOutcome } from '../../src/client/index.js';
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

  it('detach stops waiting at timeoutMs and lists what is pending', async () => {
    const r = await client.detach('vm1', { slow: ['type=disk', 'target=vde'] }, { timeoutMs: 200 });
    assert.deepEqual(r.pending, ['slow']);
    assert.deepEqual(r.outcomes, []);
  });

  it('detach never misses an outcome that comes with the reply', async () => {
    // Many fast devices: their outcomes arrive right behind the reply.
    const devices = Object.fromEntries(
      Array.from({ length: 100 }, (_, i) => [`fast${i}`, ['type=alias', `name=ua-${i}`]]),
    );
    const r = await client.detach('vm2', devices, { timeoutMs: 5000 });
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
    const states: Array<Record<string, string>> = [];
    const sub = await client.onStates((s) => states.push(s));
    await client.setStates({ vm3: 'running' });
    for (let i = 0; i < 50 && !states.some((s) => s['vm3'] === 'running'); i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.ok(states.some((s) => s['vm3'] === 'running'));
    await sub.dispose();
    await assert.rejects(
      client.setStates({ nope: 'running' }),
      (e: unknown) => e instanceof VmdevClientError && e.errorName === 'org.freedesktop.DBus.Error.InvalidArgs',
    );
  });
});
