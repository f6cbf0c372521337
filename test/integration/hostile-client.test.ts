/**
 * A hostile local client: for every member, bodies the bus accepts but
 * vmdevd must refuse ('h' with no fd, a variant holding 'h', deep nesting,
 * wrong signatures, NO_REPLY_EXPECTED), signals with 'h' to vmdevd's unique
 * name, and big-endian messages written by GDBus, each followed by a
 * Peer.Ping. vmdevd answers every call that expects an answer, keeps its
 * name and its process, and a detach pending across the whole run still
 * gets exactly one outcome.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type { SignalLog } from '../harness/bus-client.js';
import { run } from '../harness/process.js';
import { startStack, type Stack } from '../harness/stack.js';

const HOSTILE_CLIENT = fileURLToPath(new URL('../../../test/clients/hostile_client.py', import.meta.url));
const ROUNDS = 3;

interface Counts {
  sent: number;
  no_reply_sent: number;
  errors: Record<string, number>;
  returns: number;
  pings: number;
  pings_answered: number;
  signals_sent: number;
  big_endian_sent: number;
  big_endian_answered: number;
  big_endian_get_testproperty: Record<string, string> | null;
}

describe('a hostile client', () => {
  let stack: Stack;
  let log: SignalLog;

  before(async () => {
    stack = await startStack({ config: { detachTimeoutSeconds: 600 } });
    log = await stack.client.subscribeAll();
  });
  after(async () => {
    await stack?.stop();
  });

  it('cannot stop vmdevd or cost a pending detach its outcome', async () => {
    const owner = await stack.client.nameOwner();
    assert.ok(owner);
    const pid = stack.daemon.pid;
    // A detach that stays pending until the test releases it, after the run.
    assert.equal(await stack.client.testMethod('vm1', { 'wait-d1': ['type=disk', 'target=vdb'] }), true);

    const r = await run('/usr/bin/python3', [HOSTILE_CLIENT, stack.bus.address, owner, String(ROUNDS)]);
    assert.equal(r.code, 0, r.stderr);
    const counts = JSON.parse(r.stdout) as Counts;
    console.log(`# hostile client: ${JSON.stringify(counts)}`);

    // Every ping answered, every call that expects an answer answered.
    assert.equal(counts.pings_answered, counts.pings);
    const answered = counts.returns + Object.values(counts.errors).reduce((a, b) => a + b, 0);
    const expectingReplies = counts.sent - counts.no_reply_sent + counts.big_endian_sent;
    assert.equal(answered, expectingReplies, 'a call went unanswered');
    assert.equal(counts.big_endian_answered, counts.big_endian_sent);
    // 'h' and the other unreadable bodies are InvalidArgs; wrong signatures too.
    assert.ok((counts.errors['org.freedesktop.DBus.Error.InvalidArgs'] ?? 0) > 0);
    assert.ok((counts.errors['BE org.freedesktop.DBus.Error.InvalidArgs'] ?? 0) >= ROUNDS * 3);
    // A good big-endian call is answered as any other.
    assert.deepEqual(counts.big_endian_get_testproperty, await stack.client.getProperty('TestProperty'));
    for (const name of Object.keys(counts.errors)) {
      assert.match(name, /^(BE )?org\.(freedesktop\.DBus|example\.dbustest)\.Error\.[A-Za-z]+$/);
    }

    assert.equal(await stack.client.nameOwner(), owner, 'vmdevd still owns its name, on the same connection');
    assert.equal(stack.daemon.child.exitCode, null, 'vmdevd is still running');
    assert.equal(stack.daemon.pid, pid);

    await stack.control('test', { cmd: 'release', label: 'wait-d1' });
    await log.waitFor((s) => s.member === 'DeviceDetached' && s.body[1] === 'wait-d1');
    // A later call's reply: every signal sent before it has arrived.
    await stack.client.getProperty('TestProperty');
    const outcomes = log.signals.filter(
      (s) => (s.member === 'DeviceDetached' || s.member === 'DeviceDetachFailed') && s.body[1] === 'wait-d1',
    );
    assert.equal(outcomes.length, 1);
    assert.ok(stack.daemon.output().includes('refused a message that could not be read'));
  });

  it('a backend message with a NUL, control characters and a lone surrogate still reaches the client, cleaned', async () => {
    assert.equal(
      await stack.client.testMethod('vm2', {
        'nul-d': ['type=disk', 'target=vdc'],
        'ok-d': ['type=disk', 'target=vdd'],
      }),
      true,
    );
    const failed = await log.waitFor((s) => s.member === 'DeviceDetachFailed' && s.body[1] === 'nul-d');
    assert.deepEqual(failed.body.slice(0, 3), ['vm2', 'nul-d', 'org.example.dbustest.Error.RemovalFailed']);
    assert.equal(failed.body[3], 'the guest said \ufffdno\ufffd[0m to nul-d \ufffd');
    await log.waitFor((s) => s.member === 'DeviceDetached' && s.body[1] === 'ok-d');
  });
});
