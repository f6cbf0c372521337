/**
 * Bad input over the bus. A seeded fuzzer sends at least 10,000 calls to the
 * daemon (run as in the unit, with the node options of bin/vmdevd) and checks that it answers
 * every one with a valid reply or a D-Bus error, never crashes, never puts a
 * stack trace in an error, and never starts a detach or an attach for a
 * request it refused.
 *
 *   VMDEVD_FUZZ_SEED=N      repeat a run (the seed is printed)
 *   VMDEVD_FUZZ_CALLS=N     calls in the main phase (default 12000, at least 10000 in CI)
 *
 * What is sent: TestMethod with valid requests, with requests that have one
 * known defect (bad labels, types, tokens, values, too many devices, too
 * long tokens), with random maps and selectors, and with wrong signatures;
 * AttachDevices with valid requests and with requests that have one defect
 * of the grammar or of what an attach needs; GetDevices with known and
 * random selectors;
 * Properties Get, GetAll and Set with right and wrong signatures, names and
 * values; Introspect and Peer with and without arguments and on other
 * paths; unknown members and interfaces, calls without an interface, calls
 * that expect no reply; values of random types (dict keys of every basic
 * type, NaN, 64-bit limits, byte arrays that are not UTF-8), nesting up to
 * the bus's depth limits, and strings and arrays up to a few megabytes.
 * Strings that are not UTF-8 are sent on connections of their own: the bus
 * must drop those connections without the daemon seeing anything. Last,
 * calls keep coming while the daemon shuts down, and after it has left.
 *
 * How much memory the daemon gives back after the same calls is measured by
 * bench/fuzz-memory.ts, not here: a resident size depends on the machine's
 * load and the collector's timing, so a limit on it would fail by chance.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { startStack, type Stack } from '../harness/stack.js';
import { generate, ourCall } from './fuzz-calls.js';
import { FUZZ_STACK, FuzzDriver, IN_FLIGHT, REPLY_TIMEOUT_MS, STACK_TRACE, Tally } from './fuzz-driver.js';
import { NO_REPLY_EXPECTED, RawClient, marshallCall } from './raw-client.js';
import { Random } from './random-dbus.js';

const SEED =
  process.env['VMDEVD_FUZZ_SEED'] !== undefined ? Number(process.env['VMDEVD_FUZZ_SEED']) : randomInt(2 ** 31);
const CALLS = Number(process.env['VMDEVD_FUZZ_CALLS'] ?? 12_000);
const MIN_CALLS = 10_000;
/** Calls the shutdown phase sends before the daemon is told to stop. */
const CALLS_BEFORE_STOP = 100;
/** Calls each worker sends once the daemon has exited: the bus answers them. */
const CALLS_AFTER_EXIT = 4;

// ---- the test ----------------------------------------------------------------------

