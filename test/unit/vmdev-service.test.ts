/**
 * Selectors while a backend is still reading its VMs' types (plugin API 3,
 * `typesPending`): requests wait for the types, in order, and every wait
 * ends (types known, the backend lost, shutdown, or the timeout on the
 * injected clock); what is wrong with a request is said before any wait.
 */
import assert from 'node:assert/strict';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { BackendRegistry } from '../../src/core/backend-registry.js';
import { parseConfig } from '../../src/core/config.js';
import { DeviceJobService } from '../../src/core/device-job-service.js';
import { VmdevError } from '../../src/core/errors.js';
import { RootLogger } from '../../src/core/logger.js';
import { StateHub } from '../../src/core/state-hub.js';
import { VmdevService, type Acceptance } from '../../src/core/vmdev-service.js';
import { ManualClock, drainMicrotasks } from '../harness/manual-clock.js';
import { backends } from '../fixtures/plugins/types-later.js';

const fixture = fileURLToPath(new URL('../fixtures/plugins/types-later.js', import.meta.url));
const caller = { name: ':1.7' };
const disk = { d: ['type=disk', 'target=vdb'] };

async function setup() {
  const config = parseConfig(
    { detachTimeoutSeconds: 5, backends: [{ id: 'tl', plugin: fixture }] },
    'test config',
    dirname(fixture),
  );
  const lines: string[] = [];
  const logger = new RootLogger('info', { write: (l) => lines.push(l) });
  const hub = new StateHub();
  const clock = new ManualClock();
  const registry = new BackendRegistry(config, hub, logger, '/nonexistent');
  await registry.load();
  await registry.start();
  const backend = backends.at(-1)!;
  const jobs = new DeviceJobService(config, registry, hub, logger, 0, clock);
  const service = new VmdevService(hub, registry, jobs, clock, logger);
  /** Follows an answer without awaiting it: the function says whether it has settled, and how. */
  const watch = (answer: Acceptance | Promise<Acceptance>) => {
    assert.ok(answer instanceof Promise, 'the answer waits for the types');
    let settled: 'accepted' | 'not accepted' | VmdevError | undefined;
    answer.then(
      (a) => (settled = a.accepted ? 'accepted' : 'not accepted'),
      (err: VmdevError) => (settled = err),
    );
    return () => settled;
  };
  /** The error an answer settled with. */
  const failure = (settled: ReturnType<typeof watch>): VmdevError => {
    const value = settled();
    assert.ok(value instanceof VmdevError, `refused, not ${String(value)}`);
    return value;
  };
  return { service, registry, backend, clock, hub, lines, watch, failure };
}

describe('VmdevService: selectors while types are pending', () => {
  it('a request by type waits for the types, then finds its VM', async () => {
    const { service, backend, hub, watch } = await setup();
    // The map already shows both VMs, without types.
    assert.deepEqual(Object.keys(hub.map()), ['tl-a', 'tl-b']);
    const seen = watch(service.detach(caller, 'web', disk));
    await drainMicrotasks();
    assert.equal(seen(), undefined, 'no answer before the types are known');
    backend.learnTypes();
    await drainMicrotasks();
    assert.equal(seen(), 'accepted');
  });

  it('requests waiting for the types are answered in the order they came', async () => {
    const { service, backend, lines } = await setup();
    const first = service.detach(caller, 'web', { first: ['type=disk', 'target=vdb'] });
    const second = service.detach(caller, 'db', { second: ['type=disk', 'target=vdc'] });
    const third = service.detach(caller, 'tl-a', { third: ['type=disk', 'target=vdd'] });
    backend.learnTypes();
    await Promise.all([first, second, third]);
    const order = lines.filter((l) => l.includes('TestMethod')).map((l) => /devices=(\w+)/.exec(l)?.[1]);
    assert.deepEqual(order, ['first', 'second', 'third']);
  });

  it('what is wrong with the request is said at once, without waiting', async () => {
    const { service } = await setup();
    assert.throws(() => service.detach(caller, '', disk), { name: 'VmdevError', kind: 'InvalidArgs' });
    assert.throws(() => service.detach(caller, 'web', { d: ['type=floppy'] }), {
      name: 'VmdevError',
      kind: 'InvalidArgs',
    });
  });

  it('a wait ends after detachTimeoutSeconds with BackendUnavailable naming the backend', async () => {
    const { service, clock, backend, watch, failure } = await setup();
    const seen = watch(service.detach(caller, 'web', disk));
    await clock.advance(4999);
    assert.equal(seen(), undefined);
    await clock.advance(1);
    assert.equal(failure(seen).kind, 'BackendUnavailable');
    assert.match(failure(seen).message, /backend "tl" is still reading the types of its VMs/);
    assert.deepEqual(backend.detached, []);
  });

  it('shutdown ends a wait with Failed, and nothing is detached', async () => {
    const { service, backend, watch, failure } = await setup();
    const seen = watch(service.detach(caller, 'web', disk));
    service.close();
    await drainMicrotasks();
    assert.equal(failure(seen).kind, 'Failed');
    assert.match(failure(seen).message, /shutting down/);
    backend.learnTypes();
    await drainMicrotasks();
    assert.deepEqual(backend.detached, []);
  });

  it('a backend that loses its hypervisor ends the wait: its VMs are unavailable', async () => {
    const { service, backend, watch, failure } = await setup();
    const seen = watch(service.detach(caller, 'tl-a', disk));
    backend.lose();
    await drainMicrotasks();
    assert.equal(failure(seen).kind, 'BackendUnavailable');
    assert.match(failure(seen).message, /lost the hypervisor/);
  });

  it('GetDevices waits for the types too', async () => {
    const { service, backend } = await setup();
    const answer = service.devices(caller, 'db');
    await drainMicrotasks();
    backend.learnTypes();
    assert.deepEqual(Object.keys(await answer), ['tl-b']);
  });
});
