import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Ajv } from 'ajv';
import {
  CONFIG_AJV_OPTIONS,
  CONFIG_SCHEMA,
  describeSchemaError,
  fieldPath,
  parseConfig,
} from '../../src/core/config.js';
import { ConfigError } from '../../src/core/errors.js';
import { PRECOMPILED_VALIDATORS } from '../../src/core/precompiled-validators.js';
import { parseDaemonArgs } from '../../src/daemon/args.js';

const parse = (data: unknown) => parseConfig(data, 'c.json', '/etc/vmdevd');

describe('config', () => {
  it("has a schema that JSON Schema's meta-schema accepts (the daemon does not check it at start)", () => {
    const ajv = new Ajv({ strict: true, allowUnionTypes: true });
    assert.equal(ajv.validateSchema(CONFIG_SCHEMA), true, JSON.stringify(ajv.errors));
    assert.doesNotThrow(() => ajv.compile(CONFIG_SCHEMA));
  });

  it('is validated by code the build generated, which finds what a compiled schema finds', () => {
    const precompiled = PRECOMPILED_VALIDATORS.get(JSON.stringify(CONFIG_SCHEMA));
    assert.ok(precompiled, 'npm run build did not precompile the config schema: a start compiles it');
    const compiled = new Ajv(CONFIG_AJV_OPTIONS).compile(CONFIG_SCHEMA);
    const samples: unknown[] = [
      {},
      [],
      { busName: 'a' },
      { bus: '' },
      { logLevel: 'loud' },
      { detachTimeoutSeconds: 0 },
      { backends: [] },
      { backends: [{ id: 'a b', plugin: 'x' }] },
      { backends: [{ id: 'a' }] },
      { access: { users: [''] } },
      { unknown: 1 },
    ];
    for (const data of samples) {
      assert.equal(precompiled(data), compiled(data), JSON.stringify(data));
      assert.deepEqual(precompiled.errors ?? null, compiled.errors ?? null, JSON.stringify(data));
    }
  });

  it('fills in the defaults', () => {
    const c = parse({});
    assert.equal(c.bus, 'session');
    assert.equal(c.busName, 'org.example.dbustest');
    assert.equal(c.detachTimeoutSeconds, 30);
    assert.equal(c.logLevel, 'info');
    assert.deepEqual(c.backends, [{ id: 'default', plugin: 'libvirt', options: { uri: 'test:///default' } }]);
    assert.deepEqual(c.access, { users: ['root'], groups: ['vmdevd-admin'] });
    assert.equal(c.baseDir, '/etc/vmdevd');
  });

  it('keeps plugin options apart from id and plugin', () => {
    const c = parse({ backends: [{ id: 'local', plugin: 'libvirt', uri: 'qemu:///system', keepalive: 5 }] });
    assert.deepEqual(c.backends[0], {
      id: 'local',
      plugin: 'libvirt',
      options: { uri: 'qemu:///system', keepalive: 5 },
    });
  });

  it('lets a flag choose the bus over the file', () => {
    assert.equal(parseConfig({ bus: 'system' }, 'c', '/', { bus: 'unix:path=/x' }).bus, 'unix:path=/x');
    assert.equal(parseConfig({ bus: 'system' }, 'c', '/', {}).bus, 'system');
  });

  const bad: Array<[unknown, RegExp]> = [
    [[], /c\.json: \(top level\): must be object/],
    [{ backends: [] }, /c\.json: backends: must NOT have fewer than 1 items/],
    [{ backends: [{ id: 'x', plugin: '' }] }, /backends\[0\]\.plugin: must NOT have fewer than 1 characters/],
    [{ access: { users: 'root' } }, /access\.users: must be array/],
    [{ access: { admins: [] } }, /access\.admins: is not a known field/],
    [{ detachTimeoutSeconds: 4000 }, /detachTimeoutSeconds: must be <= 3600/],
  ];
  for (const [data, message] of bad) {
    it(`rejects ${JSON.stringify(data)}`, () => {
      assert.throws(
        () => parse(data),
        (err: unknown) => err instanceof ConfigError && message.test(err.message),
      );
    });
  }

  it('writes JSON pointers as field paths', () => {
    assert.equal(fieldPath('/backends/0/uri'), 'backends[0].uri');
    assert.equal(fieldPath('/a~1b/c'), 'a/b.c');
    assert.equal(fieldPath('/uri', 'backends[2]'), 'backends[2].uri');
    assert.equal(
      describeSchemaError({
        instancePath: '/x',
        keyword: 'type',
        message: 'must be string',
        params: {},
        schemaPath: '',
      }),
      'x: must be string',
    );
  });
});

describe('daemon arguments', () => {
  it('reads each bus flag', () => {
    assert.equal(parseDaemonArgs(['--system']).bus, 'system');
    assert.equal(parseDaemonArgs(['--session']).bus, 'session');
    assert.equal(parseDaemonArgs(['--address', 'unix:path=/b']).bus, 'unix:path=/b');
    assert.equal(parseDaemonArgs([]).bus, undefined);
    assert.equal(parseDaemonArgs(['--config', '/etc/v.json']).config, '/etc/v.json');
  });

  it('refuses conflicting or unknown flags and positionals', () => {
    assert.throws(() => parseDaemonArgs(['--system', '--address', 'x']), /only one of/);
    assert.throws(() => parseDaemonArgs(['--nope']), /Unknown option/);
    assert.throws(() => parseDaemonArgs(['extra']), ConfigError);
    assert.throws(() => parseDaemonArgs(['--address', '']), /needs a D-Bus address/);
  });
});
