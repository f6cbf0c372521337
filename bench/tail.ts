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
import { parseArgs } from 'node:util';
import { startPrivateBus } from '../test/harness/dbus-daemon.js';
import { fmt, load, percentile, run, startLibvirtDbus, startVmdevd, TOOLS } from './lib.js';

const { values: opts } = parseArgs({
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

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
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

const KINDS = ['waiting', 'garbage collection', 'V8 itself', 'native code', 'JavaScript'] as const;
type Kind = (typeof KINDS)[number];

function label(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  return `${functionName || '(anonymous)'} ${url.split('/').pop() ?? ''}:${lineNumber + 1}`;
}

function kindOf(node: ProfileNode): Kind {
  const name = node.callFrame.functionName;
  if (name === '(idle)') return 'waiting';
  if (name === '(garbage collector)') return 'garbage collection';
  if (name === '(program)') return 'V8 itself';
  return node.callFrame.url === '' ? 'native code' : 'JavaScript';
}

interface Split {
  calls: number;
  byKind: Map<Kind, number>;
  /** Calls with at least 30 µs of each kind. */
  withKind: Map<Kind, number>;
  byFunction: Map<string, number>;
}

/** What the main thread did during each call, summed over the calls. */
function split(profile: Profile, calls: readonly Call[]): Split {
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const times: number[] = [];
  let t = profile.startTime;
  for (const delta of profile.timeDeltas) times.push((t += delta));
  const out: Split = { calls: calls.length, byKind: new Map(), withKind: new Map(), byFunction: new Map() };
  let first = 0;
  for (const call of [...calls].sort((a, b) => a.startUs - b.startUs)) {
    while (first < times.length && times[first]! < call.startUs) first++;
    const mine = new Map<Kind, number>();
    for (let i = first; i < times.length && times[i]! <= call.endUs; i++) {
      const node = nodes.get(profile.samples[i]!)!;
      const us = Math.min((times[i + 1] ?? times[i]!) - times[i]!, call.endUs - times[i]!);
      const kind = kindOf(node);
      mine.set(kind, (mine.get(kind) ?? 0) + us);
      if (kind !== 'waiting') out.byFunction.set(label(node), (out.byFunction.get(label(node)) ?? 0) + us);
    }
    for (const [kind, us] of mine) {
      out.byKind.set(kind, (out.byKind.get(kind) ?? 0) + us);
      if (us >= 30) out.withKind.set(kind, (out.withKind.get(kind) ?? 0) + 1);
    }
  }
  return out;
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
  const profile = JSON.parse(readFileSync(join(profiles, file), 'utf8')) as Profile;
  report(profile, readCalls(mine), readCalls(reference));
} finally {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}

function report(profile: Profile, calls: readonly Call[], reference: readonly Call[]): void {
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
  const s = split(profile, slow);
  const o = split(profile, other);
  console.log("\nThe daemon's main thread during a call, µs per call (and the share of calls with ≥ 30 µs of it):");
  console.log(`  ${'what'.padEnd(20)} ${'slow'.padStart(16)} ${'the others'.padStart(16)}`);
  const cell = (x: Split, kind: Kind) =>
    `${fmt((x.byKind.get(kind) ?? 0) / x.calls, 0)} (${fmt((100 * (x.withKind.get(kind) ?? 0)) / x.calls, 0)}%)`;
  for (const kind of KINDS)
    console.log(`  ${kind.padEnd(20)} ${cell(s, kind).padStart(16)} ${cell(o, kind).padStart(16)}`);
  console.log('\nFunctions (self time) taking the most more time in a slow call, µs per call (slow, the others):');
  const excess = [...s.byFunction]
    .map(([fn, us]) => [fn, us / s.calls, (o.byFunction.get(fn) ?? 0) / o.calls] as const)
    .sort((a, b) => b[1] - b[2] - (a[1] - a[2]))
    .slice(0, 15);
  for (const [fn, a, b] of excess) console.log(`  ${fmt(a).padStart(7)} ${fmt(b).padStart(7)}  ${fn}`);
}
