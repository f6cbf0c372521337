/**
 * Does the daemon give back the memory a burst of bad calls took? The
 * phases of the bus fuzz test (test/fuzz/fuzz-driver.ts, the same calls for
 * the same seed) against the daemon run as in the unit (the node options and
 * environment of bin/vmdevd's first line), with its resident size measured:
 *
 *   npm run build && node dist/bench/fuzz-memory.js [--seed N] [--warmup N] [--calls N]
 *
 * 1. Warm-up: one call of each huge kind at the largest size, then
 *    `--warmup` generated calls (default 8,000), so the baseline is the
 *    daemon's working size, with the code and caches of these calls.
 * 2. Baseline: VmRSS sampled every 500 ms, first for as long as the daemon
 *    waits idle before it collects (src/daemon/memory-reclaimer.ts: one
 *    full collection, 30 s after a burst) and 6 s more, then until it has
 *    changed by less than 1% over 12 s (at most 30 s more). V8's memory
 *    reducer shrinks the heap after that collection in rounds some seconds
 *    apart; the quiet window is longer than that delay.
 * 3. The main phase: `--calls` generated calls (default 12,000), VmRSS
 *    sampled every 100 ms; the peak is the largest sample.
 * 4. Settling: VmRSS sampled every 500 ms for the same wait, then until
 *    it has changed by less than 1% over 12 s (at most 60 s more), noting
 *    when it first came within 10% of the baseline (the target).
 *
 * Prints each size split into anonymous memory (heaps) and file pages (code,
 * libraries), the ratio after settling to the baseline, and whether the
 * target was met. Exits 1 when the run itself went wrong (a call not
 * answered as the fuzz test requires, the daemon gone), 0 otherwise.
 */
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { FUZZ_STACK, FuzzDriver, Tally } from '../test/fuzz/fuzz-driver.js';
import { RawClient } from '../test/fuzz/raw-client.js';
import { Random } from '../test/fuzz/random-dbus.js';
import { startStack } from '../test/harness/stack.js';
import { CHECK_EVERY_MS, IDLE_BEFORE_COLLECTING_MS } from '../src/daemon/memory-reclaimer.js';
import { parseCommandLine } from './lib.js';

const TARGET = 1.1;
/** Until the reclaimer has had its chance: its wait, a check's period and V8's first shrink after. */
const RECLAIMER_MS = IDLE_BEFORE_COLLECTING_MS + CHECK_EVERY_MS + 4000;

const USAGE = `
usage: node dist/bench/fuzz-memory.js [--seed N] [--warmup N] [--calls N]
`;

const { values: opts } = parseCommandLine(USAGE, {
  options: {
    seed: { type: 'string' },
    warmup: { type: 'string', default: '8000' },
    calls: { type: 'string', default: '12000' },
  },
});

interface Rss {
  readonly kib: number;
  readonly anonKib: number;
  readonly fileKib: number;
}

function rss(pid: number): Rss {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
    if (m === null) throw new Error(`no ${name} for ${pid}`);
    return Number(m[1]);
  };
  return { kib: kib('VmRSS'), anonKib: kib('RssAnon'), fileKib: kib('RssFile') };
}

const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;
const show = (r: Rss) => `${mib(r.kib)} (anon ${mib(r.anonKib)}, file ${mib(r.fileKib)})`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Samples VmRSS every 500 ms for at least `minMs`, then until it has stayed
 * within 1% for `quietMs`, or `maxMs` have passed; notes when it was first
 * at or below `target`.
 */
