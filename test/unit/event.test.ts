import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Emitter } from '../../src/core/event.js';

describe('Emitter', () => {
  it('runs every listener in order when one throws, and reports the error', () => {
    const errors: unknown[] = [];
    const emitter = new Emitter<string>((err) => errors.push(err));
    const seen: string[] = [];
    emitter.event((v) => seen.push(`a:${v}`));
    emitter.event(() => {
      throw new Error('this listener fails');
    });
    emitter.event((v) => seen.push(`c:${v}`));
    emitter.fire('x');
    emitter.fire('y');
    assert.deepEqual(seen, ['a:x', 'c:x', 'a:y', 'c:y']);
    assert.deepEqual(
      errors.map((e) => (e as Error).message),
      ['this listener fails', 'this listener fails'],
    );
  });

  it('stops calling a listener once its subscription is disposed', () => {
    const emitter = new Emitter<number>();
    const seen: number[] = [];
    const subscription = emitter.event((v) => seen.push(v));
    emitter.fire(1);
    subscription.dispose();
    emitter.fire(2);
    assert.deepEqual(seen, [1]);
  });
});
