import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { StateHub, type StateMap } from '../../src/core/state-hub.js';

function hub(windowMs = 20): { hub: StateHub; seen: StateMap[]; times: number[] } {
  const h = new StateHub(windowMs);
  const seen: StateMap[] = [];
  const times: number[] = [];
  h.onDidChangeMap((m) => {
    seen.push(m);
    times.push(performance.now());
  });
  return { hub: h, seen, times };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('StateHub keys', () => {
  it('keys a VM by its name when the name is unique', () => {
    const { hub: h } = hub();
    h.publish('a', [{ name: 'x', state: 'running' }]);
    h.publish('b', [{ name: 'y', state: 'paused' }]);
    assert.deepEqual(h.map(), { x: 'running', y: 'paused' });
    h.dispose();
  });

  it('keys colliding names backend/name for every VM involved, whatever the order', () => {
    const one = hub().hub;
    one.publish('a', [{ name: 'x', state: 'running' }]);
    one.publish('b', [{ name: 'x', state: 'paused' }]);
    const two = hub().hub;
    two.publish('b', [{ name: 'x', state: 'paused' }]);
    two.publish('a', [{ name: 'x', state: 'running' }]);
    assert.deepEqual(one.map(), { 'a/x': 'running', 'b/x': 'paused' });
    assert.deepEqual(Object.entries(one.map()), Object.entries(two.map()));
    assert.equal(one.find('b', 'x')!.key, 'b/x');
    assert.equal(one.byKey('a/x')!.backendId, 'a');
    one.dispose();
    two.dispose();
  });

  it('sorts the map by key', () => {
    const { hub: h } = hub();
    h.publish('a', [
      { name: 'zeta', state: 'running' },
      { name: 'alpha', state: 'running' },
      { name: 'mid', state: 'running' },
    ]);
    assert.deepEqual(Object.keys(h.map()), ['alpha', 'mid', 'zeta']);
    h.dispose();
  });
});

describe('StateHub announcements', () => {
  it('announces the first change at once', () => {
    const { hub: h, seen } = hub();
    h.update('a', { name: 'x', state: 'running' });
    assert.equal(seen.length, 1, 'synchronously');
    h.dispose();
  });

  it('coalesces a burst and announces the last state at the end of the window', async () => {
    const { hub: h, seen, times } = hub(20);
    const t0 = performance.now();
    h.update('a', { name: 'x', state: 'running' });
    h.update('a', { name: 'x', state: 'paused' });
    h.update('a', { name: 'x', state: 'crashed' });
    h.update('a', { name: 'y', state: 'running' });
    assert.equal(seen.length, 1);
    await sleep(60);
    assert.deepEqual(seen, [{ x: 'running' }, { x: 'crashed', y: 'running' }]);
    assert.ok(times[1]! - t0 >= 18, 'not before the window ended');
    h.dispose();
  });

  it('does not announce a change that changed nothing, but announces a republish', async () => {
    const { hub: h, seen } = hub(5);
    h.update('a', { name: 'x', state: 'running' });
    await sleep(20);
    h.update('a', { name: 'x', state: 'running' });
    await sleep(20);
    assert.equal(seen.length, 1);
    h.publish('a', [{ name: 'x', state: 'running' }]);
    assert.equal(seen.length, 2);
    h.dispose();
  });

  it('never loses the last state when changes keep coming', async () => {
    const { hub: h, seen } = hub(10);
    for (let i = 0; i < 50; i++) {
      h.update('a', { name: 'x', state: i % 2 === 0 ? 'running' : 'paused' });
      await sleep(2);
    }
    h.update('a', { name: 'x', state: 'shutoff' });
    await sleep(40);
    assert.equal(seen.at(-1)!['x'], 'shutoff');
    assert.ok(seen.length < 51, `coalesced: ${seen.length} announcements for 51 changes`);
    h.dispose();
  });

  it('forgets removed VMs', () => {
    const { hub: h } = hub();
    h.publish('a', [{ name: 'x', state: 'running' }]);
    h.remove('a', 'x');
    assert.deepEqual(h.map(), {});
    assert.equal(h.find('a', 'x'), undefined);
    h.dispose();
  });
});
