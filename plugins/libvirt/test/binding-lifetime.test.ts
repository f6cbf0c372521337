// How connections end with their process: each case runs in a process of
// its own (fixtures/lifetime.ts), which must exit by itself with code 0.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const fixture = fileURLToPath(new URL('./fixtures/lifetime.js', import.meta.url));

function run(mode: string): { stdout: string; stderr: string } {
  // A process that something keeps alive never exits: the timeout catches it.
  const result = spawnSync(process.execPath, ['--expose-gc', fixture, mode], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(result.error, undefined, `${mode}: ${String(result.error)}`);
  assert.equal(result.signal, null, `${mode} died of ${result.signal}: ${result.stderr}`);
  assert.equal(result.status, 0, `${mode} exited with ${result.status}: ${result.stderr}`);
  return { stdout: result.stdout, stderr: result.stderr };
}

test('a process whose connections are closed exits on its own', () => {
  assert.match(run('idle-exit').stdout, /done: idle-exit/);
});

test('garbage-collected connections are closed and let the process exit', () => {
  assert.match(run('gc').stdout, /done: gc/);
});

test('process.exit() with a connection open does not crash', () => {
  run('exit-while-open');
});

test('a worker thread torn down with connections open cleans them up', () => {
  assert.match(run('worker-teardown').stdout, /done: worker-teardown/);
});

test('an exception thrown by the event listener is an uncaught exception, not a crash', () => {
  const { stdout } = run('throwing-listener');
  // One for the suspend event, one for the resume event.
  assert.equal(stdout.match(/uncaught: listener failed/g)?.length, 2);
  assert.match(stdout, /done: throwing-listener/);
});
