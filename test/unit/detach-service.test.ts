/**
 * Detach jobs against a scripted stand-in for the backend registry: the
 * clock (hold, issued, grace), joining, late outcomes and shutdown.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DetachOutcome, DetachRequest } from '../../src/plugin-api.js';
import type { BackendHost, BackendRegistry } from '../../src/core/backend-registry.js';
import type { Config } from '../../src/core/config.js';
import { DetachService, type DetachFinished } from '../../src/core/detach-service.js';
import { parseDevice } from '../../src/core/device-spec.js';
import { RootLogger } from '../../src/core/logger.js';
import { StateHub } from '../../src/core/state-hub.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function setup(timeoutSeconds: number, graceMs: number, detach: (r: DetachRequest) => Promise<DetachOutcome>) {
  const lines: string[] = [];
  const logger = new RootLogger('debug', { write: (l) => lines.push(l) });
  const hub = new StateHub(1);
  hub.publish('b', [{ name: 'vm', state: 'running' }]);
  const requests: DetachRequest[] = [];
  const registry = {
    detach: (_host: BackendHost, r: DetachRequest) => {
      requests.push(r);
      return detach(r);
    },
  } as unknown as BackendRegistry;
  const service = new DetachService({ detachTimeoutSeconds: timeoutSeconds } as Config, registry, hub, logger, graceMs);
  const finished: Array<DetachFinished & { at: number }> = [];
  service.onDidFinish((e) => finished.push({ ...e, at: performance.now() }));
  const host = { id: 'b' } as BackendHost;
  const vm = hub.entries()[0]!;
  return {
    service,
    finished,
    requests,
    lines,
    start: (...labels: string[]) =>
      service.start(
        host,
        vm,
        labels.map((l, i) => parseDevice(l, ['type=disk', `target=vd${'bcdefgh'[i]}`])),
      ),
    hub,
  };
}

describe('DetachService', () => {
  it('reports the backend outcome once per device', async () => {
    const t = setup(1, 50, async () => ({ ok: true }));
    t.start('a', 'b');
    await sleep(20);
    assert.deepEqual(
      t.finished.map((f) => [f.vm, f.device, f.outcome.ok]),
      [
        ['vm', 'a', true],
        ['vm', 'b', true],
      ],
    );
  });

  it('times out from acceptance, aborts the request, and waits the grace period', async () => {
    const t = setup(0.1, 80, () => new Promise(() => {}));
    const t0 = performance.now();
    t.start('a');
    await sleep(130);
    assert.equal(t.requests[0]!.signal.aborted, true);
    assert.equal(t.requests[0]!.signal.reason, 'timeout');
    assert.equal(t.finished.length, 0, 'the backend still has its grace period');
    await sleep(100);
    assert.equal(t.finished.length, 1);
    const f = t.finished[0]!;
    assert.deepEqual(f.outcome, {
      ok: false,
      error: 'Timeout',
      message: 'the device was not confirmed removed within 0.1 s',
    });
    assert.ok(f.at - t0 >= 175);
  });

  it('takes a removal the backend verifies during the grace period', async () => {
    const t = setup(
      0.05,
      500,
      (r) => new Promise((resolve) => r.signal.addEventListener('abort', () => resolve({ ok: true }))),
    );
    t.start('a');
    await sleep(120);
    assert.deepEqual(
      t.finished.map((f) => f.outcome),
      [{ ok: true }],
    );
  });

  it('after the timeout, reports a generic failure as Timeout but keeps a specific verdict', async () => {
    const generic = setup(
      0.05,
      500,
      (r) =>
        new Promise((resolve) =>
          r.signal.addEventListener('abort', () => resolve({ ok: false, error: 'Failed', message: 'aborted' })),
        ),
    );
    const lost = setup(
      0.05,
      500,
      (r) =>
        new Promise((resolve) =>
          r.signal.addEventListener('abort', () =>
            resolve({ ok: false, error: 'BackendUnavailable', message: 'connection lost' }),
          ),
        ),
    );
    generic.start('a');
    lost.start('a');
    await sleep(120);
    assert.deepEqual(generic.finished[0]!.outcome, {
      ok: false,
      error: 'Timeout',
      message: 'the device was not confirmed removed within 0.05 s',
    });
    assert.deepEqual(lost.finished[0]!.outcome, { ok: false, error: 'BackendUnavailable', message: 'connection lost' });
  });

  it('pauses the clock while held and restarts it in full when issued', async () => {
    const t = setup(0.1, 10, async (r) => {
      r.hold();
      await sleep(200);
      r.issued();
      await sleep(80);
      return { ok: true };
    });
    t.start('a');
    await sleep(350);
    assert.deepEqual(
      t.finished.map((f) => f.outcome),
      [{ ok: true }],
    );
  });

  it('counts the timeout from issued()', async () => {
    const t = setup(0.1, 10, async (r) => {
      await sleep(80);
      r.issued();
      await sleep(80);
      return { ok: true };
    });
    t.start('a');
    await sleep(220);
    assert.deepEqual(
      t.finished.map((f) => f.outcome),
      [{ ok: true }],
      'done 160 ms after acceptance but 80 ms after issue',
    );
  });

  it('joins a request for a pending device: one detach, one outcome per label', async () => {
    let release!: () => void;
    const t = setup(1, 10, () => new Promise((resolve) => (release = () => resolve({ ok: true }))));
    t.start('first');
    t.service.start({ id: 'b' } as BackendHost, t.hub.entries()[0]!, [
      parseDevice('second', ['type=disk', 'target=vdb']),
    ]);
    assert.equal(t.requests.length, 1);
    assert.equal(t.service.pendingCount(), 1);
    release();
    await sleep(10);
    assert.deepEqual(
      t.finished.map((f) => f.device),
      ['first', 'second'],
    );
    assert.equal(t.service.pendingCount(), 0);
    // Once settled, the same device is detached afresh.
    t.start('third');
    assert.equal(t.requests.length, 2);
    release();
  });

  it('logs an outcome that arrives after the device was reported, and reports nothing twice', async () => {
    let release!: () => void;
    const t = setup(0.05, 10, () => new Promise((resolve) => (release = () => resolve({ ok: true }))));
    t.start('late');
    await sleep(100);
    release();
    await sleep(10);
    assert.equal(t.finished.length, 1);
    assert.equal((t.finished[0]!.outcome as { error: string }).error, 'Timeout');
    assert.ok(t.lines.some((l) => /outcome arrived after the device was already reported .*outcome=detached/.test(l)));
  });

  it('fails every pending detach at shutdown', async () => {
    const t = setup(10, 10, () => new Promise(() => {}));
    t.start('a', 'b');
    t.service.shutdown();
    assert.deepEqual(
      t.finished.map((f) => [f.device, f.outcome.ok ? 'ok' : f.outcome.error]),
      [
        ['a', 'Failed'],
        ['b', 'Failed'],
      ],
    );
    assert.equal(t.requests[0]!.signal.reason, 'shutdown');
  });

  it('names the VM by its current key', async () => {
    let release!: () => void;
    const t = setup(1, 10, () => new Promise((resolve) => (release = () => resolve({ ok: true }))));
    t.start('a');
    t.hub.publish('other', [{ name: 'vm', state: 'running' }]);
    release();
    await sleep(10);
    assert.equal(t.finished[0]!.vm, 'b/vm');
  });
});