async function settle(
  pid: number,
  options: { minMs: number; maxMs: number; quietMs: number; target?: number },
): Promise<{ rss: Rss; waitedMs: number; targetMs: number | undefined }> {
  const start = performance.now();
  const samples: Rss[] = [];
  const window = Math.ceil(options.quietMs / 500) + 1;
  let targetMs: number | undefined;
  for (;;) {
    samples.push(rss(pid));
    if (options.target !== undefined && targetMs === undefined && samples.at(-1)!.kib <= options.target)
      targetMs = Math.round(performance.now() - start);
    const last = samples.slice(-window).map((s) => s.kib);
    const waited = performance.now() - start;
    if (waited >= options.minMs && last.length === window && Math.max(...last) <= Math.min(...last) * 1.01) break;
    if (waited >= options.maxMs) break;
    await sleep(500);
  }
  return { rss: samples.at(-1)!, waitedMs: Math.round(performance.now() - start), targetMs };
}

async function main(): Promise<number> {
  const seed = opts.seed !== undefined ? Number(opts.seed) : randomInt(2 ** 31);
  const warmupCalls = Number(opts.warmup);
  const calls = Number(opts.calls);
  console.error(`fuzz-memory: seed ${seed}, ${warmupCalls} warm-up calls, ${calls} calls`);
  const stack = await startStack(FUZZ_STACK);
  const client = await RawClient.connect(stack.bus.address);
  try {
    const pid = stack.daemon.pid;
    const driver = new FuzzDriver(client, new Random(seed), seed, () => stack.bus.process.output().slice(-2000));
    const warm = new Tally();
    await driver.sendLargest(warm);
    await driver.run(0, warmupCalls, warm);
    const baseline = await settle(pid, { minMs: RECLAIMER_MS, quietMs: 12_000, maxMs: RECLAIMER_MS + 30_000 });

    const tally = new Tally();
    let peak = rss(pid);
    const sampler = setInterval(() => {
      try {
        const now = rss(pid);
        if (now.kib > peak.kib) peak = now;
      } catch {
        // The daemon is gone: the run reports it.
      }
    }, 100);
    const started = performance.now();
    try {
      await driver.run(warmupCalls, calls, tally);
    } finally {
      clearInterval(sampler);
    }
    const seconds = (performance.now() - started) / 1000;
    const end = rss(pid);
    if (end.kib > peak.kib) peak = end;
    const target = Math.floor(baseline.rss.kib * TARGET);
    const after = await settle(pid, { minMs: RECLAIMER_MS, quietMs: 12_000, maxMs: RECLAIMER_MS + 60_000, target });

    const failures = [...warm.failures, ...tally.failures];
    const ratio = after.rss.kib / baseline.rss.kib;
    const met = after.rss.kib <= target;
    console.log(`# The daemon's resident size around ${calls} fuzz calls (seed ${seed})`);
    console.log('');
    console.log('| when | VmRSS |');
    console.log('| --- | --- |');
    console.log(
      `| after a warm-up of ${warmupCalls} calls, settled in ${baseline.waitedMs} ms | ${show(baseline.rss)} |`,
    );
    console.log(`| peak during the ${calls} calls (${seconds.toFixed(1)} s) | ${show(peak)} |`);
    console.log(`| after settling ${after.waitedMs} ms | ${show(after.rss)} |`);
    console.log('');
    console.log(
      `after / baseline: ${ratio.toFixed(3)} (${((ratio - 1) * 100).toFixed(1)}%); target ≤ ${TARGET}: ${met ? 'met' : 'missed'}` +
        (after.targetMs !== undefined ? ` (first within it ${after.targetMs} ms after the calls)` : ''),
    );
    if (stack.daemon.child.exitCode !== null) {
      console.error(`fuzz-memory: the daemon exited:\n${stack.daemon.output().slice(-3000)}`);
      return 1;
    }
    if (failures.length > 0) {
      console.error(`fuzz-memory: ${failures.length} calls went wrong (the fuzz test would fail):`);
      for (const f of failures.slice(0, 10)) console.error(`  ${f}`);
      return 1;
    }
    return 0;
  } finally {
    client.close();
    await stack.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`fuzz-memory: ${(err as Error)?.stack ?? String(err)}`);
    process.exit(1);
  },
);
