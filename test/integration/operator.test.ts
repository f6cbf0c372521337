/**
 * Operator habits: `vmdevd --check-config`, config errors named once with
 * their file, a libvirt URI that libvirt refuses outright shown as a
 * configuration error and not retried, a plugin directory that holds only
 * package.json and plain JavaScript (the daemon provides the plugin API),
 * a plugin schema that forgets `additionalProperties: false`, and a failed
 * backend tried again at the next reload.
 */
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run } from '../harness/process.js';
import { startStack, TEST_BACKEND, type Stack } from '../harness/stack.js';
import { makeTempDir, type TempDir } from '../harness/temp-dir.js';
import { VMDEVD_BIN } from '../harness/vmdevd-process.js';

const EX_CONFIG = 78;

/** A plugin as a third party ships it: package.json and plain JavaScript, nothing of vmdevd installed beside it. */
function writePlainPlugin(dir: string, options: { apiInPackageJson: boolean; schema: object }): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, 'package.json'),
    JSON.stringify({
      name: 'vmdevd-plugin-plain',
      version: '1.0.0',
      type: 'module',
      main: 'index.js',
      ...(options.apiInPackageJson ? { vmdevd: { apiVersion: 1 } } : {}),
    }),
  );
  writeFileSync(
    join(dir, 'index.js'),
    `import { BackendFactory, ContainerModule } from 'vmdevd/plugin-api';
const factory = {
  optionsSchema: ${JSON.stringify(options.schema)},
  create: (ctx) => ({
    async start() {
      ctx.publish([{ name: String(ctx.options.vmName ?? 'plain'), state: 'running' }]);
      ctx.setHealth({ connected: true });
    },
    async stop() {},
    async detach(request) {
      request.issued();
      return { ok: true };
    },
    async setState() {},
  }),
};
export default {
  ${options.apiInPackageJson ? '' : 'apiVersion: 1,'}
  name: 'plain',
  module: new ContainerModule(({ bind }) => bind(BackendFactory).toConstantValue(factory)),
};
`,
  );
}

describe('vmdevd --check-config', () => {
  let dir: TempDir;
  before(() => {
    dir = makeTempDir('vmdevd-check-');
  });
  after(() => dir.remove());

  const check = async (config: unknown) => {
    const file = dir.file(`config-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, JSON.stringify(config));
    return { file, ...(await run(process.execPath, [VMDEVD_BIN, '--check-config', file])) };
  };

  it('says a valid config is valid, and exits 0 without a bus', async () => {
    const r = await check({
      bus: 'unix:path=/nonexistent',
      backends: [{ id: 'a', plugin: 'libvirt', uri: 'test:///default' }],
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `vmdevd: ${r.file}: valid; backends: a (libvirt)\n`);
  });

  it("names the file and the field of a plugin's option, once, and exits 78", async () => {
    const r = await check({ backends: [{ id: 'a', plugin: 'libvirt', uri: 'test:///default', urii: 'x' }] });
    assert.equal(r.code, EX_CONFIG);
    assert.equal(r.stderr, `vmdevd: ${r.file}: backends[0].urii: is not a known field\n`);
  });

  it('counts a plugin that cannot be loaded as an error', async () => {
    const r = await check({ backends: [{ id: 'gone', plugin: './no/such/plugin' }] });
    assert.equal(r.code, EX_CONFIG);
    assert.match(r.stderr, /^vmdevd: .*: backends\[0\] \(gone\): plugin path .*no\/such\/plugin does not exist\n$/);
  });

  it('checks the schema of the config itself the same way', async () => {
    const r = await check({ detachTimeoutSeconds: -1 });
    assert.equal(r.code, EX_CONFIG);
    assert.equal(r.stderr, `vmdevd: ${r.file}: detachTimeoutSeconds: must be > 0\n`);
  });
});

describe('plugins and backends as an operator meets them', () => {
  let stack: Stack;
  let plugins: TempDir;

  before(async () => {
    plugins = makeTempDir('vmdevd-plain-');
    writePlainPlugin(plugins.file('by-package-json'), {
      apiInPackageJson: true,
      schema: { type: 'object', properties: { vmName: { type: 'string' } } },
    });
    writePlainPlugin(plugins.file('by-literal'), { apiInPackageJson: false, schema: { type: 'object' } });
    stack = await startStack({
      backends: [{ id: 'test' }],
      extraBackends: [
        { id: 'plain', plugin: plugins.file('by-package-json'), vmName: 'plainvm' },
        { id: 'literal', plugin: plugins.file('by-literal'), vmName: 'literalvm' },
        { id: 'typo', plugin: 'libvirt', uri: 'tset:///default' },
      ],
    });
  });
  after(async () => {
    await stack?.stop();
    plugins?.remove();
  });

  it('loads a plugin directory holding only package.json and plain JavaScript', async () => {
    const backends = await stack.client.getProperty<Record<string, string>>('Backends');
    assert.equal(backends['plain'], 'connected');
    assert.equal(backends['literal'], 'connected');
    const states = await stack.client.getProperty<Record<string, string>>('TestProperty');
    assert.equal(states['plainvm'], 'running');
    assert.equal(states['literalvm'], 'running');
    const log = await stack.client.subscribeAll();
    assert.equal(await stack.client.testMethod('plainvm', { d: ['type=disk', 'target=vdb'] }), true);
    await log.waitFor((s) => s.member === 'DeviceDetached' && s.body[1] === 'd');
  });

  it('shows a URI libvirt refuses as a configuration error, and does not retry it', async () => {
    const backends = await stack.client.getProperty<Record<string, string>>('Backends');
    assert.match(
      backends['typo']!,
      /^disconnected: start failed: configuration error: uri "tset:\/\/\/default": libvirt has no driver "tset" \(e\.g\. qemu:\/\/\/system, test:\/\/\/default\); fix "uri" and reload$/,
    );
    assert.doesNotMatch(stack.daemon.output(), /backend typo: cannot connect to libvirt/);
  });

  it('refuses an option a schema does not name, though it forgets additionalProperties: false', async () => {
    writeFileSync(
      stack.daemon.configFile,
      JSON.stringify({
        ...JSON.parse(JSON.stringify({ detachTimeoutSeconds: 2, logLevel: 'debug' })),
        backends: [{ id: 'plain', plugin: plugins.file('by-package-json'), vmNme: 'typo' }],
      }),
    );
    stack.daemon.child.kill('SIGHUP');
    await stack.daemon.waitForOutput(/config reload refused.*backends\[0\]\.vmNme: is not a known field/);
  });

  it('tries a failed backend again at the next reload, even with its entry unchanged', async () => {
    const config = {
      detachTimeoutSeconds: 2,
      logLevel: 'debug',
      backends: [
        { id: 'test', plugin: TEST_BACKEND, vms: [{ name: 'vm1', state: 'running' }] },
        { id: 'typo', plugin: 'libvirt', uri: 'tset:///default' },
      ],
    };
    writeFileSync(stack.daemon.configFile, JSON.stringify(config));
    stack.daemon.child.kill('SIGHUP');
    await stack.daemon.waitForOutput(/config reloaded .*backends changed: [^"]*typo/);
  });
});
