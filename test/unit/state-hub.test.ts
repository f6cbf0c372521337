import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { StateHub, type MapPatch, type StateMap } from '../../src/core/state-hub.js';
import type { VmInfo } from '../../src/plugin-api.js';

function hub(): { hub: StateHub; seen: StateMap[] } {
  const h = new StateHub();
  const seen: StateMap[] = [];
  h.onDidChangeMap(() => seen.push(h.map()));
  return { hub: h, seen };
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
  it('announces every change at once while nothing holds it', () => {
    const { hub: h, seen } = hub();
    h.update('a', { name: 'x', state: 'running' });
    assert.equal(seen.length, 1, 'synchronously');
    h.update('a', { name: 'x', state: 'paused' });
    h.update('a', { name: 'x', state: 'running' });
    assert.deepEqual(seen, [{ x: 'running' }, { x: 'paused' }, { x: 'running' }]);
    h.dispose();
  });

  it('holds changes while held and announces the last map once, when released', () => {
    const { hub: h, seen } = hub();
    h.update('a', { name: 'x', state: 'running' });
    const release = h.hold();
    h.update('a', { name: 'x', state: 'paused' });
    h.update('a', { name: 'x', state: 'crashed' });
    h.update('a', { name: 'y', state: 'running' });
    assert.equal(seen.length, 1);
    release();
    assert.deepEqual(seen, [{ x: 'running' }, { x: 'crashed', y: 'running' }]);
    release();
    assert.equal(seen.length, 2, 'a second call of the same release does nothing');
    h.dispose();
  });

  it('waits for the last of several holds', () => {
    const { hub: h, seen } = hub();
    const first = h.hold();
    const second = h.hold();
    h.update('a', { name: 'x', state: 'running' });
    first();
    assert.equal(seen.length, 0);
    second();
    assert.deepEqual(seen, [{ x: 'running' }]);
    h.dispose();
  });

  it('announces nothing on release when nothing changed while held', () => {
    const { hub: h, seen } = hub();
    h.update('a', { name: 'x', state: 'running' });
    h.hold()();
    assert.equal(seen.length, 1);
    h.dispose();
  });

  it('does not announce a change that changed nothing, but announces a republish', () => {
    const { hub: h, seen } = hub();
    h.update('a', { name: 'x', state: 'running' });
    h.update('a', { name: 'x', state: 'running' });
    assert.equal(seen.length, 1);
    const release = h.hold();
    h.update('a', { name: 'x', state: 'paused' });
    h.update('a', { name: 'x', state: 'running' });
    release();
    assert.equal(seen.length, 1, 'back where it was when the hold began');
    h.publish('a', [{ name: 'x', state: 'running' }]);
    assert.equal(seen.length, 2);
    h.dispose();
  });

  it('never loses the last state when changes keep coming, each while the previous announcement is held', () => {
    const { hub: h, seen } = hub();
    // As the frontend does: every announcement holds the next ones until it is written.
    let release: (() => void) | undefined;
    h.onDidChangeMap(() => (release = h.hold()));
    for (let i = 0; i < 50; i++) {
      h.update('a', { name: 'x', state: i % 2 === 0 ? 'running' : 'paused' });
      if (i % 10 === 9) {
        const r = release;
        release = undefined;
        r?.();
      }
    }
    h.update('a', { name: 'x', state: 'shutoff' });
    release?.();
    assert.equal(seen.at(-1)!['x'], 'shutoff');
    assert.ok(seen.length <= 7, `held: ${seen.length} announcements for 51 changes`);
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

describe('StateHub, a change of a VM it already has', () => {
  it('gives the entries and the map a build from scratch gives, keys and their order included', () => {
    const { hub: h, seen } = hub();
    const a: VmInfo[] = [
      { name: 'x', uuid: 'ua', state: 'running' },
      { name: '10', state: 'running' },
      { name: 'b', state: 'paused' },
    ];
    const b: VmInfo[] = [
      { name: 'x', uuid: 'ub', state: 'paused' },
      { name: '9', state: 'running' },
    ];
    h.publish('a', a);
    h.publish('b', b);
    h.entries();
    const first = { ...seen.at(-1)! };
    h.update('a', { name: 'x', uuid: 'ua', state: 'paused' });
    h.update('b', { name: '9', state: 'shutoff' });
    h.update('a', { name: 'b', state: 'running' });
    h.update('b', { name: 'x', uuid: 'ub', type: 'big', state: 'paused' });

    const fresh = new StateHub();
    fresh.publish('a', [
      { name: 'x', uuid: 'ua', state: 'paused' },
      { name: '10', state: 'running' },
      { name: 'b', state: 'running' },
    ]);
    fresh.publish('b', [
      { name: 'x', uuid: 'ub', type: 'big', state: 'paused' },
      { name: '9', state: 'shutoff' },
    ]);
    assert.deepEqual(Object.entries(h.map()), Object.entries(fresh.map()));
    assert.deepEqual(h.entries(), fresh.entries());
    assert.ok(Object.isFrozen(h.map()));
    assert.deepEqual(Object.entries(seen.at(-1)!), Object.entries(fresh.map()));
    assert.deepEqual(seen[1], first, 'a map once announced never changes');
    assert.equal(seen.length, 5, 'the two publishes and three changes of a state');
    h.dispose();
    fresh.dispose();
  });

  it('announces a change of state, not one of uuid or type only, which its entry shows', () => {
    const { hub: h, seen } = hub();
    h.publish('a', [{ name: 'x', uuid: 'u1', type: 't1', state: 'running' }]);
    h.update('a', { name: 'x', uuid: 'u2', type: 't2', state: 'running' });
    assert.equal(seen.length, 1);
    assert.deepEqual(h.find('a', 'x')!.vm, { name: 'x', uuid: 'u2', type: 't2', state: 'running' });
    h.update('a', { name: 'x', uuid: 'u2', type: 't2', state: 'paused' });
    h.update('a', { name: 'x', uuid: 'u2', type: 't2', state: 'running' });
    assert.deepEqual(
      seen.map((m) => m['x']),
      ['running', 'paused', 'running'],
    );
    h.dispose();
  });

  it('announces once, at the release, what changed while held, and each change after it', () => {
    const { hub: h, seen } = hub();
    h.publish('a', [
      { name: 'x', state: 'running' },
      { name: 'y', state: 'running' },
    ]);
    const release = h.hold();
    h.update('a', { name: 'x', state: 'paused' });
    h.update('a', { name: 'y', state: 'paused' });
    release();
    h.update('a', { name: 'x', state: 'running' });
    assert.deepEqual(seen, [
      { x: 'running', y: 'running' },
      { x: 'paused', y: 'paused' },
      { x: 'running', y: 'paused' },
    ]);
    h.dispose();
  });
});

describe('StateHub patchSince', () => {
  /** Each map announced, its version, and what patchSince said of the version before. */
  function watched(): {
    hub: StateHub;
    seen: Array<{ map: StateMap; version: number; patch: MapPatch | undefined }>;
  } {
    const h = new StateHub();
    const seen: Array<{ map: StateMap; version: number; patch: MapPatch | undefined }> = [];
    h.onDidChangeMap(() => {
      const before = seen.at(-1)?.version;
      seen.push({ map: h.map(), version: h.version, patch: before === undefined ? undefined : h.patchSince(before) });
    });
    return { hub: h, seen };
  }

  it('names the one key whose value changed since the version before, for a change of state of a known VM', () => {
    const { hub: h, seen } = watched();
    h.publish('a', [
      { name: 'x', state: 'running' },
      { name: '10', state: 'running' },
    ]);
    h.publish('b', [{ name: 'x', state: 'running' }]);
    h.update('a', { name: 'x', state: 'paused' });
    h.update('b', { name: 'x', state: 'crashed' });
    h.update('a', { name: '10', state: 'shutoff' });
    assert.equal(seen.length, 5);
    assert.equal(seen[1]!.patch, undefined, 'a publish');
    for (const [i, key, value] of [
      [2, 'a/x', 'paused'],
      [3, 'b/x', 'crashed'],
      [4, '10', 'shutoff'],
    ] as const) {
      const { map, patch } = seen[i]!;
      const previous = seen[i - 1]!.map;
      assert.deepEqual(patch, { key, value }, `change ${i}`);
      assert.deepEqual(Object.keys(map), Object.keys(previous), `change ${i}: the same keys in the same order`);
      const changed = Object.keys(map).filter((k) => map[k] !== previous[k]);
      assert.deepEqual(changed, [key], `change ${i}: that key's value alone differs`);
    }
    assert.equal(h.patchSince(seen[2]!.version), undefined, 'two changes since');
    assert.equal(h.patchSince(h.version), undefined, 'no change since');
    h.dispose();
  });

  it('says nothing after a VM came or went, a republish, or changes while held', () => {
    const { hub: h, seen } = watched();
    h.publish('a', [{ name: 'x', state: 'running' }]);
    h.update('a', { name: 'y', state: 'running' });
    h.remove('a', 'y');
    h.update('a', { name: 'x', state: 'paused' });
    h.publish('a', [{ name: 'x', state: 'running' }]);
    const release = h.hold();
    h.update('a', { name: 'x', state: 'paused' });
    release();
    h.update('a', { name: 'x', state: 'crashed' });
    assert.deepEqual(
      seen.map((s) => s.patch?.key),
      [undefined, undefined, undefined, 'x', undefined, undefined, 'x'],
      'publish, VM added, VM removed, change, republish, change while held, change',
    );
    h.dispose();
  });

  it("keeps the version and announces nothing when only a VM's uuid or type changed", () => {
    const { hub: h, seen } = watched();
    h.publish('a', [{ name: 'x', uuid: 'u1', state: 'running' }]);
    const version = h.version;
    const map = h.map();
    h.update('a', { name: 'x', uuid: 'u2', type: 't', state: 'running' });
    assert.equal(h.version, version);
    assert.equal(h.map(), map);
    h.update('a', { name: 'x', uuid: 'u2', type: 't', state: 'paused' });
    assert.deepEqual(seen.at(-1)!.patch, { key: 'x', value: 'paused' });
    assert.equal(seen.length, 2);
    h.dispose();
  });
});
