/**
 * Device jobs (detaches and attaches) against a scripted stand-in for the
 * backend registry, on a clock the test moves by hand: the phases (queued,
 * held, issued, grace, settled) and their bounds, joining, late outcomes
 * and shutdown. Both directions run the one state machine: the tests of the
 * clock run for each.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DeviceOutcome, DeviceRequest } from '../../src/plugin-api.js';
import type { BackendHost, BackendRegistry } from '../../src/core/backend-registry.js';
import type { Config } from '../../src/core/config.js';
import { DeviceJobService, type JobFinished, type JobKind } from '../../src/core/device-job-service.js';
import { parseDevice } from '../../src/core/device-spec.js';
import { RootLogger } from '../../src/core/logger.js';
import { StateHub } from '../../src/core/state-hub.js';
import { ManualClock, drainMicrotasks } from '../harness/manual-clock.js';

type Call = (r: DeviceRequest) => Promise<DeviceOutcome>;

const never = (): Promise<DeviceOutcome> => new Promise(() => {});
const onAbort = (r: DeviceRequest, outcome: DeviceOutcome) =>
  new Promise<DeviceOutcome>((resolve) => r.signal.addEventListener('abort', () => resolve(outcome)));

/** How each direction words the outcomes the core gives itself. */
const WORDS = {
  detach: { done: 'removed', job: 'detach' },
  attach: { done: 'attached', job: 'attach' },
} as const;

function setup(timeoutSeconds: number, graceMs: number, call: Call, kind: JobKind = 'detach') {
  const lines: string[] = [];
  const logger = new RootLogger('debug', { write: (l) => lines.push(l) });
  const clock = new ManualClock();
  const hub = new StateHub();
  hub.publish('b', [{ name: 'vm', state: 'running' }]);
  const requests: DeviceRequest[] = [];
  /** Which registry method each request went to. */
  const calls: JobKind[] = [];
  const registry = {
    detach: (_host: BackendHost, r: DeviceRequest) => {
      requests.push(r);
      calls.push('detach');
      return call(r);
    },
    attach: (_host: BackendHost, r: DeviceRequest) => {
      requests.push(r);
      calls.push('attach');
      return call(r);
    },
  } as unknown as BackendRegistry;
  const service = new DeviceJobService(
    { detachTimeoutSeconds: timeoutSeconds } as Config,
    registry,
    hub,
    logger,
    graceMs,
    clock,
  );
  const finished: Array<JobFinished & { at: number }> = [];
  service.onDidFinish((e) => finished.push({ ...e, at: clock.now() }));
  const host = { id: 'b' } as BackendHost;
  const device = (label: string, i = 0) =>
    parseDevice(label, ['type=disk', `target=vd${'bcdefgh'[i]}`, `source=/images/${i}.img`, 'bus=virtio'], kind);
  const vm = () => hub.entries()[0]!;
  /** Accepts the devices (one per label, different disks) and starts them, as TestMethod and AttachDevices do. */
  const start = (...labels: string[]) => {
    const run = service.accept(
      kind,
      host,
      vm(),
      labels.map((l, i) => device(l, i)),
    );
    run();
  };
  const phase = (label: string) => service.phaseOf(kind, host, vm(), device(label));
  const outcomes = () => finished.map((f) => [f.device, f.outcome.ok ? 'ok' : f.outcome.error]);
  return { service, finished, requests, calls, lines, clock, hub, host, device, vm, start, phase, outcomes, kind };
}

