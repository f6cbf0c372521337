/**
 * Where the slow calls of `TestMethod` on the test driver come from. One
 * vmdevd with the libvirt plugin on `test:///default` runs under V8's CPU
 * profiler (a sample every 50 µs), libvirt-dbus beside it on the same
 * private bus. After warm-up rounds, `bench/c/build/load --samples` drives
 * one round of each, one call in flight, and writes every call's latency
 * and the time it ended on CLOCK_MONOTONIC, the clock of the profile. So
 * each call is matched with what the daemon's main thread did while it
 * waited: a call is slow when it took longer than libvirt-dbus's p99 in
 * the same run, and the slow calls' time is split into waiting (the main
 * thread idle: the call or its reply was elsewhere, on the bus or the
 * client, or waiting for a CPU), garbage collection, V8 itself, native
 * code (socket writes, the hand-off to libvirt's call thread) and
 * JavaScript, against the same split for the other calls; then the
 * functions that take the most more time in a slow call than in another.
 *
 *   npm run build && make -C bench/c && node dist/bench/tail.js [--seconds S] [--warmup-rounds N] [--has-disk]
 *
 * The profiler costs the daemon time of its own: the latencies here are
 * not the benchmark's figures (dist/bench/run.js), only their make-up.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPrivateBus } from '../test/harness/dbus-daemon.js';
import {
  fmt,
  load,
  percentile,
  compareProfileSplits,
  profileSplit,
  run,
  startLibvirtDbus,
  startVmdevd,
  TOOLS,
  type CpuProfile,
  parseCommandLine,
} from './lib.js';

const USAGE = `
usage: node dist/bench/tail.js [--seconds S] [--warmup-rounds N] [--has-disk]
`;

const { values: opts } = parseCommandLine(USAGE, {
  options: {
    seconds: { type: 'string', default: '3' },
    'warmup-rounds': { type: 'string', default: '3' },
    'has-disk': { type: 'boolean', default: false },
  },
});
const SECONDS = Number(opts.seconds);
const WARMUP_ROUNDS = Number(opts['warmup-rounds']);
if (!(SECONDS > 0) || !(WARMUP_ROUNDS >= 0)) throw new Error('--seconds and --warmup-rounds take numbers');
// The `test` domain of test:///default has a disk `vda`, and no `vdz`.
const DEVICE = opts['has-disk'] ? 'd:type=disk,target=vda' : 'd:type=disk,target=vdz';
const BUS_NAME = 'org.example.vmdevdtail';

interface Call {
  readonly latencyUs: number;
  readonly startUs: number;
  readonly endUs: number;
}

/** `load --samples` output: "latency end" in ns per call. */
function readCalls(file: string): Call[] {
  return readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((line) => {
      const [latency, end] = line.split(' ').map(Number) as [number, number];
      return { latencyUs: latency / 1e3, startUs: (end - latency) / 1e3, endUs: end / 1e3 };
    });
}

function summary(calls: readonly Call[]): string {
  const l = calls.map((c) => c.latencyUs);
  return `${calls.length} calls, p50 ${fmt(percentile(l, 50))} µs, p99 ${fmt(percentile(l, 99))} µs`;
}

const work = mkdtempSync(join(tmpdir(), 'vmdevd-tail-'));
const cleanups: Array<() => Promise<unknown>> = [];
try {
  const bus = await startPrivateBus();
  cleanups.push(() => bus.stop());
  const profiles = join(work, 'profiles');
  const harness = { work, cleanups };
  const vmdevd = await startVmdevd(
    harness,
    bus.address,
    BUS_NAME,
    [{ id: 'lv', plugin: 'libvirt', uri: 'test:///default' }],
    {
      nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profiles}`, '--cpu-prof-interval', '50'],
    },
  );
  await startLibvirtDbus(harness, bus.address, 'session', 'libvirt-dbus.log');

  const ours = { dest: BUS_NAME, selector: 'test', devices: [DEVICE] };
  const theirs = { dest: 'org.libvirt' };
  for (let round = 0; round < WARMUP_ROUNDS; round++) {
    await load(bus.address, 'testmethod', { ...ours, duration: 2 });
    await load(bus.address, 'libvirt-listdomains', { ...theirs, duration: 2 });
  }
  const mine = join(work, 'vmdevd.samples');
  const reference = join(work, 'libvirt-dbus.samples');
  const args = ['--address', bus.address, '--json', '--duration', String(SECONDS), '--inflight', '1'];
  await run(`${TOOLS}/load`, [
    ...args,
    '--call',
    'testmethod',
    '--dest',
    BUS_NAME,
    '--selector',
    'test',
    '--device',
    DEVICE,
    '--samples',
    mine,
  ]);
  await run(`${TOOLS}/load`, [...args, '--call', 'libvirt-listdomains', '--samples', reference]);
  await vmdevd.stop();
  const file = readdirSync(profiles).find((f) => f.endsWith('.cpuprofile'));
  if (file === undefined) throw new Error(`vmdevd wrote no CPU profile:\n${vmdevd.output()}`);
  const profile = JSON.parse(readFileSync(join(profiles, file), 'utf8')) as CpuProfile;
  report(profile, readCalls(mine), readCalls(reference));
} finally {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}

function report(profile: CpuProfile, calls: readonly Call[], reference: readonly Call[]): void {
  const threshold = percentile(
    reference.map((c) => c.latencyUs),
    99,
  );
  const slow = calls.filter((c) => c.latencyUs > threshold);
  const other = calls.filter((c) => c.latencyUs <= threshold);
  console.log(`TestMethod on test:///default, ${opts['has-disk'] ? 'a disk the domain has' : 'a disk it lacks'}`);
  console.log(`  vmdevd (profiled): ${summary(calls)}`);
  console.log(`  libvirt-dbus ListDomains: ${summary(reference)}`);
  console.log(
    `  slow (over libvirt-dbus's p99, ${fmt(threshold)} µs): ${slow.length} calls (${fmt((100 * slow.length) / calls.length)}%)`,
  );
  if (slow.length === 0 || other.length === 0) return;
  console.log("\nThe daemon's main thread during a call, µs per call (and the share of calls with ≥ 30 µs of it):");
  for (const line of compareProfileSplits(profileSplit(profile, slow), profileSplit(profile, other), 'call'))
    console.log(line);
}
