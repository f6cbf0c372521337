/**
 * Bad input over the bus. A seeded fuzzer sends at least 10,000 calls to the
 * daemon (run as in the unit, with the node options of bin/vmdevd) and checks that it answers
 * every one with a valid reply or a D-Bus error, never crashes, never puts a
 * stack trace in an error, never starts a detach or an attach for a request
 * it refused, and gives back the memory afterwards.
 *
 *   VMDEVD_FUZZ_SEED=N      repeat a run (the seed is printed)
 *   VMDEVD_FUZZ_CALLS=N     calls in the main phase (default 12000, at least 10000 in CI)
 *   VMDEVD_FUZZ_SECONDS=S   stop the main phase after S seconds (default 90)
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
 * calls keep coming while the daemon shuts down.
 *
 * Memory: /proc/PID/status VmRSS once the daemon has settled after a
 * warm-up of the same calls (the largest messages included), sampled every
 * 500 ms until it changes by less than 1% over 12 s, and again after the
 * fuzzing until it is within 10% of that (or 40 s have passed). The
 * daemon runs one full collection when it goes idle after a burst
 * (src/daemon/memory-reclaimer.ts), and V8's memory reducer then shrinks
 * the heap in rounds some seconds apart; the quiet window is longer than
 * that delay, else the baseline would be taken before it and vary. The
 * warm-up (8,000 calls) makes the baseline the daemon's working size, with
 * the code and caches of the kinds of calls it then fuzzes.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startStack, type Stack } from '../harness/stack.js';
import { HUGE_KINDS, MAX_HUGE_BYTES, generate, hugeCall, ourCall, type FuzzCall } from './fuzz-calls.js';
import { NO_REPLY_EXPECTED, RawClient, marshallCall, type Reply } from './raw-client.js';
import { Random } from './random-dbus.js';

const SEED =
  process.env['VMDEVD_FUZZ_SEED'] !== undefined ? Number(process.env['VMDEVD_FUZZ_SEED']) : randomInt(2 ** 31);
const CALLS = Number(process.env['VMDEVD_FUZZ_CALLS'] ?? 12_000);
const SECONDS = Number(process.env['VMDEVD_FUZZ_SECONDS'] ?? 90);
const MIN_CALLS = 10_000;
const IN_FLIGHT = 16;
const REPLY_TIMEOUT_MS = 15_000;
const WARMUP_CALLS = Number(process.env['VMDEVD_FUZZ_WARMUP'] ?? 8000);
const SHUTDOWN_CALLS = 600;
const RSS_TOLERANCE = 1.1;

// ---- bookkeeping -------------------------------------------------------------------

function showBody(body: unknown[]): string {
  const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

/** What a stack trace in an error text looks like. */
const STACK_TRACE = /\n\s*at |\bat .*\.(js|ts):\d+|\.js:\d+:\d+/;

class Tally {
  calls = 0;
  returns = 0;
  errors = new Map<string, number>();
  noReplyExpected = 0;
  readonly failures: string[] = [];
  readonly byCategory = new Map<string, number>();
  /** label → what the calls that used it got back. */
  readonly labelOutcomes = new Map<string, string[]>();

  record(call: FuzzCall, reply: Reply): void {
    this.calls++;
    this.byCategory.set(call.category, (this.byCategory.get(call.category) ?? 0) + 1);
    const what = `call ${call.id} (${call.category}: ${call.interface ?? '(no interface)'}.${call.member}(${call.signature}) on ${call.path}, ${showBody(call.body)})`;
    let outcome: string;
    if (reply.kind === 'return') {
      this.returns++;
      outcome =
        call.member === 'TestMethod' || call.member === 'AttachDevices' ? `return ${String(reply.body[0])}` : 'return';
      if (call.expect === 'error')
        this.failures.push(
          `${what}: expected an error${call.errors ? ` (${call.errors.join(' or ')})` : ''}, got a reply`,
        );
      if (call.accepted !== undefined && reply.body[0] !== call.accepted)
        this.failures.push(`${what}: expected ${String(call.accepted)}, got ${String(reply.body[0])}`);
    } else if (reply.kind === 'error') {
      this.errors.set(reply.name, (this.errors.get(reply.name) ?? 0) + 1);
      outcome = `error ${reply.name}`;
      if (call.expect === 'return') this.failures.push(`${what}: expected a reply, got ${reply.name}: ${reply.text}`);
      else if (call.errors !== undefined && !call.errors.includes(reply.name))
        this.failures.push(`${what}: expected ${call.errors.join(' or ')}, got ${reply.name}: ${reply.text}`);
      if (STACK_TRACE.test(reply.text))
        this.failures.push(`${what}: a stack trace in ${reply.name}: ${reply.text.slice(0, 500)}`);
      if (reply.name.startsWith('com.github.dbus_next.'))
        this.failures.push(`${what}: dbus-next answered instead of vmdevd: ${reply.name}: ${reply.text.slice(0, 300)}`);
      if (reply.name === 'org.example.dbustest.Error.Failed')
        this.failures.push(`${what}: Failed, the daemon did not expect this: ${reply.text.slice(0, 300)}`);
    } else {
      outcome = reply.kind;
      this.failures.push(`${what}: no reply (${reply.kind})`);
    }
    for (const label of call.labels ?? []) {
      const list = this.labelOutcomes.get(label) ?? [];
      list.push(call.invalid ? `${outcome} (invalid request)` : outcome);
      this.labelOutcomes.set(label, list);
    }
  }

