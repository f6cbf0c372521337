/**
 * Where vmdevd's part of a detach goes, and how builds or node options of
 * the daemon compare on it. One libvirtd with a small QEMU VM on one
 * private bus; per round, a fresh vmdevd of each variant in turn (the
 * order reversed every other round), driven by `detach-probe --mode
 * alternate` (a direct detach of the VM's SCSI disk, then one through
 * vmdevd, in pairs). For each round it prints:
 *
 * - vmdevd's cycle minus the direct one before it (the benchmark's
 *   figure), split at the probe's own DEVICE_REMOVED into the part before
 *   the event and the part after it (event → DeviceDetached);
 * - the main thread's time on a CPU per cycle, direct cycles included
 *   (`/proc/PID/task/PID/schedstat`);
 * - with `perf` (Debian's linux-perf), the daemon's `read` and `write`
 *   system calls from its tracepoints: from the main thread's read of the
 *   `TestMethod` to a call thread's write of the detach to libvirtd. This
 *   is vmdevd's own time before the call, without the bus or libvirtd,
 *   and it varies far less between rounds than the end-to-end figures.
 *
 * Then, per variant, the median of the rounds' medians.
 *
 *   make -C bench/c && npm run build &&
 *     node dist/bench/detach-split.js [--rounds N] [--cycles N]
 *       [--variant NAME=NODE-OPTIONS]... [--binding NAME=FILE]...
 *       [--warm NAME=SECONDS]... [--daemon NAME=DIR]...
 *
 * `--variant NAME=NODE-OPTIONS` adds node options to that variant's daemon,
 * after bin/vmdevd's own, so a later one undoes an earlier one
 * (`--variant lazy=--lazy-feedback-allocation` runs the daemon as it ran
 * before bin/vmdevd had `--no-lazy-feedback-allocation`); `--binding NAME=FILE` runs the
 * variant NAME with another build of the plugin's native binding (put in
 * place by a rename before its daemon starts, and the original put back at
 * the end); `--warm NAME=SECONDS` has the variant NAME's daemon serve
 * SECONDS of `TestMethod` for a disk the VM lacks (one call in flight,
 * each ending `DeviceNotFound`) before its pairs, as the benchmark's
 * detach figure does (`--variant first= --warm warm=3` compares a daemon's
 * first requests with a warm one); `--daemon NAME=DIR` runs the variant
 * NAME from another built checkout (its `bin/vmdevd`, bundles and
 * binding: a change against the code before it). Without variants, one
 * daemon as it is. Run it as root, on a
 * machine where nothing else runs, and not beside another benchmark.
 */
import { copyFileSync, existsSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPrivateBus } from '../test/harness/dbus-daemon.js';
import { startLibvirtd } from '../test/harness/libvirtd.js';
import { createTestVm, type TestVmConnection } from '../test/harness/test-vms.js';
import {
  daemonVariants,
  fmt,
  median,
  percentile,
  ROOT,
  run,
  schedstat,
  startVmdevd,
  TOOLS,
  havePerf,
  recordReadsAndWrites,
  warmDetachPath,
  type DaemonVariant,
  type Harness,
  type ReadOrWrite,
  parseCommandLine,
} from './lib.js';

const USAGE = `
usage: node dist/bench/detach-split.js [--rounds N] [--cycles N]
         [--variant NAME=NODE-OPTIONS]... [--binding NAME=FILE]...
         [--warm NAME=SECONDS]... [--daemon NAME=DIR]...
The comment at the top of bench/detach-split.ts says what each does.
`;

const { values: opts } = parseCommandLine(USAGE, {
  options: {
    rounds: { type: 'string', default: '4' },
    cycles: { type: 'string', default: '30' },
    variant: { type: 'string', multiple: true, default: [] },
    binding: { type: 'string', multiple: true, default: [] },
    warm: { type: 'string', multiple: true, default: [] },
    daemon: { type: 'string', multiple: true, default: [] },
  },
});
const ROUNDS = Number(opts.rounds);
/** Untimed pairs the probe runs first. */
const WARMUP = 3;
const CYCLES = Number(opts.cycles);
if (!(ROUNDS >= 1) || !(CYCLES >= 1)) throw new Error('--rounds and --cycles take positive numbers');