for (const kind of ['detach', 'attach'] as const) {
  const words = WORDS[kind];
  describe(`DeviceJobService: ${kind}`, () => {
    it('hands each device to the registry method of its direction, and reports the outcome once per device', async () => {
      const t = setup(1, 50, async () => ({ ok: true }), kind);
      t.start('a', 'b');
      await drainMicrotasks();
      assert.deepEqual(t.calls, [kind, kind]);
      assert.deepEqual(
        t.finished.map((f) => [f.kind, f.vm, f.device, f.outcome.ok]),
        [
          [kind, 'vm', 'a', true],
          [kind, 'vm', 'b', true],
        ],
      );
    });

    it('times out from acceptance, aborts the request, and waits the grace period', async () => {
      const t = setup(0.1, 80, never, kind);
      t.start('a');
      await t.clock.advance(99);
      assert.equal(t.requests[0]!.signal.aborted, false);
      await t.clock.advance(1);
      assert.equal(t.requests[0]!.signal.reason, 'timeout');
      await t.clock.advance(79);
      assert.equal(t.finished.length, 0, 'the backend still has its grace period');
      await t.clock.advance(1);
      assert.deepEqual(t.finished[0]!.outcome, {
        ok: false,
        error: 'Timeout',
        message: `the device was not confirmed ${words.done} within 0.1 s`,
      });
      assert.equal(t.finished[0]!.at, 180);
    });

    it('bounds the wait in line and counts the timeout from issued()', async () => {
      const held = setup(0.1, 20, (r) => (r.hold(), never()), kind);
      held.start('a');
      await held.clock.advance(90);
      assert.equal(held.phase('a'), 'held');
      await held.clock.advance(30);
      assert.deepEqual(held.finished[0]!.outcome, {
        ok: false,
        error: 'Timeout',
        message: `the ${words.job} was still waiting for another operation of the VM after 0.1 s`,
      });
      let confirm!: () => void;
      const issued = setup(0.1, 10, () => new Promise((resolve) => (confirm = () => resolve({ ok: true }))), kind);
      issued.start('a');
      await issued.clock.advance(80);
      issued.requests[0]!.issued();
      assert.equal(issued.phase('a'), 'issued');
      await issued.clock.advance(80);
      confirm();
      await drainMicrotasks();
      assert.deepEqual(issued.outcomes(), [['a', 'ok']], 'done 160 ms after acceptance but 80 ms after issue');
    });

    it('fails every pending job at shutdown, in its own words, and accepts nothing after', async () => {
      const t = setup(10, 10, never, kind);
      t.start('a');
      t.service.shutdown();
      assert.deepEqual(t.finished[0]!.outcome, {
        ok: false,
        error: 'Failed',
        message: `vmdevd shut down before the ${words.job} was confirmed`,
      });
      assert.equal(t.requests[0]!.signal.reason, 'shutdown');
      assert.throws(() => t.service.accept(kind, t.host, t.vm(), [t.device('c')]), /accepts no new requests/);
    });
  });
}

describe('DeviceJobService: the directions side by side', () => {
  it('an attach never joins a pending detach of the same device, nor the other way', async () => {
    const pending: Array<() => void> = [];
    const t = setup(1, 10, () => new Promise((resolve) => pending.push(() => resolve({ ok: true }))));
    const spec = (label: string, kind: JobKind) =>
      parseDevice(label, ['type=disk', 'target=vdb', 'source=/images/0.img', 'bus=virtio'], kind);
    t.service.accept('detach', t.host, t.vm(), [spec('out', 'detach')])();
    t.service.accept('attach', t.host, t.vm(), [spec('in', 'attach')])();
    t.service.accept('attach', t.host, t.vm(), [spec('in-again', 'attach')])();
    assert.deepEqual(t.calls, ['detach', 'attach'], 'the second attach joined the first');
    assert.equal(t.service.pendingCount(), 2);
    for (const release of pending) release();
    await drainMicrotasks();
    assert.deepEqual(
      t.finished.map((f) => [f.kind, f.device]),
      [
        ['detach', 'out'],
        ['attach', 'in'],
        ['attach', 'in-again'],
      ],
    );
  });
});

