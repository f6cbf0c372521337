/**
 * Depending on vmdevd from outside the repository, as the README says: the
 * tarball `npm pack` makes is installed in an empty directory; a client
 * program and the README's plugin are compiled against it (the plugin with
 * the README's tsconfig); the daemon from the tarball loads the plugin by
 * path, and the client talks to it. Nothing of the checkout is used but the
 * tarball and the TypeScript compiler.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startPrivateBus, type PrivateBus } from '../harness/dbus-daemon.js';
import { run, startProcess, type ManagedProcess } from '../harness/process.js';
import { makeTempDir, type TempDir } from '../harness/temp-dir.js';
import { REPO_ROOT } from '../harness/vmdevd-process.js';

const TSC = join(REPO_ROOT, 'node_modules/.bin/tsc');

describe('the npm pack tarball, from outside the repository', { timeout: 300_000 }, () => {
  let dir: TempDir;
  let bus: PrivateBus | undefined;
  let daemon: ManagedProcess | undefined;
  let app: string;

  before(async () => {
    dir = makeTempDir('vmdevd-pack-');
    const packed = await run('npm', ['pack', '--silent', '--pack-destination', dir.path], { cwd: REPO_ROOT });
    assert.equal(packed.code, 0, packed.stderr);
    const tarball = join(
      dir.path,
      readdirSync(dir.path).find((f) => f.endsWith('.tgz'))!,
    );
    app = dir.file('app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'uses-vmdevd', private: true, type: 'module' }));
    // The dependencies come from npm's cache (npm ci filled it) when it has them.
    const installed = await run(
      'npm',
      ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball, '@types/node@20'],
      { cwd: app },
    );
    assert.equal(installed.code, 0, installed.stderr);
  });
  after(async () => {
    await daemon?.stop();
    await bus?.stop();
    dir?.remove();
  });

  it('holds what the client and the plugin need, and no test or source file beyond them', async () => {
    const list = await run('tar', [
      '-tzf',
      join(
        dir.path,
        readdirSync(dir.path).find((f) => f.endsWith('.tgz'))!,
      ),
    ]);
    const files = list.stdout.split('\n').filter(Boolean);
    for (const needed of [
      'package/dist/bundle/client.js',
      'package/dist/bundle/plugin-api.js',
      'package/dist/src/client/index.d.ts',
      'package/dist/src/plugin-api.d.ts',
      'package/bin/vmdevd',
      'package/dbus/org.example.dbustest.xml',
    ]) {
      assert.ok(files.includes(needed), `${needed} is in the tarball`);
    }
    assert.ok(!files.some((f) => f.startsWith('package/src/') || f.endsWith('.test.js') || f.endsWith('.map')));
  });

  it('compiles a plugin and a client against it, and runs both with the daemon from the tarball', async () => {
    // The README's plugin, with the README's tsconfig.
    const plugin = join(app, 'plugin');
    mkdirSync(join(plugin, 'src'), { recursive: true });
    copyFileSync(join(REPO_ROOT, 'examples/memory-backend/src/index.ts'), join(plugin, 'src/index.ts'));
    copyFileSync(join(REPO_ROOT, 'examples/memory-backend/tsconfig.json'), join(plugin, 'tsconfig.json'));
    copyFileSync(join(REPO_ROOT, 'examples/memory-backend/package.json'), join(plugin, 'package.json'));
    let tsc = await run(TSC, ['-p', plugin]);
    assert.equal(tsc.code, 0, tsc.stdout + tsc.stderr);

    writeFileSync(
      join(app, 'client.ts'),
      `import { VmdevClient, type DeviceOutcome } from 'vmdevd/client';
const client = await VmdevClient.connect({ bus: process.argv[2]! });
try {
  const result = await client.detach('packed', { d1: ['type=disk', 'target=vdb'] }, { timeoutMs: 20_000 });
  const outcomes: readonly DeviceOutcome[] = result.outcomes;
  console.log(JSON.stringify({ states: await client.states(), outcomes }));
} finally {
  client.close();
}
`,
    );
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'es2023',
          module: 'nodenext',
          moduleResolution: 'nodenext',
          strict: true,
          skipLibCheck: true,
          types: ['node'],
        },
        files: ['client.ts'],
      }),
    );
    tsc = await run(TSC, ['-p', app]);
    assert.equal(tsc.code, 0, tsc.stdout + tsc.stderr);

    bus = await startPrivateBus();
    const config = join(app, 'config.json');
    writeFileSync(config, JSON.stringify({ backends: [{ id: 'mem', plugin: './plugin', vmName: 'packed' }] }));
    daemon = startProcess(join(app, 'node_modules/vmdevd/bin/vmdevd'), ['--address', bus.address, '--config', config]);
    await daemon.waitForOutput(/ready busName=org\.example\.dbustest/, 30_000);

    const r = await run(process.execPath, ['client.js', bus.address], { cwd: app });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), {
      states: { packed: 'running' },
      outcomes: [{ action: 'detach', vm: 'packed', device: 'd1', ok: true }],
    });
  });
});
