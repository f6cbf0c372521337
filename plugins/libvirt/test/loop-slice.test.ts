// requestLoopSlice: the main thread's time slice asked of the kernel. What
// the kernel grants depends on its version (Linux 6.12 and later keep a
// slice per thread, earlier ones none), so each test checks the binding's
// answer against what the kernel itself reports in /proc.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { requestLoopSlice } from '../src/binding.js';

/** The calling thread's slice from /proc, µs; undefined where the kernel shows none. */
function procSliceUs(): number | undefined {
  const m = /^se\.slice\s*:\s*(\d+)/m.exec(readFileSync('/proc/thread-self/sched', 'utf8'));
  return m === null ? undefined : Number(m[1]) / 1000;
}

test('refuses what is not a slice the kernel takes, and asks for nothing then', () => {
  const before = procSliceUs();
  assert.throws(() => requestLoopSlice('300' as unknown as number), {
    name: 'TypeError',
    message: 'requestLoopSlice needs a number of microseconds',
  });
  for (const bad of [0, 99, 100001, 150.5, NaN, Infinity, -300]) {
    assert.throws(() => requestLoopSlice(bad), {
      name: 'RangeError',
      message: 'a slice is a whole number of microseconds from 100 to 100000',
    });
  }
  assert.equal(procSliceUs(), before);
});

test('shortens the main thread slice where the kernel keeps one, and never lengthens it', () => {
  const first = requestLoopSlice(300);
  if (first.afterUs === 0) {
    // A kernel before 6.12: no slice to ask for, and the answer says so.
    assert.equal(first.beforeUs, 0);
    return;
  }
  assert.equal(first.afterUs, Math.min(300, first.beforeUs));
  assert.equal(procSliceUs(), first.afterUs);
  assert.deepEqual(requestLoopSlice(5000), { beforeUs: first.afterUs, afterUs: first.afterUs });
  const shorter = Math.min(200, first.afterUs);
  assert.deepEqual(requestLoopSlice(200), { beforeUs: first.afterUs, afterUs: shorter });
  assert.equal(procSliceUs(), shorter);
});

test('refuses off the main thread', async () => {
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     import(${JSON.stringify(new URL('../src/binding.js', import.meta.url).href)}).then((b) => {
       try { b.requestLoopSlice(300); parentPort.postMessage('granted'); }
       catch (err) { parentPort.postMessage(err.name + ': ' + err.message); }
     });`,
    { eval: true },
  );
  const answer = await new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  await worker.terminate();
  assert.equal(answer, "Error: requestLoopSlice runs on the thread of libvirt's event loop (the main thread)");
});
