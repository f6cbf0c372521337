/**
 * The README's "Writing a backend" example, exactly as printed: compiled
 * against vmdevd/plugin-api as a third-party package, then loaded by the
 * daemon by package name and by path.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { CallError, SignalLog } from '../harness/bus-client.js';
import { run } from '../harness/process.js';
import { startStack, type Stack } from '../harness/stack.js';
import { makeTempDir, type TempDir } from '../harness/temp-dir.js';
import { REPO_ROOT } from '../harness/vmdevd-process.js';

export function readmeExample(): string {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const m = /<!-- example: minimal-backend -->\s*```ts\n([\s\S]*?)\n```/.exec(readme);
  assert.ok(m, 'the README has the minimal backend example');
  return m[1]!;
}

describe('the README plugin example', () => {
  let dir: TempDir;
  let stack: Stack;
  let signals: SignalLog;

  before(async () => {
    dir = makeTempDir('vmdevd-example-');
    const modules = dir.file('node_modules');
    const pkg = join(modules, 'vmdevd-plugin-memory');
    mkdirSync(pkg, { recursive: true });
    symlinkSync(REPO_ROOT, join(modules, 'vmdevd'));
    writeFileSync(join(pkg, 'index.ts'), readmeExample());
    writeFileSync(
      join(pkg, 'package.json'),
      JSON.stringify({
        name: 'vmdevd-plugin-memory',
        version: '1.0.0',
        type: 'module',
        main: 'index.js',
        peerDependencies: { vmdevd: '*' },
      }),
    );
    writeFileSync(
      join(pkg, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'es2023',
          module: 'nodenext',
          moduleResolution: 'nodenext',
          strict: true,
          experimentalDecorators: true,
          skipLibCheck: true,
          types: [],
        },
        files: ['index.ts'],
      }),
    );
    const tsc = await run(join(REPO_ROOT, 'node_modules/.bin/tsc'), ['-p', pkg]);
    assert.equal(tsc.code, 0, `the example compiles:\n${tsc.stdout}${tsc.stderr}`);
    stack = await startStack({
      backends: [{ id: 'test' }],
      extraBackends: [
        { id: 'by-name', plugin: 'vmdevd-plugin-memory', vmName: 'demo' },
        { id: 'by-path', plugin: './node_modules/vmdevd-plugin-memory', vmName: 'demo2' },
      ],
      daemon: { configDir: dir.path },
    });
    signals = await stack.client.subscribeAll();
  });
  after(async () => {
    await stack?.stop();
    dir?.remove();
  });

  it('loads by package name and by path, as two backends', async () => {
    const backends = await stack.client.getProperty<Record<string, string>>('Backends');
    assert.equal(backends['by-name'], 'connected');
    assert.equal(backends['by-path'], 'connected');
    const states = await stack.client.getProperty<Record<string, string>>('TestProperty');
    assert.equal(states['demo'], 'running');
    assert.equal(states['demo2'], 'running');
  });

  it('detaches, refuses an alias with NotSupported, and changes state', async () => {
    assert.equal(
      await stack.client.testMethod('demo', { d1: ['type=disk', 'target=vdb'], a1: ['type=alias', 'name=ua-x'] }),
      true,
    );
    await signals.waitFor((s) => s.member === 'DeviceDetached' && s.body[0] === 'demo' && s.body[1] === 'd1');
    const failed = await signals.waitFor((s) => s.member === 'DeviceDetachFailed' && s.body[1] === 'a1');
    assert.equal(failed.body[2], 'org.example.dbustest.Error.NotSupported');
    await stack.client.setProperty('TestProperty', 'a{ss}', { demo: 'paused' });
    await signals.waitFor(
      (s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)['demo'] === 'paused',
    );
  });

  it('answers GetDevices and AttachDevices with NotSupported: the example has neither', async () => {
    for (const [member, signature, body] of [
      ['GetDevices', 's', ['demo']],
      ['AttachDevices', 'sa{sas}', ['demo', { d: ['type=pci', 'address=01:00.0'] }]],
    ] as const) {
      await assert.rejects(stack.client.call({ member, signature, body: [...body] }), (err: CallError) => {
        assert.equal(err.type, 'org.example.dbustest.Error.NotSupported');
        assert.match(err.text, /cannot (list|attach) devices/);
        return true;
      });
    }
  });

  it('rejects an option the example schema does not allow, at start', async () => {
    const bad = await startStack({
      extraBackends: [{ id: 'x', plugin: './node_modules/vmdevd-plugin-memory', vmName: 42 }],
      daemon: { configDir: dir.path, waitReady: false },
    }).then(
      (s) => s,
      (err: CallError) => err,
    );
    assert.ok(!(bad instanceof Error), bad instanceof Error ? bad.message : '');
    const code = await bad.daemon.exited();
    assert.equal(code, 78);
    assert.match(bad.daemon.output(), /backends\[1\]\.vmName: must be string/);
    await bad.stop();
  });
});
