/**
 * The unit runs node with --jitless so that MemoryDenyWriteExecute=yes can
 * hold. Without systemd as PID 1 the tests apply the same seccomp rules
 * (test/tools/deny-write-execute.py) and run the daemon with the node
 * options of the unit's ExecStart: it must serve calls, and node with its
 * JIT must not survive the same rules (or the check proves nothing).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run } from '../harness/process.js';
import { startStack, type Stack } from '../harness/stack.js';
import { REPO_ROOT } from '../harness/vmdevd-process.js';

const DENY_WX = join(REPO_ROOT, 'test/tools/deny-write-execute.py');
const unit = readFileSync(join(REPO_ROOT, 'systemd/vmdevd.service'), 'utf8');
const activation = readFileSync(join(REPO_ROOT, 'dbus/org.example.dbustest.service'), 'utf8');

/** ExecStart's command: node's options and the daemon's arguments. */
function execStart(): { nodeArgs: string[]; daemonArgs: string[]; line: string } {
  const m = /^ExecStart=(@NODE@ (.*?) ?@PKGLIBDIR@\/bin\/vmdevd(.*))$/m.exec(unit);
  assert.ok(m, 'ExecStart runs @NODE@ [options] @PKGLIBDIR@/bin/vmdevd');
  return { line: m[1]!, nodeArgs: m[2]!.split(' ').filter(Boolean), daemonArgs: m[3]!.split(' ').filter(Boolean) };
}

describe('MemoryDenyWriteExecute and --jitless', () => {
  it('the unit denies writable executable memory and runs node with --jitless, as the activation file does', () => {
    assert.match(unit, /^MemoryDenyWriteExecute=yes$/m);
    const { nodeArgs, daemonArgs, line } = execStart();
    assert.ok(nodeArgs.includes('--jitless'), `node options: ${nodeArgs.join(' ')}`);
    assert.deepEqual(daemonArgs, ['--system', '--config', '@SYSCONFDIR@/vmdevd/config.json']);
    assert.match(activation, new RegExp(`^Exec=${line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
  });

  it('node with its JIT aborts under the same rules', async () => {
    const r = await run('python3', [DENY_WX, process.execPath, '-e', 'let s = 0; for (let i = 0; i < 1e6; i++) s += [i].map((x) => x * 2)[0]; console.log(s)']);
    assert.notEqual(r.code, 0, `node ran with its JIT under the filter: ${r.stdout}`);
  });

  describe('the daemon with the unit node options under the rules', () => {
    let stack: Stack;
    before(async () => {
      stack = await startStack({ daemon: { wrapper: ['python3', DENY_WX], nodeArgs: execStart().nodeArgs } });
    });
    after(async () => {
      await stack?.stop();
    });

    it('starts, detaches, answers reads and stops cleanly', async () => {
      const signals = await stack.client.subscribeAll();
      assert.equal(await stack.client.testMethod('vm1', { d1: ['type=disk', 'target=vdb'] }), true);
      await signals.waitFor((s) => s.member === 'DeviceDetached' && s.body[1] === 'd1');
      assert.deepEqual(await stack.client.getProperty('Backends'), { test: 'connected' });
      assert.doesNotMatch(readFileSync(`/proc/${stack.daemon.pid}/status`, 'utf8'), /^Seccomp:\s+0$/m, 'the filter is in place');
      assert.equal(await stack.daemon.stop(), 0, stack.daemon.output());
    });
  });
});