interface Variant extends DaemonVariant {
  binding?: string;
  warmSeconds?: number;
  root?: string;
}

const variants = daemonVariants<Variant>(opts.variant, [
  {
    option: '--binding',
    specs: opts.binding,
    apply: (variant, value) => {
      if (!existsSync(value)) throw new Error('NAME=FILE, FILE not found');
      variant.binding = value;
    },
  },
  {
    option: '--warm',
    specs: opts.warm,
    apply: (variant, value) => {
      if (!(Number(value) > 0)) throw new Error('NAME=SECONDS, SECONDS a positive number');
      variant.warmSeconds = Number(value);
    },
  },
  {
    option: '--daemon',
    specs: opts.daemon,
    apply: (variant, value) => {
      if (!existsSync(join(value, 'bin/vmdevd'))) throw new Error('NAME=DIR, DIR a built checkout');
      variant.root = value;
    },
  },
]);

const BINDING = `${ROOT}plugins/libvirt/build/Release/vmdevd_libvirt.node`;
if (!havePerf()) console.error('no perf (apt-get install linux-perf): the read → detach figure is left out');

interface Sample {
  mode: string;
  ok: boolean;
  latency_ns?: number;
  event_ns?: number;
}

interface Round {
  /** vmdevd's cycle minus the direct one before it, p50 (µs). */
  readonly overDirect: number;
  readonly beforeEvent: number;
  readonly afterEvent: number;
  readonly cpuPerCycle: number;
  /** From the main thread's read of the TestMethod to the detach's write to libvirtd, per cycle (µs). */
  readonly toCall: readonly number[];
}

/**
 * For each write of more than 8 bytes (an eventfd's are 8) by a thread
 * other than the main one, the time since the main thread's last read of
 * 64 KiB (its reads of the bus socket), once per such read.
 */
function readToCall(calls: readonly ReadOrWrite[], mainTid: number): number[] {
  const out: number[] = [];
  let lastRead: number | undefined;
  for (const { tid, us, call, count } of calls) {
    if (tid === mainTid && call === 'read' && count === 65536) lastRead = us;
    else if (tid !== mainTid && call === 'write' && count > 8 && lastRead !== undefined) {
      out.push(us - lastRead);
      lastRead = undefined;
    }
  }
  return out;
}

