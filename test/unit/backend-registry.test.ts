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
import { Ajv } from 'ajv';
import { BackendRegistry } from '../../src/core/backend-registry.js';
import { parseConfig } from '../../src/core/config.js';
import { RootLogger } from '../../src/core/logger.js';
import {
  SHIPPED_OPTIONS_AJV_OPTIONS,
  closedSchema,
  precompiledOptionsValidator,
} from '../../src/core/options-schema.js';
import { BUILTIN_PLUGIN_DIR, loadPlugin } from '../../src/core/plugin-loader.js';
import { StateHub } from '../../src/core/state-hub.js';

const fixture = fileURLToPath(new URL('../fixtures/plugins/rejects/index.js', import.meta.url));

async function registryWithFixture(): Promise<BackendRegistry> {
  const config = parseConfig({ backends: [{ id: 'rej', plugin: fixture }] }, 'test config', dirname(fixture));
  const registry = new BackendRegistry(
    config,
    new StateHub(),
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

describe('the option schemas of the plugins shipped in the package', () => {
  // The daemon compiles them without checking them against JSON Schema's
  // meta-schema (a third-party plugin's schema is checked): this is the check.
  for (const spec of ['libvirt', 'qmp']) {
    it(`${spec}: JSON Schema's meta-schema accepts it`, async () => {
      const { factory } = await loadPlugin(spec, BUILTIN_PLUGIN_DIR);
      assert.ok(factory.optionsSchema !== undefined, 'it has a schema');
      const ajv = new Ajv({ strict: false });
      assert.equal(ajv.validateSchema(factory.optionsSchema), true, JSON.stringify(ajv.errors));
    });

    it(`${spec}: the build precompiled it, and the code finds what a compiled schema finds`, async () => {
      const { factory, root } = await loadPlugin(spec, BUILTIN_PLUGIN_DIR);
      const schema = closedSchema(factory.optionsSchema!);
      const precompiled = await precompiledOptionsValidator(root, schema);
      assert.ok(precompiled, 'npm run build did not precompile it: a start compiles it');
      const compiled = new Ajv(SHIPPED_OPTIONS_AJV_OPTIONS).compile(schema);
      const samples: unknown[] = [{}, [], { uri: '' }, { uri: 'x', keepaliveCount: 0 }, { socketDir: 1 }, { nope: 1 }];
      for (const data of samples) {
        assert.equal(precompiled(data), compiled(data), JSON.stringify(data));
        assert.deepEqual(precompiled.errors ?? null, compiled.errors ?? null, JSON.stringify(data));
      }
      assert.equal(await precompiledOptionsValidator(root, { ...schema, title: 'changed' }), undefined);
    });
  }
});
