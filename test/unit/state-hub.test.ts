/**
 * The state hub's keys and announcements, on a clock the test moves by hand:
 * the coalescing window is checked to the millisecond, without sleeping.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { StateHub, type StateMap } from '../../src/core/state-hub.js';
import { ManualClock } from '../harness/manual-clock.js';

function hub(windowMs = 20): { hub: StateHub; clock: ManualClock; seen: StateMap[]; times: number[] } {
  const clock = new ManualClock();
  const h = new StateHub(windowMs, clock);
  const seen: StateMap[] = [];
  const times: number[] = [];
  h.onDidChangeMap((m) => {
    seen.push(m);
    times.push(clock.now());
  });
  return { hub: h, clock, seen, times };
}

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
    const { hub: h, seen, clock } = hub();
    h.update('a', { name: 'x', state: 'running' });
    assert.equal(seen.length, 1, 'synchronously');
    assert.equal(clock.pending, 0, 'no timer for a change after a quiet period');
    h.dispose();
  });

  it('coalesces a burst and announces the last state when the window ends', async () => {
    const { hub: h, seen, times, clock } = hub(20);
    h.update('a', { name: 'x', state: 'running' });
    await clock.advance(5);
    h.update('a', { name: 'x', state: 'paused' });
    h.update('a', { name: 'x', state: 'crashed' });
    h.update('a', { name: 'y', state: 'running' });
    await clock.advance(14);
    assert.equal(seen.length, 1, 'nothing more before the window ends');
    await clock.advance(1);
    assert.deepEqual(seen, [{ x: 'running' }, { x: 'crashed', y: 'running' }]);
    assert.deepEqual(times, [0, 20], 'the window counts from the last announcement');
    assert.equal(clock.pending, 0);
    h.dispose();
  });

  it('announces a change after the window at once again', async () => {
    const { hub: h, times, clock } = hub(20);
    h.update('a', { name: 'x', state: 'running' });
    await clock.advance(20);
    h.update('a', { name: 'x', state: 'paused' });
    assert.deepEqual(times, [0, 20]);
    h.dispose();
  });

  it('does not announce a change that changed nothing, but announces a republish', async () => {
    const { hub: h, seen, clock } = hub(5);
    h.update('a', { name: 'x', state: 'running' });
    await clock.advance(20);
    h.update('a', { name: 'x', state: 'running' });
    await clock.advance(20);
    assert.equal(seen.length, 1);
    h.publish('a', [{ name: 'x', state: 'running' }]);
    assert.equal(seen.length, 2);
    h.dispose();
  });

  it('does not announce a burst that ends where it began', async () => {
    const { hub: h, seen, clock } = hub(10);
    h.update('a', { name: 'x', state: 'running' });
    h.update('a', { name: 'x', state: 'paused' });
    h.update('a', { name: 'x', state: 'running' });
    await clock.advance(10);
    assert.deepEqual(seen, [{ x: 'running' }]);
    h.dispose();
  });

  it('never loses the last state when changes keep coming, and announces at most once per window', async () => {
    const { hub: h, seen, times, clock } = hub(10);
    for (let i = 0; i < 50; i++) {
      h.update('a', { name: 'x', state: i % 2 === 0 ? 'running' : 'paused' });
      await clock.advance(2);
    }
    h.update('a', { name: 'x', state: 'shutoff' });
    const lastChange = clock.now();
    await clock.advance(10);
    assert.equal(seen.at(-1)!['x'], 'shutoff');
    assert.ok(times.at(-1)! <= lastChange + 10, 'within one window of the last change');
    for (let i = 1; i < times.length; i++)
      assert.ok(times[i]! - times[i - 1]! >= 10, `announcements at ${times.join(', ')}`);
    const count = seen.length;
    await clock.advance(100);
    assert.equal(seen.length, count, 'nothing once the changes stop');
    assert.equal(clock.pending, 0);
    h.dispose();
  });

  it('announces nothing after dispose', async () => {
    const { hub: h, seen, clock } = hub(10);
    h.update('a', { name: 'x', state: 'running' });
    h.update('a', { name: 'x', state: 'paused' });
    h.dispose();
    await clock.advance(10);
    assert.equal(seen.length, 1);
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
