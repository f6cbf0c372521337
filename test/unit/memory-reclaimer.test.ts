/**
 * When the memory reclaimer runs a full collection: driven check by check
 * with a probe of our own (no timer, no real garbage collector), so each
 * case is exactly the sequence of samples it names.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  CHECK_EVERY_MS,
  GROWTH_BYTES,
  IDLE_BEFORE_COLLECTING_MS,
  IDLE_UTILIZATION,
  MemoryReclaimer,
  type ProcessProbe,
} from '../../src/daemon/memory-reclaimer.js';
import { RootLogger } from '../../src/core/logger.js';

const MiB = 1024 * 1024;
const BUSY = 0.5;
const IDLE = IDLE_UTILIZATION / 2;
/** Idle checks until a collection may run. */
const WAIT = IDLE_BEFORE_COLLECTING_MS / CHECK_EVERY_MS;

function reclaimer(startRss = 60 * MiB) {
  const probe = { rssBytes: startRss, util: IDLE, heap: 20 * MiB };
  const fake: ProcessProbe = { rss: () => probe.rssBytes, utilization: () => probe.util, heapUsed: () => probe.heap };
  const lines: string[] = [];
  let collected = 0;
  const r = new MemoryReclaimer(
    new RootLogger('debug', { write: (l) => lines.push(l) }).child('memory'),
    () => collected++,
    fake,
  );
  /** One check with these samples; whether it collected. */
  const check = (util: number, rssBytes = probe.rssBytes): boolean => {
    probe.util = util;
    probe.rssBytes = rssBytes;
    const before = collected;
    r.check();
    return collected > before;
  };
  return { check, lines, collections: () => collected, r };
}

describe('MemoryReclaimer', () => {
  it('collects once, after the daemon has been idle for the whole wait, when its size grew', () => {
    const { check, collections, lines, r } = reclaimer();
    assert.equal(check(BUSY, 80 * MiB), false, 'never while busy');
    for (let i = 1; i < WAIT; i++) assert.equal(check(IDLE), false, `not after ${i} idle checks`);
    assert.equal(check(IDLE), true, `after ${WAIT} idle checks`);
    for (let i = 0; i < 3 * WAIT; i++) check(IDLE);
    assert.equal(collections(), 1, 'once per busy period');
    assert.equal(r.collections, 1);
    assert.match(lines.join(''), /collected garbage after a burst rssMiB=80\.0 lowMiB=60\.0/);
  });

  it('starts the wait again when the daemon is busy during it', () => {
    const { check, collections } = reclaimer();
    check(BUSY, 80 * MiB);
    for (let i = 1; i < WAIT; i++) check(IDLE);
    check(BUSY); // the pause was a gap inside the burst
    for (let i = 1; i < WAIT; i++) assert.equal(check(IDLE), false);
    assert.equal(check(IDLE), true);
    assert.equal(collections(), 1);
  });

  it('does not collect when the size stayed within the margin of its idle low', () => {
    const { check, collections } = reclaimer();
    check(BUSY, 60 * MiB + GROWTH_BYTES - 1);
    for (let i = 0; i < 2 * WAIT; i++) check(IDLE);
    assert.equal(collections(), 0);
  });

  it('measures growth from the lowest idle size, and collects again after a new busy period', () => {
    const { check, collections } = reclaimer(70 * MiB);
    // Idle at 62 MiB before any work: the low.
    for (let i = 0; i < WAIT; i++) check(IDLE, 62 * MiB);
    check(BUSY, 67 * MiB);
    for (let i = 0; i < WAIT; i++) check(IDLE);
    assert.equal(collections(), 1, '67 MiB is 5 MiB above the idle low of 62');
    // After it, V8 gives the pages back: a new low, then another burst.
    for (let i = 0; i < 5; i++) check(IDLE, 61 * MiB);
    check(BUSY, 64 * MiB);
    for (let i = 0; i < WAIT; i++) check(IDLE);
    assert.equal(collections(), 1, '64 MiB is within the margin of 61');
    check(BUSY, 70 * MiB);
    for (let i = 0; i < WAIT; i++) check(IDLE);
    assert.equal(collections(), 2);
  });
});
