/**
 * What a request allocates, and the young collections that follow: one
 * vmdevd per build (this checkout, or built checkouts given as
 * NAME=ROOT) with the libvirt plugin on `test:///default`, side by side
 * on one private bus, under V8's `--trace-gc-nvp`. After a warm-up round
 * each, rounds of `TestMethod` with one call in flight, the daemons in
 * turn; per round and daemon:
 *
 *   - bytes allocated per call (V8's own count, summed over the round's
 *     scavenges), calls per scavenge, bytes surviving and promoted per
 *     scavenge, and the scavenges' mean pause;
 *   - the daemon's CPU time per call (all its threads, from /proc) and
 *     the round's p50 and p99.
 *
 * The bytes and the CPU time per call barely move between rounds; the
 * latencies do, with the machine (two cores shared with the bus and the
 * client). Compare builds in the same run.
 *
 *   npm run build && make -C bench/c && node dist/bench/alloc.js [--rounds N] [--seconds S] [--has-disk] [NAME=ROOT]...
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPrivateBus } from '../test/harness/dbus-daemon.js';
import { fmt, load, parseCommandLine, ROOT, startVmdevd, type Service } from './lib.js';

const USAGE = `
usage: node dist/bench/alloc.js [--rounds N] [--seconds S] [--has-disk] [NAME=ROOT]...
  NAME=ROOT  a built checkout to run, each under its NAME (default: this one alone, as "this")
`;

const { values: opts, positionals } = parseCommandLine(USAGE, {
  allowPositionals: true,
  options: {
    rounds: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '3' },
    'has-disk': { type: 'boolean', default: false },
  },
});
const ROUNDS = Number(opts.rounds);
const SECONDS = Number(opts.seconds);
if (!(ROUNDS >= 1) || !(SECONDS > 0)) throw new Error('--rounds and --seconds take positive numbers');
// The `test` domain of test:///default has a disk `vda`, and no `vdz`.
const DEVICE = opts['has-disk'] ? 'd:type=disk,target=vda' : 'd:type=disk,target=vdz';
const builds = (positionals.length > 0 ? positionals : [`this=${ROOT}`]).map((arg) => {
  const eq = arg.indexOf('=');
  if (eq <= 0 || !/^[A-Za-z0-9]+$/.test(arg.slice(0, eq))) {
    process.stderr.write(`${arg}: give NAME=ROOT (NAME of letters and digits)\n${USAGE.trim()}\n`);
    process.exit(2);
  }
  return { name: arg.slice(0, eq), root: arg.slice(eq + 1) };
});

/** CPU time of a process, all its threads, in µs. */
function cpuUs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // utime and stime, in clock ticks of 10 ms.
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

/** The scavenges in `log` (`--trace-gc-nvp` lines), summed. */
function scavenges(log: string): {
  count: number;
  allocated: number;
  survived: number;
  promoted: number;
  pause: number;
} {
  const sum = { count: 0, allocated: 0, survived: 0, promoted: 0, pause: 0 };
  const field = (line: string, name: string) => Number(new RegExp(`(?:^| )${name}=([\\d.]+)`).exec(line)?.[1] ?? 0);
  for (const line of log.split('\n')) {
    if (!/ gc=s /.test(line)) continue;
    sum.count++;
    sum.allocated += field(line, 'allocated');
    sum.survived += field(line, 'new_space_survived');
    sum.promoted += field(line, 'promoted');
    sum.pause += field(line, 'pause');
  }
  return sum;
}

const work = mkdtempSync(join(tmpdir(), 'vmdevd-alloc-'));
const cleanups: Array<() => Promise<unknown>> = [];
try {
  const bus = await startPrivateBus();
  cleanups.push(() => bus.stop());
  const harness = { work, cleanups };
  const daemons: Array<{ name: string; busName: string; svc: Service }> = [];
  for (const b of builds) {
    const busName = `org.example.alloc${b.name}`;
    const svc = await startVmdevd(
      harness,
      bus.address,
      busName,
      [{ id: 'lv', plugin: 'libvirt', uri: 'test:///default' }],
      { nodeArgs: ['--trace-gc-nvp'], root: b.root },
    );
    daemons.push({ name: b.name, busName, svc });
  }
  console.log(
    `TestMethod on test:///default, ${opts['has-disk'] ? 'a disk the domain has' : 'a disk it lacks'}, one call in flight, ${SECONDS} s rounds`,
  );
  console.log(
    'round  build        calls  B/call  calls/scav  survived/scav  promoted/scav  pause ms  CPU µs/call   p50 µs   p99 µs',
  );
  for (let round = 0; round <= ROUNDS; round++) {
    for (const d of daemons) {
      const ours = { dest: d.busName, selector: 'test', devices: [DEVICE] };
      if (round === 0) {
        await load(bus.address, 'testmethod', { ...ours, duration: 2 });
        continue;
      }
      const before = d.svc.output().length;
      const cpuBefore = cpuUs(d.svc.pid);
      const r = await load(bus.address, 'testmethod', { ...ours, duration: SECONDS });
      // The round's scavenges and CPU time include its unmeasured first calls.
      const made = r.warmup + r.calls;
      const cpu = (cpuUs(d.svc.pid) - cpuBefore) / made;
      const s = scavenges(d.svc.output().slice(before));
      const per = (v: number) => (s.count === 0 ? '–' : fmt(v / s.count, 0));
      console.log(
        [
          String(round).padStart(5),
          d.name.padEnd(10),
          String(r.calls).padStart(7),
          fmt(s.allocated / made, 0).padStart(7),
          (s.count === 0 ? '–' : fmt(made / s.count, 0)).padStart(11),
          per(s.survived).padStart(14),
          per(s.promoted).padStart(14),
          (s.count === 0 ? '–' : fmt(s.pause / s.count, 3)).padStart(9),
          fmt(cpu).padStart(12),
          fmt(r.latency.p50_us).padStart(8),
          fmt(r.latency.p99_us).padStart(8),
        ].join('  '),
      );
    }
  }
} finally {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}