describe(`bus fuzzer (seed ${SEED})`, () => {
  let stack: Stack;
  let client: RawClient;
  const tally = new Tally();
  const r = new Random(SEED);

  before(async () => {
    console.log(`# fuzz seed ${SEED}: repeat with VMDEVD_FUZZ_SEED=${SEED}`);
    // The daemon runs with the node options of the unit (bin/vmdevd's first line).
    stack = await startStack(FUZZ_STACK);
    client = await RawClient.connect(stack.bus.address);
  });
  after(async () => {
    client?.close();
    await stack?.stop();
  });

  it(`answers ${CALLS} random calls and starts no detach or attach for a refused request`, async () => {
    assert.ok(CALLS >= MIN_CALLS || process.env['VMDEVD_FUZZ_CALLS'] !== undefined, `at least ${MIN_CALLS} calls`);
    const driver = new FuzzDriver(client, r, SEED, () => stack.bus.process.output().slice(-2000));
    await driver.sendLargest(tally);
    const started = performance.now();
    await driver.run(0, CALLS, tally);
    const seconds = (performance.now() - started) / 1000;
    console.log(`# ${CALLS} calls in ${seconds.toFixed(1)} s (${Math.round(CALLS / seconds)} calls/s)`);
    console.log(tally.summary('# calls').replace(/^/gm, '# '));

    assert.equal(stack.daemon.child.exitCode, null, `the daemon exited:\n${stack.daemon.output().slice(-3000)}`);
    // A later call's reply: every request before it has been handled, so
    // every detach the daemon started for one is in the backend's journal.
    const ping = await client.call(
      ourCall('Ping', '', [], { interface: 'org.freedesktop.DBus.Peer' }),
      REPLY_TIMEOUT_MS,
    );
    assert.equal(ping.kind, 'return');

    // Detaches and attaches the backend started, each of which must come from a request that was accepted.
    const journal = stack.journal().filter((e) => e['op'] === 'detach' || e['op'] === 'attach');
    const wrong = journal.filter(
      (e) => !(tally.labelOutcomes.get(String(e['label'])) ?? []).some((o) => o === 'return true'),
    );
    console.log(
      `# detaches and attaches started: ${journal.length} (${journal.filter((e) => e['op'] === 'attach').length} attaches), from requests that were not accepted: ${wrong.length}`,
    );

    assert.deepEqual(tally.failures.slice(0, 20), [], `${tally.failures.length} calls went wrong (seed ${SEED})`);
    assert.deepEqual(
      wrong
        .slice(0, 10)
        .map((e) => `${String(e['label'])}: ${(tally.labelOutcomes.get(String(e['label'])) ?? []).join(', ')}`),
      [],
      `detaches or attaches were started for requests that were not accepted (seed ${SEED})`,
    );
    assert.ok(journal.length > 0, 'valid requests started detaches (else the check above proves nothing)');
    assert.ok(
      journal.some((e) => e['op'] === 'attach'),
      'valid requests started attaches (else the check above proves nothing for them)',
    );
    assert.doesNotMatch(
      stack.daemon.output(),
      /uncaught exception|unhandled promise rejection|unexpected error|lost the bus connection/,
      'the daemon logged an internal error',
    );
  });

  it('lets the bus drop strings that are not UTF-8 before they reach the daemon', async () => {
    let dropped = 0;
    for (const bad of [[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x28, 0xa1]]) {
      const raw = await RawClient.connect(stack.bus.address);
      try {
        const marker = 'ZZZZZZZZ';
        const serial = raw.nextSerial();
        const data = marshallCall(
          ourCall('TestMethod', 'sa{sas}', ['vm1', [[marker, ['type=disk', 'target=vdb']]]]),
          serial,
        );
        const at = data.indexOf(marker);
        Buffer.from([...bad, ...Array<number>(marker.length - bad.length).fill(0x41)]).copy(data, at);
        const reply = await raw.await(serial, 5000, () => raw.writeRaw(data));
        assert.equal(
          reply.kind,
          'closed',
          `the bus passed a string with bytes ${bad.join(',')}: ${JSON.stringify(reply)}`,
        );
        dropped++;
      } finally {
        raw.close();
      }
    }
    console.log(`# strings that are not UTF-8: ${dropped} connections dropped by the bus`);
    assert.ok(!stack.journal().some((e) => String(e['label']).includes('AAAA')), 'nothing reached the backend');
    assert.equal(stack.daemon.child.exitCode, null);
    const reply = await client.call(ourCall('Ping', '', [], { interface: 'org.freedesktop.DBus.Peer' }), 5000);
    assert.equal(reply.kind, 'return', 'the daemon still answers');
  });

  it('answers every call while it shuts down and after it has left, and exits cleanly', async () => {
    const shutdown = new Tally();
    let exited = false;
    let callsFlow!: () => void;
    const flowing = new Promise<void>((resolve) => (callsFlow = resolve));
    let n = 0;
    // The daemon leaves the bus during this phase: calls are answered by it
    // (refused as shutting down), or by the bus (NoReply, ServiceUnknown).
    // Each worker goes on until the daemon has exited, and then a few calls
    // more, which only the bus can answer.
    const worker = async () => {
      for (let afterExit = 0; afterExit < CALLS_AFTER_EXIT;) {
        const call = generate(r, 1_000_000 + n++);
        if (((call.flags ?? 0) & NO_REPLY_EXPECTED) !== 0) continue;
        if (exited) afterExit++;
        const reply = await client.call(call, REPLY_TIMEOUT_MS);
        shutdown.calls++;
        if (shutdown.calls === CALLS_BEFORE_STOP) callsFlow();
        shutdown.byCategory.set(call.category, (shutdown.byCategory.get(call.category) ?? 0) + 1);
        if (reply.kind === 'return') shutdown.returns++;
        else if (reply.kind === 'error') {
          shutdown.errors.set(reply.name, (shutdown.errors.get(reply.name) ?? 0) + 1);
          if (STACK_TRACE.test(reply.text))
            shutdown.failures.push(`call ${call.id}: a stack trace in ${reply.name}: ${reply.text}`);
          if (reply.name.startsWith('com.github.dbus_next.'))
            shutdown.failures.push(`call ${call.id}: dbus-next answered instead of vmdevd: ${reply.name}`);
        } else shutdown.failures.push(`call ${call.id} (${call.member}): no reply (${reply.kind})`);
      }
    };
    const sent = Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    // Stop it once calls are flowing, not after some time.
    await flowing;
    const code = await stack.daemon.stop();
    exited = true;
    await sent;
    console.log(shutdown.summary('# during shutdown').replace(/^/gm, '# '));
    assert.deepEqual(shutdown.failures.slice(0, 10), []);
    assert.equal(code, 0, `exit code ${code}:\n${stack.daemon.output().slice(-3000)}`);
    // The daemon releases its name before it exits, so the calls sent after
    // its exit find no owner (one per worker may instead have been queued
    // for it, should the bus see the call before the release: NoReply).
    assert.ok(
      (shutdown.errors.get('org.freedesktop.DBus.Error.ServiceUnknown') ?? 0) >= IN_FLIGHT * (CALLS_AFTER_EXIT - 1),
      'calls went on after the daemon had left',
    );
  });
});
