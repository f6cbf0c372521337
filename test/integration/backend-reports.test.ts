/**
 * What a backend reports of a VM it has already published is checked as
 * the first report was: a state vmdevd does not know shows as `nostate`,
 * a UUID the bus cannot carry is left out, a name it cannot carry leaves
 * the report out. The state of a VM whose name, UUID and type are the ones
 * already checked is taken as it is (the path of every state event).
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { startStack, type Stack } from '../harness/stack.js';

const fixture = fileURLToPath(new URL('../fixtures/plugins/reports-states.js', import.meta.url));

describe("a backend's reports of a VM it has published", () => {
  let stack: Stack;
  before(async () => {
    stack = await startStack({ backends: [], extraBackends: [{ id: 'rs', plugin: fixture }] });
  });
  after(async () => {
    await stack?.stop();
  });

  /** Asks `state` of the VM; the reply comes after the backend's report was taken. */
  async function report(state: string): Promise<{ map: Record<string, string>; vm: Record<string, string> }> {
    await stack.client.setProperty('TestProperty', 'a{ss}', { 'rs-a': state });
    const map = await stack.client.getProperty<Record<string, string>>('TestProperty');
    const vms = await stack.client.getProperty<Record<string, Record<string, string>>>('Vms');
    return { map, vm: vms['rs-a']! };
  }

  it('a known state, with the same name, UUID and type, is taken', async () => {
    const { map, vm } = await report('paused');
    assert.deepEqual(map, { 'rs-a': 'paused' });
    assert.deepEqual(vm, { name: 'rs-a', state: 'paused', backend: 'rs', uuid: 'u-1', type: 'web' });
  });

  it('a state vmdevd does not know shows as nostate, even with the same name, UUID and type', async () => {
    const { map, vm } = await report('running');
    assert.deepEqual(map, { 'rs-a': 'nostate' });
    assert.equal(vm.state, 'nostate');
    assert.match(stack.daemon.output(), /VM reported with an unknown state; showing nostate/);
  });

  it('a UUID the bus cannot carry is left out, the state is taken', async () => {
    const { map, vm } = await report('shutoff');
    assert.deepEqual(map, { 'rs-a': 'shutoff' });
    assert.deepEqual(vm, { name: 'rs-a', state: 'shutoff', backend: 'rs', type: 'web' });
    assert.match(stack.daemon.output(), /VM reported with an invalid uuid; leaving it out/);
  });

  it('a name the bus cannot carry leaves the report out', async () => {
    const { map } = await report('shutdown');
    assert.deepEqual(map, { 'rs-a': 'shutoff' });
    assert.match(stack.daemon.output(), /ignoring a VM with an invalid name/);
  });
});