describe('DeviceJobService', () => {
  it('reports the backend outcome once per device', async () => {
    const t = setup(1, 50, async () => ({ ok: true }));
    t.start('a', 'b');
    await drainMicrotasks();
    assert.deepEqual(
      t.finished.map((f) => [f.vm, f.device, f.outcome.ok]),
      [
        ['vm', 'a', true],
        ['vm', 'b', true],
      ],
    );
  });

  it('times out from acceptance, aborts the request, and waits the grace period', async () => {
    const t = setup(0.1, 80, never);
    t.start('a');
    await t.clock.advance(99);
    assert.equal(t.requests[0]!.signal.aborted, false);
    await t.clock.advance(1);
    assert.equal(t.requests[0]!.signal.aborted, true);
    assert.equal(t.requests[0]!.signal.reason, 'timeout');
    await t.clock.advance(79);
    assert.equal(t.finished.length, 0, 'the backend still has its grace period');
    await t.clock.advance(1);
    assert.equal(t.finished.length, 1);
    assert.deepEqual(t.finished[0]!.outcome, {
      ok: false,
      error: 'Timeout',
      message: 'the device was not confirmed removed within 0.1 s',
    });
    assert.equal(t.finished[0]!.at, 180);
  });

  it('says a request is aborted, at the timeout and at shutdown, as its signal made afterwards does', async () => {
    const t = setup(0.1, 80, never);
    t.start('a');
    const a = t.requests[0]!;
    await t.clock.advance(99);
    assert.equal(a.aborted, false);
    await t.clock.advance(1);
    assert.equal(a.aborted, true, 'at the timeout');
    assert.equal(a.signal.aborted, true, 'the signal, made only now, is aborted');
    assert.equal(a.signal.reason, 'timeout');

    const u = setup(10, 10, never);
    u.start('b');
    const b = u.requests[0]!;
    assert.equal(b.aborted, false);
    u.service.shutdown();
    assert.equal(b.aborted, true, 'at shutdown');
    assert.equal(b.signal.reason, 'shutdown');
  });

  it('takes a removal the backend verifies during the grace period', async () => {
    const t = setup(0.05, 500, (r) => onAbort(r, { ok: true }));
    t.start('a');
    await t.clock.advance(50);
    assert.deepEqual(
      t.finished.map((f) => f.outcome),
      [{ ok: true }],
    );
  });

  it('after the timeout, reports a generic failure as Timeout but keeps a specific verdict', async () => {
    const generic = setup(0.05, 500, (r) => onAbort(r, { ok: false, error: 'Failed', message: 'aborted' }));
    const lost = setup(0.05, 500, (r) =>
      onAbort(r, { ok: false, error: 'BackendUnavailable', message: 'connection lost' }),
    );
    generic.start('a');
    lost.start('a');
    await generic.clock.advance(50);
    await lost.clock.advance(50);
    assert.deepEqual(generic.finished[0]!.outcome, {
      ok: false,
      error: 'Timeout',
      message: 'the device was not confirmed removed within 0.05 s',
    });
    assert.deepEqual(lost.finished[0]!.outcome, { ok: false, error: 'BackendUnavailable', message: 'connection lost' });
  });

  it('holds the clock while the device waits in line, and restarts it in full when issued', async () => {
    let issue!: () => void;
    let confirm!: () => void;
    const t = setup(0.1, 10, (r) => {
      r.hold();
      return new Promise((resolve) => {
        issue = () => r.issued();
        confirm = () => resolve({ ok: true });
      });
    });
    t.start('a');
    await t.clock.advance(90);
    assert.equal(t.phase('a'), 'held');
    issue();
    assert.equal(t.phase('a'), 'issued');
    await t.clock.advance(99);
    assert.equal(t.requests[0]!.signal.aborted, false, '99 ms after issue, of 100');
    confirm();
    await drainMicrotasks();
    assert.deepEqual(t.outcomes(), [['a', 'ok']]);
  });

  it('bounds the wait in line: a device held for the whole timeout ends with Timeout', async () => {
    // A backend that holds a device behind an operation that never returns
    // (a hung QEMU monitor), and answers nothing even when aborted.
    const t = setup(0.1, 20, (r) => {
      r.hold();
      return never();
    });
    t.start('a');
    await t.clock.advance(100);
    assert.equal(t.requests[0]!.signal.reason, 'timeout');
    await t.clock.advance(20);
    assert.deepEqual(t.finished[0]!.outcome, {
      ok: false,
      error: 'Timeout',
      message: 'the detach was still waiting for another operation of the VM after 0.1 s',
    });
  });

  it('no backend can extend a clock: hold() after issued(), and issued() again, change nothing', async () => {
    let again!: () => void;
    const t = setup(0.1, 20, (r) => {
      r.issued();
      again = () => {
        r.hold();
        r.issued();
      };
      return never();
    });
    t.start('a');
    await t.clock.advance(60);
    again();
    await t.clock.advance(40);
    assert.equal(t.requests[0]!.signal.aborted, true, 'the timeout still counts from the first issued()');
    await t.clock.advance(20);
    assert.deepEqual(t.outcomes(), [['a', 'Timeout']]);
  });

  it('every accepted device ends within 2 timeouts and the grace period, whatever the backend does', async () => {
    // Held as late as possible, then issued at the last moment, then silent.
    const t = setup(1, 100, async (r) => {
      r.hold();
      return never();
    });
    t.start('a');
    await t.clock.advance(999);
    t.requests[0]!.issued();
    await t.clock.advance(999);
    assert.equal(t.requests[0]!.signal.aborted, false, 'the full timeout from issued()');
    // The clocks are looked at every 50 ms (a quarter of the timeout at most): the documented slack.
    await t.clock.advance(2 * 1000 + 100 + 50 - 1998);
    assert.deepEqual(t.outcomes(), [['a', 'Timeout']]);
    assert.ok(t.finished[0]!.at <= 2 * 1000 + 100 + 50);
  });

  it('counts the timeout from issued()', async () => {
    let confirm!: () => void;
    const t = setup(0.1, 10, () => new Promise((resolve) => (confirm = () => resolve({ ok: true }))));
    t.start('a');
    await t.clock.advance(80);
    t.requests[0]!.issued();
    await t.clock.advance(80);
    confirm();
    await drainMicrotasks();
    assert.deepEqual(t.outcomes(), [['a', 'ok']], 'done 160 ms after acceptance but 80 ms after issue');
  });

  it('joins a request for a pending device: one detach, one outcome per label', async () => {
    let release!: () => void;
    const t = setup(1, 10, () => new Promise((resolve) => (release = () => resolve({ ok: true }))));
    t.start('first');
    t.service.accept('detach', t.host, t.vm(), [t.device('second')])();
    assert.equal(t.requests.length, 1);
    assert.equal(t.service.pendingCount(), 1);
    release();
    await drainMicrotasks();
    assert.deepEqual(
      t.finished.map((f) => f.device),
      ['first', 'second'],
    );
    assert.equal(t.service.pendingCount(), 0);
    // Once settled, the same device is detached afresh.
    t.start('third');
    assert.equal(t.requests.length, 2);
  });

  it('a request that joins during the grace period gets the outcome of the detach it joined', async () => {
    let verify!: () => void;
    const t = setup(0.1, 1000, () => new Promise((resolve) => (verify = () => resolve({ ok: true }))));
    t.start('first');
    await t.clock.advance(100);
    assert.equal(t.phase('first'), 'grace');
    t.service.accept('detach', t.host, t.vm(), [t.device('second')])();
    assert.equal(t.requests.length, 1, 'joined, not started again');
    await t.clock.advance(500);
    verify();
    await drainMicrotasks();
    assert.deepEqual(t.outcomes(), [
      ['first', 'ok'],
      ['second', 'ok'],
    ]);
  });

  it('logs an outcome that arrives after the device was reported, and reports nothing twice', async () => {
    let release!: () => void;
    const t = setup(0.05, 10, () => new Promise((resolve) => (release = () => resolve({ ok: true }))));
    t.start('late');
    await t.clock.advance(60);
    release();
    await drainMicrotasks();
    assert.deepEqual(t.outcomes(), [['late', 'Timeout']]);
    assert.ok(t.lines.some((l) => /outcome arrived after the device was already reported .*outcome=detached/.test(l)));
  });

  it('fails every pending detach at shutdown, and accepts nothing after', async () => {
    const t = setup(10, 10, never);
    t.start('a', 'b');
    t.service.shutdown();
    assert.deepEqual(t.outcomes(), [
      ['a', 'Failed'],
      ['b', 'Failed'],
    ]);
    assert.equal(t.requests[0]!.signal.reason, 'shutdown');
    assert.throws(
      () => t.service.accept('detach', t.host, t.vm(), [t.device('c')]),
      /vmdevd is shutting down and accepts no new requests/,
    );
  });

  it('a device accepted but not yet handed to the backend gets its outcome at shutdown, and is never issued', async () => {
    const t = setup(10, 10, never);
    const run = t.service.accept('detach', t.host, t.vm(), [t.device('a')]);
    t.service.shutdown();
    run();
    assert.equal(t.requests.length, 0);
    assert.deepEqual(t.outcomes(), [['a', 'Failed']]);
  });

  it('cleans a backend message before it goes on: no NUL, no control characters, no lone surrogates', async () => {
    const t = setup(1, 10, async () => ({
      ok: false,
      error: 'RemovalFailed',
      message: 'bad\u0000byte \u001b[1m \ud800 end',
    }));
    t.start('a');
    await drainMicrotasks();
    const outcome = t.finished[0]!.outcome as { message: string };
    assert.equal(outcome.message, 'bad\ufffdbyte \ufffd[1m \ufffd end');
  });

  it('names the VM by its current key', async () => {
    let release!: () => void;
    const t = setup(1, 10, () => new Promise((resolve) => (release = () => resolve({ ok: true }))));
    t.start('a');
    t.hub.publish('other', [{ name: 'vm', state: 'running' }]);
    release();
    await drainMicrotasks();
    assert.equal(t.finished[0]!.vm, 'b/vm');
  });
});
