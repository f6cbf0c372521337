/**
 * SIGHUP (systemctl reload): vmdevd reads its config file again. A valid
 * file applies at once (backends added, removed and changed, the log level,
 * the timeout, access); an invalid one, or one that changes the bus or the
 * bus name, is refused whole with a line naming the file and the field,
 * and the running config stays. The process stays the same throughout.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { SignalLog } from '../harness/bus-client.js';
import { startStack, TEST_BACKEND, type Stack } from '../harness/stack.js';

describe('config reload on SIGHUP', () => {
  let stack: Stack;
  let log: SignalLog;
  let base: Record<string, unknown>;

  before(async () => {
    stack = await startStack({ config: { logLevel: 'debug' } });
    log = await stack.client.subscribeAll();
    // The file the daemon started with: entries left as they are stay unchanged.
    base = JSON.parse(readFileSync(stack.daemon.configFile, 'utf8')) as Record<string, unknown>;
  });
  after(async () => {
    await stack?.stop();
  });

  /** Writes the config file, sends SIGHUP, and waits for the log line that answers it. */
  async function reload(config: unknown, answer: RegExp): Promise<string> {
    writeFileSync(stack.daemon.configFile, typeof config === 'string' ? config : JSON.stringify(config, null, 2));
    const from = stack.daemon.output().length;
    stack.daemon.child.kill('SIGHUP');
    await stack.daemon.waitForOutput(answer);
    return stack.daemon.output().slice(from);
  }

  it('adds a backend: its VMs join TestProperty and TestSignal, and Backends shows it', async () => {
    const pid = stack.daemon.pid;
    const next = {
      ...base,
      backends: [
        ...(base['backends'] as unknown[]),
        { id: 'extra', plugin: TEST_BACKEND, vms: [{ name: 'newvm', state: 'paused' }] },
      ],
    };
    await reload(next, /config reloaded .*backends added: extra/);
    await log.waitFor((s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)['newvm'] === 'paused');
    assert.deepEqual(await stack.client.getProperty('Backends'), { test: 'connected', extra: 'connected' });
    assert.equal(stack.daemon.pid, pid);
    assert.equal(stack.daemon.child.exitCode, null);
  });

  it('refuses an invalid file whole, naming the file and the field, and keeps the running config', async () => {
    const text = await reload(
      { ...base, logLevel: 'loud' },
      /config reload refused; the running config stays reason=.*logLevel: must be one of/,
    );
    assert.match(text, new RegExp(stack.daemon.configFile.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')));
    assert.deepEqual(await stack.client.getProperty('Backends'), { test: 'connected', extra: 'connected' });
    assert.ok('newvm' in (await stack.client.getProperty<Record<string, string>>('TestProperty')));
  });

  it('refuses options a plugin does not take, before changing anything', async () => {
    await reload(
      { ...base, backends: [{ ...(base['backends'] as object[])[0], generate: 'many' }] },
      /config reload refused.*backends\[0\]\.generate: must be integer/,
    );
    assert.deepEqual(await stack.client.getProperty('Backends'), { test: 'connected', extra: 'connected' });
  });

  it('refuses a change of the bus name: that needs a restart', async () => {
    await reload(
      { ...base, busName: 'org.example.other' },
      /config reload refused.*busName: changed from .* needs a restart/,
    );
    assert.ok(await stack.client.nameOwner());
  });

  it('removes a backend: its VMs leave the map; an unchanged backend is not restarted', async () => {
    const journalBefore = stack.journal().filter((e) => e['op'] === 'stop' && e['backend'] === 'test').length;
    await reload({ ...base, logLevel: 'info' }, /config reloaded .*logLevel info; backends removed: extra/);
    await log.waitFor((s) => s.member === 'TestSignal' && !('newvm' in (s.body[0] as Record<string, string>)));
    assert.deepEqual(await stack.client.getProperty('Backends'), { test: 'connected' });
    assert.equal(
      stack.journal().filter((e) => e['op'] === 'stop' && e['backend'] === 'test').length,
      journalBefore,
      'the unchanged backend kept running',
    );
  });
});