  recordNoReply(call: FuzzCall): void {
    this.noReplyExpected++;
    this.byCategory.set(call.category, (this.byCategory.get(call.category) ?? 0) + 1);
    for (const label of call.labels ?? []) {
      const list = this.labelOutcomes.get(label) ?? [];
      list.push(call.invalid ? 'no reply expected (invalid request)' : 'no reply expected');
      this.labelOutcomes.set(label, list);
    }
  }

  summary(title: string): string {
    const errors = [...this.errors].sort((a, b) => b[1] - a[1]).map(([n, c]) => `    ${n}: ${c}`);
    const categories = [...this.byCategory].sort().map(([n, c]) => `    ${n}: ${c}`);
    return [
      `${title}: ${this.calls} calls answered (${this.returns} replies, ${this.calls - this.returns} errors), ${this.noReplyExpected} sent with NO_REPLY_EXPECTED, ${this.failures.length} failures`,
      '  errors by name:',
      ...errors,
      '  calls by kind:',
      ...categories,
    ].join('\n');
  }
}

/** Runs `count` generated calls with `IN_FLIGHT` outstanding, until `deadline`. */
async function fuzz(
  client: RawClient,
  r: Random,
  firstId: number,
  count: number,
  tally: Tally,
  deadline = Infinity,
  diagnose: () => string = () => '',
): Promise<number> {
  let next = 0;
  let stop = false;
  const worker = async () => {
    while (!stop && next < count && performance.now() < deadline) {
      const call = generate(r, firstId + next++);
      if (((call.flags ?? 0) & NO_REPLY_EXPECTED) !== 0) {
        client.send(call);
        tally.recordNoReply(call);
        continue;
      }
      let reply: Reply;
      try {
        reply = await client.call(call, REPLY_TIMEOUT_MS);
      } catch (err) {
        stop = true;
        throw new Error(
          `call ${call.id} (${call.category}, ${call.member}(${call.signature})) could not be sent (seed ${SEED}): ${(err as Error).message}`,
          { cause: err },
        );
      }
      if (reply.kind === 'closed') {
        stop = true;
        throw new Error(
          `the bus closed the fuzzer's connection after call ${call.id} (${call.category}, ${call.member}(${call.signature})): ${client.closed}. Seed ${SEED}.\n${diagnose()}`,
        );
      }
      tally.record(call, reply);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  return next;
}

/** VmRSS split into anonymous memory (heaps) and file pages (code, libraries), for the log. */
function rssParts(pid: number): string {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return `anon ${(kib('RssAnon') / 1024).toFixed(1)} MiB, file ${(kib('RssFile') / 1024).toFixed(1)} MiB`;
}

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

/**
 * Samples RSS every 500 ms until it is at or below `target`, or has stayed
 * within 1% for `quietMs`, or `maxMs` have passed. V8 shrinks its heap only
 * some seconds after allocation stops, so a short quiet window would catch
 * it before that.
 */
async function settledRss(
  pid: number,
  options: { maxMs: number; quietMs: number; target?: number },
): Promise<{ kib: number; waitedMs: number }> {
  const start = performance.now();
  const samples: number[] = [];
  const window = Math.ceil(options.quietMs / 500) + 1;
  for (;;) {
    samples.push(rssKiB(pid));
    const last = samples.slice(-window);
    if (options.target !== undefined && samples.at(-1)! <= options.target) break;
    // With a target, only reaching it (or the time limit) ends the wait:
    // V8's memory reducer shrinks the heap in rounds some seconds apart, so
    // a quiet stretch does not mean it is done.
    if (options.target === undefined && last.length === window && Math.max(...last) <= Math.min(...last) * 1.01) break;
    if (performance.now() - start >= options.maxMs) break;
    await new Promise((res) => setTimeout(res, 500));
  }
  return { kib: samples.at(-1)!, waitedMs: Math.round(performance.now() - start) };
}

// ---- the test ----------------------------------------------------------------------

describe(`bus fuzzer (seed ${SEED})`, () => {
  let stack: Stack;
  let client: RawClient;
  const tally = new Tally();
  const r = new Random(SEED);
  const mb = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;

  before(async () => {
    console.log(`# fuzz seed ${SEED}: repeat with VMDEVD_FUZZ_SEED=${SEED}`);
    // The daemon runs with the node options of the unit (bin/vmdevd's first line).
    stack = await startStack({ config: { logLevel: 'info', detachTimeoutSeconds: 1 } });
    client = await RawClient.connect(stack.bus.address);
  });
  after(async () => {
    client?.close();
    await stack?.stop();
  });

  it(`answers ${CALLS} random calls, starts no detach for a refused request and gives its memory back`, async () => {
    assert.ok(CALLS >= MIN_CALLS || process.env['VMDEVD_FUZZ_CALLS'] !== undefined, `at least ${MIN_CALLS} calls`);
    const pid = stack.daemon.pid;

    // The warm-up makes the daemon meet the largest messages once, so the
    // baseline is its working size, not its size before its first big call.
    const warm = new Tally();
    for (const [i, kind] of HUGE_KINDS.entries()) {
      const call = hugeCall(r, -1 - i, kind, MAX_HUGE_BYTES);
      warm.record(call, await client.call(call, REPLY_TIMEOUT_MS));
    }
    await fuzz(client, r, 0, WARMUP_CALLS, warm, Infinity, () => stack.bus.process.output().slice(-2000));
    const baseline = await settledRss(pid, { quietMs: 12_000, maxMs: 30_000 });
    console.log(
      `# RSS after a warm-up of ${WARMUP_CALLS} calls: ${mb(baseline.kib)} (${rssParts(pid)}; settled in ${baseline.waitedMs} ms)`,
    );

    const started = performance.now();
    const done = await fuzz(client, r, WARMUP_CALLS, CALLS, tally, started + SECONDS * 1000, () =>
      stack.bus.process.output().slice(-2000),
    );
    const seconds = (performance.now() - started) / 1000;
    console.log(`# ${done} calls in ${seconds.toFixed(1)} s (${Math.round(done / seconds)} calls/s)`);
    console.log(tally.summary('# main phase').replace(/^/gm, '# '));

    assert.equal(stack.daemon.child.exitCode, null, `the daemon exited:\n${stack.daemon.output().slice(-3000)}`);
    const peak = rssKiB(pid);
    const after = await settledRss(pid, {
      quietMs: 12_000,
      maxMs: 40_000,
      target: Math.floor(baseline.kib * RSS_TOLERANCE),
    });
    console.log(
      `# RSS: ${mb(baseline.kib)} before, ${mb(peak)} right after, ${mb(after.kib)} after settling ${after.waitedMs} ms (${((after.kib / baseline.kib - 1) * 100).toFixed(1)}%; ${rssParts(pid)})`,
    );

    // Detaches and attaches the backend started, each of which must come from a request that was accepted.
    const journal = stack.journal().filter((e) => e['op'] === 'detach' || e['op'] === 'attach');
    const wrong = journal.filter(
      (e) =>
        !(tally.labelOutcomes.get(String(e['label'])) ?? warm.labelOutcomes.get(String(e['label'])) ?? []).some(
          (o) => o === 'return true',
        ),
    );
    console.log(
      `# detaches and attaches started: ${journal.length} (${journal.filter((e) => e['op'] === 'attach').length} attaches), from requests that were not accepted: ${wrong.length}`,
    );

    const failures = [...warm.failures, ...tally.failures];
    assert.deepEqual(failures.slice(0, 20), [], `${failures.length} calls went wrong (seed ${SEED})`);
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
    assert.ok(done >= Math.min(CALLS, MIN_CALLS), `only ${done} calls within ${SECONDS} s`);
    assert.doesNotMatch(
      stack.daemon.output(),
      /uncaught exception|unhandled promise rejection|unexpected error|lost the bus connection/,
      'the daemon logged an internal error',
    );
    assert.ok(
      after.kib <= baseline.kib * RSS_TOLERANCE,
      `RSS ${mb(after.kib)} is more than ${Math.round((RSS_TOLERANCE - 1) * 100)}% above ${mb(baseline.kib)}`,
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

  it('answers every call while it shuts down, and exits cleanly', async () => {
    const shutdown = new Tally();
    const sent = (async () => {
      // The daemon leaves the bus during this phase: calls are answered by it
      // (refused as shutting down), or by the bus (NoReply, ServiceUnknown).
      let n = 0;
      const worker = async () => {
        while (n < SHUTDOWN_CALLS) {
          const call = generate(r, 1_000_000 + n++);
          if (((call.flags ?? 0) & NO_REPLY_EXPECTED) !== 0) continue;
          const reply = await client.call(call, REPLY_TIMEOUT_MS);
          shutdown.calls++;
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
      await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    })();
    await new Promise((res) => setTimeout(res, 150));
    const code = await stack.daemon.stop();
    await sent;
    console.log(shutdown.summary('# during shutdown').replace(/^/gm, '# '));
    assert.deepEqual(shutdown.failures.slice(0, 10), []);
    assert.equal(code, 0, `exit code ${code}:\n${stack.daemon.output().slice(-3000)}`);
    assert.ok(
      (shutdown.errors.get('org.freedesktop.DBus.Error.ServiceUnknown') ?? 0) > 0,
      'calls went on after the daemon had left',
    );
  });
});
