/**
 * Which backend an uncaught exception is blamed on: the one whose plugin's
 * directory the stack runs through, and no other, also when one plugin's
 * directory name begins with another's (`vmdevd-plugin-kvm` and
 * `vmdevd-plugin-kvm-arm` side by side in node_modules).
 */
import assert from 'node:assert/strict';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { BackendRegistry } from '../../src/core/backend-registry.js';
import { parseConfig } from '../../src/core/config.js';
import { RootLogger } from '../../src/core/logger.js';
import { StateHub } from '../../src/core/state-hub.js';
import { ManualClock } from '../harness/manual-clock.js';

const fixture = fileURLToPath(new URL('../fixtures/plugins/rejects/index.js', import.meta.url));

async function registryWithFixture(): Promise<BackendRegistry> {
  const config = parseConfig({ backends: [{ id: 'rej', plugin: fixture }] }, 'test config', dirname(fixture));
  const registry = new BackendRegistry(
    config,
    new StateHub(1, new ManualClock()),
    new RootLogger('error', { write: () => {} }),
    '/nonexistent',
  );
  await registry.load();
  return registry;
}

function errorFrom(file: string): Error {
  const err = new Error('boom');
  err.stack = `Error: boom\n    at Timeout._onTimeout (file://${file}:12:15)\n    at listOnTimeout (node:internal/timers:573:17)`;
  return err;
}

describe('attributing an uncaught exception to a plugin', () => {
  it('blames the backend whose plugin the stack runs through', async () => {
    const registry = await registryWithFixture();
    assert.equal(registry.attributeCrash(errorFrom(fixture)), true);
    assert.equal(registry.healthMap()['rej'], 'disconnected: plugin crashed: boom');
  });

  it('does not blame a plugin whose directory name only begins the one in the stack', async () => {
    const registry = await registryWithFixture();
    const sibling = fixture.replace('/rejects/', '/rejects-too/');
    assert.equal(registry.attributeCrash(errorFrom(sibling)), false);
    assert.equal(registry.healthMap()['rej'], 'disconnected: starting');
  });
});
