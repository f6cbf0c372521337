/**
 * The qmp backend's options as the daemon checks them, and the plugin
 * loaded by name next to the libvirt one: two backends in one daemon.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { run } from 'vmdevd/testing/process';
import { startQemu, type QemuProcess } from 'vmdevd/testing/qemu-process';
import { startStack, type Stack } from 'vmdevd/testing/stack';
import { makeTempDir } from 'vmdevd/testing/temp-dir';
import { VMDEVD_BIN } from 'vmdevd/testing/vmdevd-process';
import { QmpClient } from '../src/qmp-client.js';
import { stateSignal } from './support.js';

const EX_CONFIG = 78;
const UUID = '5f3c2a10-8e4b-4c1d-9a7e-0b6d2f4e8c31';

describe('qmp backend: options', () => {
  const dir = makeTempDir('vmdevd-qmp-config-');
  after(() => dir.remove());

  async function runWith(backend: Record<string, unknown>): Promise<{ code: number; stderr: string }> {
    const file = dir.file(`config-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, JSON.stringify({ backends: [{ id: 'qemu', plugin: 'qmp', ...backend }] }));
    const r = await run(process.execPath, [VMDEVD_BIN, '--address', 'unix:path=/nonexistent', '--config', file]);
    return { code: r.code, stderr: r.stderr };
  }

  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['neither vms nor socketDir', {}, /backends\[0\]\.vms: is required/],
    ['an empty vms without socketDir', { vms: [] }, /backends\[0\]\.vms: must NOT have fewer than 1 items/],
    [
      'a VM without a socket, and no socketDir',
      { vms: [{ name: 'a' }] },
      /backends\[0\]\.vms\[0\]\.socket: is required/,
    ],
    ['a relative socket path', { vms: [{ name: 'a', socket: 'a.qmp' }] }, /socket: must match pattern "\^\/"/],
    ['a VM name with a slash', { vms: [{ name: 'a/b', socket: '/run/a.qmp' }] }, /name: must match pattern/],
    ['a relative socketDir', { socketDir: 'qmp' }, /backends\[0\]\.socketDir: must match pattern/],
    [
      'an unknown option',
      { socketDir: '/run/vmdevd/qmp', uri: 'qemu:///system' },
      /backends\[0\]\.uri: is not a known field/,
    ],
  ];
  for (const [what, backend, message] of cases) {
    it(`refuses ${what} at start, naming the field`, async () => {
      const r = await runWith(backend);
      assert.equal(r.code, EX_CONFIG, r.stderr);
      assert.match(r.stderr, message);
    });
  }

  it('reports a VM name or socket given twice in Backends, and starts nothing for it', async () => {
    const stack = await startStack({
      backends: [],
      extraBackends: [
        {
          id: 'twice',
          plugin: 'qmp',
          vms: [
            { name: 'a', socket: dir.file('a.qmp') },
            { name: 'a', socket: dir.file('b.qmp') },
          ],
        },
        {
          id: 'same',
          plugin: 'qmp',
          vms: [
            { name: 'a', socket: dir.file('a.qmp') },
            { name: 'b', socket: dir.file('a.qmp') },
          ],
        },
      ],
    });
    try {
      assert.deepEqual(await stack.client.getProperty('Backends'), {
        twice: 'disconnected: plugin "qmp" could not create the backend: vms[1].name: "a" is also the name of vms[0]',
        same: `disconnected: plugin "qmp" could not create the backend: vms[1].socket: ${dir.file('a.qmp')} is also the socket of vms[0]`,
      });
      assert.deepEqual(await stack.client.getProperty('TestProperty'), {});
    } finally {
      await stack.stop();
    }
  });
});

describe('qmp and libvirt backends in one daemon', { timeout: 120_000 }, () => {
  let qemu: QemuProcess;
  let monitor: QmpClient;
  let stack: Stack;

  before(async () => {
    qemu = await startQemu({ args: ['-uuid', UUID.toUpperCase()] });
    monitor = await QmpClient.connect(qemu.socket('test'));
    stack = await startStack({
      backends: [],
      extraBackends: [
        { id: 'virt', plugin: 'libvirt', uri: 'test:///default' },
        { id: 'qemu', plugin: 'qmp', vms: [{ name: 'edge', type: 'cluster', socket: qemu.socket('vmdevd') }] },
      ],
    });
  });

  after(async () => {
    await stack?.stop();
    monitor?.close();
    await qemu?.stop();
  });

  it('shows the VMs of both in TestProperty, and both backends connected', async () => {
    assert.deepEqual(await stack.client.getProperty('TestProperty'), { edge: 'running', test: 'running' });
    assert.deepEqual(await stack.client.getProperty('Backends'), { qemu: 'connected', virt: 'connected' });
    const vms = await stack.client.getProperty<Record<string, Record<string, string>>>('Vms');
    assert.equal(vms['edge']!['backend'], 'qemu');
    assert.equal(vms['edge']!['uuid'], UUID, "QEMU's -uuid, lower-case");
    assert.equal(vms['edge']!['type'], 'cluster');
    assert.equal(vms['test']!['backend'], 'virt');
  });

  it('follows each in TestSignal, which carries both', async () => {
    const signals = await stack.client.subscribeAll();
    await monitor.execute('stop');
    const s = await stateSignal(signals, 'edge', 'paused');
    assert.deepEqual(s.body[0], { edge: 'paused', test: 'running' });
    await stack.client.setProperty('TestProperty', 'a{ss}', { test: 'paused', edge: 'running' });
    await signals.waitFor(
      (x) =>
        x.member === 'TestSignal' &&
        (x.body[0] as Record<string, string>)['test'] === 'paused' &&
        (x.body[0] as Record<string, string>)['edge'] === 'running',
      20_000,
      'both changed',
    );
  });
});
