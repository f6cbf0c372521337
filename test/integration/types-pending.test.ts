/**
 * A backend that never learns its VMs' types (the types-later fixture,
 * which publishes with `typesPending` and waits for a test that never
 * comes here): the map is on the bus at once, a `TestMethod` by selector
 * waits, and a shutdown meanwhile answers it with "shutting down" rather
 * than leaving it without a reply; nothing was detached.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import type { CallError } from '../harness/bus-client.js';
import { startStack, type Stack } from '../harness/stack.js';

const fixture = fileURLToPath(new URL('../fixtures/plugins/types-later.js', import.meta.url));

describe('a request waiting for types', () => {
  let stack: Stack | undefined;
  after(async () => {
    await stack?.stop();
  });

  it('is answered "shutting down" when vmdevd stops meanwhile', async () => {
    stack = await startStack({ backends: [], extraBackends: [{ id: 'tl', plugin: fixture }] });
    const { client, daemon } = stack;
    assert.deepEqual(await client.getProperty('TestProperty'), { 'tl-a': 'running', 'tl-b': 'running' });

    let settled = false;
    const answer = client.testMethod('web', { d: ['type=disk', 'target=vdb'] }).then(
      (accepted) => ({ accepted }),
      (err: CallError) => ({ err }),
    );
    void answer.then(() => (settled = true));
    // A bus barrier: this reply comes after vmdevd has read the TestMethod.
    await client.getProperty('TestProperty');
    assert.equal(settled, false, 'no answer while the types are unknown');

    daemon.child.kill('SIGTERM');
    const result = await answer;
    assert.ok('err' in result, `refused, not ${JSON.stringify(result)}`);
    assert.equal(result.err.type, 'org.example.dbustest.Error.Failed');
    assert.match(result.err.text, /shutting down/);
    assert.equal(await daemon.exited(), 0);
    assert.doesNotMatch(daemon.output(), /accepted for/);
  });
});
