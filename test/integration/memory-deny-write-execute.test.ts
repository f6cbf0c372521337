/**
 * The unit runs node with its JIT (MemoryDenyWriteExecute=no); the drop-in
 * systemd/jitless.conf trades speed for W^X (--jitless and
 * MemoryDenyWriteExecute=yes). Without systemd as PID 1 the tests apply the
 * same seccomp rules as MemoryDenyWriteExecute=yes
 * (test/tools/deny-write-execute.py): the daemon with the drop-in's node
 * options must serve calls under them, and node with its JIT must not
 * survive them (which is why the unit does not set it).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run } from '../harness/process.js';
import { startStack, type Stack } from '../harness/stack.js';
import { DAEMON_NODE_ARGS, REPO_ROOT } from '../harness/vmdevd-process.js';

const DENY_WX = join(REPO_ROOT, 'test/tools/deny-write-execute.py');
const unit = readFileSync(join(REPO_ROOT, 'systemd/vmdevd.service'), 'utf8');
const dropIn = readFileSync(join(REPO_ROOT, 'systemd/jitless.conf'), 'utf8');
const activation = readFileSync(join(REPO_ROOT, 'dbus/org.example.dbustest.service'), 'utf8');

/** A file's ExecStart command: node's options and the daemon's arguments. */
function execStart(text: string, key = 'ExecStart'): { nodeArgs: string[]; daemonArgs: string[]; line: string } {
  const m = new RegExp(`^${key}=(@NODE@ (.*?) ?@PKGLIBDIR@\\/bin\\/vmdevd(.*))$`, 'm').exec(text);
  assert.ok(m, `${key} runs @NODE@ [options] @PKGLIBDIR@/bin/vmdevd`);
  return { line: m[1]!, nodeArgs: m[2]!.split(' ').filter(Boolean), daemonArgs: m[3]!.split(' ').filter(Boolean) };
}

describe('MemoryDenyWriteExecute, the JIT and the jitless drop-in', () => {
  it('the unit runs node with its JIT and the options of bin/vmdevd, as the activation file does', () => {
    assert.match(unit, /^MemoryDenyWriteExecute=no$/m);
    const { nodeArgs, daemonArgs, line } = execStart(unit);
    assert.deepEqual(nodeArgs, ['@NODE_ARGS@']);
    assert.ok(
      DAEMON_NODE_ARGS.length > 0 && !DAEMON_NODE_ARGS.includes('--jitless'),
      `bin/vmdevd's options: ${DAEMON_NODE_ARGS.join(' ')}`,
    );
    assert.deepEqual(daemonArgs, ['--system', '--config', '@SYSCONFDIR@/vmdevd/config.json']);
    assert.match(unit, /^Environment=@DAEMON_ENV@$/m);
    assert.match(
      activation,
      new RegExp(`^Exec=/usr/bin/env @DAEMON_ENV@ ${line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'),
    );
  });

  it('the drop-in clears ExecStart and runs node --jitless under MemoryDenyWriteExecute=yes', () => {
    assert.match(dropIn, /^ExecStart=$/m);
    assert.match(dropIn, /^MemoryDenyWriteExecute=yes$/m);
    const { nodeArgs, daemonArgs } = execStart(dropIn);
    assert.deepEqual(nodeArgs, ['--jitless', '--no-expose-wasm', '@NODE_ARGS@']);
    assert.deepEqual(daemonArgs, execStart(unit).daemonArgs);
  });

  it('node with its JIT aborts under the rules of MemoryDenyWriteExecute=yes', async () => {
    const r = await run('python3', [
      DENY_WX,
      process.execPath,
      '-e',
      'let s = 0; for (let i = 0; i < 1e6; i++) s += [i].map((x) => x * 2)[0]; console.log(s)',
    ]);
    assert.notEqual(r.code, 0, `node ran with its JIT under the filter: ${r.stdout}`);
  });

  describe('the daemon with the drop-in node options under the rules', () => {
    let stack: Stack;
    before(async () => {
      stack = await startStack({
        daemon: { wrapper: ['python3', DENY_WX], nodeArgs: ['--jitless', '--no-expose-wasm', ...DAEMON_NODE_ARGS] },
      });
    });
    after(async () => {
      await stack?.stop();
    });

    it('starts, detaches, answers reads and stops cleanly', async () => {
      const signals = await stack.client.subscribeAll();
      assert.equal(await stack.client.testMethod('vm1', { d1: ['type=disk', 'target=vdb'] }), true);
      await signals.waitFor((s) => s.member === 'DeviceDetached' && s.body[1] === 'd1');
      assert.deepEqual(await stack.client.getProperty('Backends'), { test: 'connected' });
      assert.doesNotMatch(
        readFileSync(`/proc/${stack.daemon.pid}/status`, 'utf8'),
        /^Seccomp:\s+0$/m,
        'the filter is in place',
      );
      assert.equal(await stack.daemon.stop(), 0, stack.daemon.output());
    });
  });
});