const work = mkdtempSync(join(tmpdir(), 'vmdevd-detach-split-'));
const harness: Harness = { work, cleanups: [] };
const original = join(work, 'binding-as-built.node');
/** Puts `file` in place of the binding by a rename: processes that loaded the old one keep its inode. */
const placeBinding = (file: string) => {
  copyFileSync(file, `${BINDING}.tmp`);
  renameSync(`${BINDING}.tmp`, BINDING);
};
try {
  copyFileSync(BINDING, original);
  const bus = await startPrivateBus();
  harness.cleanups.push(() => bus.stop());
  const libvirtd = await startLibvirtd();
  harness.cleanups.push(() => libvirtd.stop());
  const { Connection } = (await import(`${ROOT}plugins/libvirt/dist/src/binding.js`)) as {
    Connection: { open(uri: string): Promise<TestVmConnection & { close(): Promise<number> }> };
  };
  const conn = await Connection.open(libvirtd.uri);
  harness.cleanups.push(() => conn.close());
  const vm = await createTestVm(conn, { type: 'bench', name: `vmdevd-split-${process.pid}` });
  harness.cleanups.push(() => vm.remove());
  console.log(`VM ${vm.name} (${vm.virtType}), ${ROUNDS} rounds of ${CYCLES} pairs per variant`);

  const rounds = new Map<string, Round[]>(variants.map((v) => [v.name, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const variant of r % 2 === 0 ? variants : [...variants].reverse()) {
      if (opts.binding.length > 0) placeBinding(variant.binding ?? original);
      const mark = harness.cleanups.length;
      const busName = `org.example.split${r}${variant.name.replace(/[^A-Za-z0-9]/g, '')}`;
      const daemon = await startVmdevd(
        harness,
        bus.address,
        busName,
        [{ id: 'local', plugin: 'libvirt', uri: libvirtd.uri }],
        {
          nodeArgs: variant.nodeArgs,
          root: variant.root,
        },
      );
      if (variant.warmSeconds !== undefined) await warmDetachPath(bus.address, busName, vm.name, variant.warmSeconds);
      // perf follows the call threads that come later.
      const perf = await recordReadsAndWrites({ pid: daemon.pid }, join(work, `r${r}-${variant.name}.perf`));
      const before = schedstat(daemon.pid);
      const out = await run(`${TOOLS}/detach-probe`, [
        '--uri',
        libvirtd.uri,
        '--domain',
        vm.name,
        '--target',
        'sda',
        '--cycles',
        String(CYCLES),
        '--warmup',
        String(WARMUP),
        '--json',
        '--mode',
        'alternate',
        '--address',
        bus.address,
        '--dest',
        busName,
      ]);
      const after = schedstat(daemon.pid);
      const calls = await perf?.stop();
      await daemon.stop();
      harness.cleanups.splice(mark);

      const samples = (
        JSON.parse(
          out
            .split('\n')
            .filter((l) => l.startsWith('{'))
            .at(-1)!,
        ) as { samples: Sample[] }
      ).samples;
      const over: number[] = [];
      const beforeEvent: number[] = [];
      const afterEvent: number[] = [];
      for (let i = 0; i + 1 < samples.length; i += 2) {
        const d = samples[i]!;
        const v = samples[i + 1]!;
        if (d.mode !== 'direct' || !d.ok || !v.ok) continue;
        over.push((v.latency_ns! - d.latency_ns!) / 1000);
        if (v.event_ns !== undefined) {
          beforeEvent.push((v.event_ns - d.latency_ns!) / 1000);
          afterEvent.push((v.latency_ns! - v.event_ns) / 1000);
        }
      }
      // The probe's warm-up pairs count too: the daemon served them.
      const cycles = samples.length + 2 * WARMUP;
      const toCall = calls === undefined ? [] : readToCall(calls, daemon.pid);
      const round: Round = {
        overDirect: median(over),
        beforeEvent: median(beforeEvent),
        afterEvent: median(afterEvent),
        cpuPerCycle: before && after ? (after.runNs - before.runNs) / 1000 / cycles : NaN,
        toCall,
      };
      rounds.get(variant.name)!.push(round);
      console.log(
        `round ${r + 1} ${variant.name}: over direct ${fmt(round.overDirect, 0)} µs (before the event ${fmt(round.beforeEvent, 0)}, after ${fmt(round.afterEvent, 0)}), ` +
          `main thread ${fmt(round.cpuPerCycle, 0)} µs on a CPU per cycle` +
          (toCall.length > 0
            ? `, read → detach written p25/p50/p75 ${fmt(percentile(toCall, 25), 0)}/${fmt(percentile(toCall, 50), 0)}/${fmt(percentile(toCall, 75), 0)} µs (${toCall.length})`
            : ''),
      );
    }
  }
  console.log('\nmedian of the rounds (each round: its median), µs');
  const header = ['variant', 'over direct', 'before event', 'after event', 'CPU/cycle', 'read → detach'];
  console.log(header.map((h) => h.padStart(14)).join(''));
  for (const [name, rs] of rounds) {
    const m = (f: (r: Round) => number) => fmt(median(rs.map(f)), 0);
    const row = [
      name,
      m((r) => r.overDirect),
      m((r) => r.beforeEvent),
      m((r) => r.afterEvent),
      m((r) => r.cpuPerCycle),
      rs.every((r) => r.toCall.length > 0) ? m((r) => median(r.toCall)) : '–',
    ];
    console.log(row.map((c) => c.padStart(14)).join(''));
  }
} finally {
  if (opts.binding.length > 0 && existsSync(original)) placeBinding(original);
  for (const cleanup of harness.cleanups.reverse()) await cleanup().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}
