/**
 * Plugins and backends: broken plugins are isolated and shown in Backends,
 * several backends share one map with deterministic keys, a disconnected
 * backend is reported, and state changes are announced (a burst while a signal waits to be written goes out as one).
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type { CallError, SignalLog } from '../harness/bus-client.js';
import { startStack, type Stack } from '../harness/stack.js';

const E = 'org.example.dbustest.Error.';
const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/plugins/${name}.js`, import.meta.url));

async function callError(promise: Promise<unknown>): Promise<CallError> {
  try {
    await promise;
  } catch (err) {
    return err as CallError;
  }
  assert.fail('expected the call to fail');
}

describe('broken plugins', () => {
  let stack: Stack;

  before(async () => {
    stack = await startStack({
      backends: [{ id: 'good' }],
      extraBackends: [
        { id: 'wrong-api', plugin: fixture('wrong-api') },
        { id: 'api-v1', plugin: fixture('api-v1') },
        { id: 'import-error', plugin: fixture('throws-on-import') },
        { id: 'not-a-plugin', plugin: fixture('no-export') },
        { id: 'create-error', plugin: fixture('create-throws') },
        { id: 'bad-schema', plugin: fixture('bad-schema') },
        { id: 'reaches-core', plugin: fixture('reaches-core') },
        { id: 'start-error', plugin: fixture('start-rejects') },
        { id: 'missing-path', plugin: './no/such/plugin' },
        { id: 'missing-package', plugin: 'vmdevd-plugin-that-does-not-exist' },
      ],
    });
  });
  after(async () => {
    await stack?.stop();
  });

  it('shows each failure in Backends with its reason, and the good backend connected', async () => {
    const backends = await stack.client.getProperty<Record<string, string>>('Backends');
    assert.equal(backends['good'], 'connected');
    assert.match(
      backends['wrong-api']!,
      /^disconnected: plugin ".*wrong-api.js" targets plugin API 5; this vmdevd implements plugin API 4$/,
    );
    assert.match(
      backends['import-error']!,
      /^disconnected: plugin ".*" failed to load from .*: this plugin cannot be imported$/,
    );
    assert.match(backends['not-a-plugin']!, /exports no plugin/);
    assert.match(backends['create-error']!, /could not create the backend: no hypervisor here/);
    // A third-party plugin's schema is checked against JSON Schema's meta-schema.
    assert.match(
      backends['bad-schema']!,
      /plugin "bad-schema" has an invalid options schema: .*maxLength must be >= 0/,
    );
    // A plugin's container holds nothing of the core's.
    assert.match(backends['reaches-core']!, /failed to set up its container: .*DeviceJobService/);
    assert.match(backends['start-error']!, /start failed: the hypervisor refused the connection/);
    assert.match(backends['missing-path']!, /plugin path .*no\/such\/plugin does not exist/);
    assert.match(backends['missing-package']!, /plugin "vmdevd-plugin-that-does-not-exist" is not installed/);
  });

  it('keeps serving with the good backend', async () => {
    assert.deepEqual(Object.keys(await stack.client.getProperty<Record<string, string>>('TestProperty')).sort(), [
      'old-vm',
      'vm1',
      'vm2',
      'vm3',
    ]);
  });

  it('loads a plugin built for the previous plugin API, and answers what it lacks with NotSupported', async () => {
    assert.equal((await stack.client.getProperty<Record<string, string>>('Backends'))['api-v1'], 'connected');
    const signals = await stack.client.subscribeAll();
    assert.equal(await stack.client.testMethod('old-vm', { old: ['type=disk', 'target=vdb'] }), true);
    await signals.waitFor((s) => s.member === 'DeviceDetached' && s.body[1] === 'old');
    const list = await callError(stack.client.call({ member: 'GetDevices', signature: 's', body: ['old-vm'] }));
    assert.equal(list.type, `${E}NotSupported`);
    assert.match(list.text, /backend "api-v1" \(plugin "api-v1", plugin API 1\) cannot list devices/);
    const attach = await callError(
      stack.client.call({
        member: 'AttachDevices',
        signature: 'sa{sas}',
        body: ['old-vm', { d: ['type=disk', 'target=vdb', 'source=/images/d.img', 'bus=virtio'] }],
      }),
    );
    assert.equal(attach.type, `${E}NotSupported`);
    assert.match(attach.text, /VM "old-vm" belongs to backend "api-v1", which cannot attach devices/);
    // A plugin of version 1 cannot check what describes a device: no detach that would not be checked.
    assert.equal(
      await stack.client.testMethod('old-vm', { described: ['type=disk', 'target=vdc', 'source=/images/c.img'] }),
      true,
    );
    const described = await signals.waitFor((s) => s.member === 'DeviceDetachFailed' && s.body[1] === 'described');
    assert.equal(described.body[2], `${E}NotSupported`);
    assert.match(described.body[3] as string, /\(plugin API 1\) cannot check source; detach without them/);
  });

  it('says a VM may be in a failed backend rather than that it does not exist', async () => {
    const e = await callError(stack.client.testMethod('elsewhere', { d: ['type=disk', 'target=vdb'] }));
    assert.equal(e.type, `${E}BackendUnavailable`);
    assert.match(e.text, /no VM matches "elsewhere", but backend "wrong-api"/);
  });

  it('survives a plugin that throws at run time and shows it in Backends', async () => {
    const signals = await stack.client.subscribeAll();
    await stack.control('good', { cmd: 'crash', message: 'kaboom from the plugin' });
    await signals.waitFor(
      (s) =>
        s.member === 'PropertiesChanged' && JSON.stringify(s.body).includes('plugin crashed: kaboom from the plugin'),
    );
    const backends = await stack.client.getProperty<Record<string, string>>('Backends');
    assert.equal(backends['good'], 'disconnected: plugin crashed: kaboom from the plugin');
    await stack.daemon.waitForOutput(/a plugin threw an uncaught exception error="kaboom from the plugin"/);
    // The plugin recovers by reporting its health again.
    await stack.control('good', { cmd: 'health', connected: true });
    assert.equal((await stack.client.getProperty<Record<string, string>>('Backends'))['good'], 'connected');
    assert.equal(await stack.client.testMethod('vm1', { d: ['type=disk', 'target=vdb'] }), true);
  });
});

describe('several backends', () => {
  let stack: Stack;
  let signals: SignalLog;

  before(async () => {
    stack = await startStack({
      backends: [
        {
          id: 'east',
          vms: [
            { name: 'shared', state: 'running' },
            { name: 'east-only', state: 'paused', type: 'db' },
          ],
        },
        {
          id: 'west',
          vms: [
            { name: 'shared', state: 'shutoff' },
            { name: 'west-only', state: 'running', type: 'db' },
          ],
          startDelayMs: 300,
        },
      ],
    });
    signals = await stack.client.subscribeAll();
  });
  after(async () => {
    await stack?.stop();
  });

  it('keys colliding names by backend id and the rest by name', async () => {
    assert.deepEqual(await stack.client.getProperty('TestProperty'), {
      'east-only': 'paused',
      'east/shared': 'running',
      'west-only': 'running',
      'west/shared': 'shutoff',
    });
  });

  it('selects by key, and reports outcomes with the key', async () => {
    assert.equal(await stack.client.testMethod('west/shared', { k: ['type=disk', 'target=vdb'] }), true);
    const s = await signals.waitFor((x) => x.member === 'DeviceDetached' && x.body[1] === 'k');
    assert.equal(s.body[0], 'west/shared');
    const e = await callError(stack.client.testMethod('shared', { k2: ['type=disk', 'target=vdb'] }));
    assert.equal(e.type, `${E}AmbiguousSelector`);
    assert.match(e.text, /east\/shared, west\/shared/);
  });

  it('returns to the plain name when the collision ends', async () => {
    await stack.control('west', { cmd: 'remove', name: 'shared' });
    await signals.waitFor((s) => s.member === 'TestSignal' && 'shared' in (s.body[0] as object));
    assert.deepEqual(await stack.client.getProperty('TestProperty'), {
      'east-only': 'paused',
      shared: 'running',
      'west-only': 'running',
    });
    await stack.control('west', { cmd: 'add', vm: { name: 'shared', state: 'shutoff' } });
    await signals.waitFor((s) => s.member === 'TestSignal' && 'west/shared' in (s.body[0] as object));
  });

  it('reports a disconnected backend in Backends and refuses its VMs with BackendUnavailable', async () => {
    await stack.control('west', { cmd: 'health', connected: false, reason: 'hypervisor went away' });
    await signals.waitFor(
      (s) => s.member === 'PropertiesChanged' && JSON.stringify(s.body).includes('hypervisor went away'),
    );
    assert.equal(
      (await stack.client.getProperty<Record<string, string>>('Backends'))['west'],
      'disconnected: hypervisor went away',
    );
    const before = stack.journal().length;
    const e = await callError(stack.client.testMethod('west-only', { d: ['type=disk', 'target=vdb'] }));
    assert.equal(e.type, `${E}BackendUnavailable`);
    assert.match(e.text, /belongs to backend "west", which is disconnected: hypervisor went away/);
    const s = await callError(
      stack.client.setProperty('TestProperty', 'a{ss}', { 'east-only': 'running', 'west-only': 'paused' }),
    );
    assert.equal(s.type, `${E}BackendUnavailable`);
    assert.deepEqual(await stack.journalUntilBarrier(before, 'east-only'), [], 'nothing was started or applied');
    await stack.control('west', { cmd: 'health', connected: true });
    assert.equal(await stack.client.testMethod('west-only', { d: ['type=disk', 'target=vdb'] }), true);
  });

  it('reports a refused state change with the backend error name', async () => {
    await stack.control('east', { cmd: 'add', vm: { name: 'refuse-me', state: 'running' } });
    const e = await callError(stack.client.setProperty('TestProperty', 'a{ss}', { 'refuse-me': 'paused' }));
    assert.equal(e.type, `${E}NotSupported`);
    assert.match(e.text, /1 of 1 state changes failed \(0 applied\): refuse-me: the test backend refuses/);
  });

  it('announces the first change of a burst at once, and never loses its last state', async () => {
    // The first change goes out at once; the rest wait until that signal
    // was written to the bus, and go out as one map.
    const from = signals.signals.length;
    const burst = ['running', 'paused', 'crashed', 'running', 'blocked', 'paused', 'running', 'pmsuspended', 'shutoff'];
    await stack.control('east', { cmd: 'burst', vm: 'east-only', states: burst });
    await signals.waitFor(
      (s) => s.member === 'TestSignal' && (s.body[0] as Record<string, string>)['east-only'] === 'shutoff',
    );
    // A later call's reply: every signal the daemon sent before it has arrived.
    await stack.client.getProperty('TestProperty');
    const emitted = signals.signals
      .slice(from)
      .filter((s) => s.member === 'TestSignal')
      .map((s) => (s.body[0] as Record<string, string>)['east-only']);
    assert.deepEqual(emitted, ['running', 'shutoff'], 'the first state at once, the last once the first was written');
  });
});
