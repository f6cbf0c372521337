/**
 * Where vmdevd's part of a state event goes, and how builds or node options
 * of the daemon compare on it. One libvirtd with a small QEMU VM on one
 * private bus; per round, the C event relay (the floor: libvirt's event
 * callback → the signal, in C) and a fresh vmdevd of each variant in turn
 * (the order reversed every other round), each listened to by
 * `signal-probe` while `event-probe` suspends and resumes the VM, changes
 * 50 ms apart and then each at once after the direct client saw the
 * previous one, as the benchmark's event figures do. For each round it
 * prints:
 *
 * - the listener's signal later than the direct client's event, p50 (the
 *   benchmark's figure) and p99, for both ways;
 * - with `perf` (Debian's linux-perf), the listener thread's `read`,
 *   `write` and `sendmsg` system calls from their tracepoints (vmdevd's
 *   main thread, the relay's libvirt loop thread): from its read of the
 *   event off libvirtd's socket (keepalives passed over) to the write of
 *   the signal. This is the listener's own time on the event path,
 *   without libvirtd, the bus or the probe, and it varies far less between
 *   rounds than the end-to-end figures;
 * - with `perf` recording the scheduler's `sched_wakeup` and
 *   `sched_switch` for that thread: how long of that it spent off a
 *   CPU, in how many events it was preempted and by which threads; and
 *   the time before the read, from the thread being woken by the event
 *   (when it slept before it) to the read, and of that, the wait for a
 *   CPU. Those are the scheduler's part, which no code of the daemon
 *   shortens but by running less.
 *
 * Then, per listener, the median of the rounds' medians, and the p99 of
 * all rounds' events together; and the slowest 5% of the changes (per
 * pass, then of all rounds), split where the listener read the event and
 * wrote the signal, with where they fell in their pass.
 *
 *   make -C bench/c && npm run build &&
 *     node dist/bench/event-split.js [--rounds N] [--cycles N]
 *       [--variant NAME=NODE-OPTIONS]... [--warm NAME=CYCLES]...
 *       [--daemon NAME=DIR]... [--slice NAME=MICROSECONDS]...
 *       [--profile NAME=MICROSECONDS]...
 *
 * `--variant NAME=NODE-OPTIONS` adds node options to that variant's daemon,
 * after bin/vmdevd's own; `--warm NAME=CYCLES` has the variant NAME's
 * daemon follow CYCLES unmeasured suspend/resume cycles, one at once after
 * the other, before its passes (`--variant first= --warm warm=200`
 * compares a daemon's first events with those of one that has followed
 * some); `--daemon NAME=DIR` runs the variant NAME from another built
 * checkout (its `bin/vmdevd`, bundles and binding: a change against the
 * code before it); `--slice NAME=MICROSECONDS` sets that variant's
 * backend option `loopSliceMicroseconds`; `--profile NAME=MICROSECONDS`
 * runs it under V8's CPU profiler and splits its main thread's time from
 * each event's read to the signal's write, the slowest 5% against the
 * others. Without variants, one daemon as it is. Run it as root, on a
 * machine where nothing else runs, and not beside another benchmark.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPrivateBus } from '../test/harness/dbus-daemon.js';
import { startLibvirtd } from '../test/harness/libvirtd.js';
import { createTestVm, type TestVmConnection } from '../test/harness/test-vms.js';
import {
  compareProfileSplits,
  daemonVariants,
  mergeProfileSplits,
  profileSplit,
  eventProbe,
  fmt,
  median,
  percentile,
  ROOT,
  startService,
  startVmdevd,
  TOOLS,
  waitUntil,
  havePerf,
  recordReadsAndWrites,
  recordSwitches,
  type CpuProfile,
  type DaemonVariant,
  type Harness,
  type ReadOrWrite,
  type Switch,
  type Service,
  parseCommandLine,
} from './lib.js';

const USAGE = `
usage: node dist/bench/event-split.js [--rounds N] [--cycles N]
         [--variant NAME=NODE-OPTIONS]... [--warm NAME=CYCLES]...
         [--daemon NAME=DIR]... [--slice NAME=MICROSECONDS]...
         [--profile NAME=MICROSECONDS]...
The comment at the top of bench/event-split.ts says what each does.
`;

const { values: opts } = parseCommandLine(USAGE, {
  options: {
    rounds: { type: 'string', default: '4' },
    cycles: { type: 'string', default: '50' },
    variant: { type: 'string', multiple: true, default: [] },
    warm: { type: 'string', multiple: true, default: [] },
    daemon: { type: 'string', multiple: true, default: [] },
    profile: { type: 'string', multiple: true, default: [] },
    slice: { type: 'string', multiple: true, default: [] },
  },
});
const ROUNDS = Number(opts.rounds);
const CYCLES = Number(opts.cycles);
if (!(ROUNDS >= 1) || !(CYCLES >= 1)) throw new Error('--rounds and --cycles take positive numbers');

interface Variant extends DaemonVariant {
  warmCycles?: number;
  root?: string;
  /** Run under V8's CPU profiler, a sample every this many µs. */
  profileIntervalUs?: number;
  /** The backend's `loopSliceMicroseconds`, when not its default. */
  sliceUs?: number;
}

const variants = daemonVariants<Variant>(opts.variant, [
  {
    option: '--warm',
    specs: opts.warm,
    apply: (variant, value) => {
      if (!(Number(value) > 0)) throw new Error('NAME=CYCLES, CYCLES a positive number');
      variant.warmCycles = Number(value);
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
  {
    option: '--profile',
    specs: opts.profile,
    apply: (variant, value) => {
      if (!(Number(value) >= 10)) throw new Error('NAME=MICROSECONDS, at least 10');
      variant.profileIntervalUs = Number(value);
    },
  },
  {
    option: '--slice',
    specs: opts.slice,
    apply: (variant, value) => {
      if (!(Number(value) >= 0)) throw new Error('NAME=MICROSECONDS, the backend option loopSliceMicroseconds');
      variant.sliceUs = Number(value);
    },
  },
]);

if (!havePerf()) console.error('no perf (apt-get install linux-perf): the read → signal figure is left out');

/** Both ways, as the benchmark: 50 ms apart, and at once (twice the cycles). */
const MODES = [
  { mode: 'apart', intervalMs: 50, cycles: CYCLES },
  { mode: 'atonce', intervalMs: 0, cycles: 2 * CYCLES },
] as const;
type Mode = (typeof MODES)[number]['mode'];

interface Pass {
  /** The listener's signal later than the direct client's event, per event (µs). */
  readonly over: readonly number[];
  /** With perf: each event's time split at the listener's read and write (the slow ones are the p99). */
  readonly parts: readonly Parts[];
  /** With perf: from the event's read to the TestSignal's write, per event (µs). */
  readonly readToWrite: readonly number[];
  /** With perf: the listener's thread around each event. */
  readonly around: readonly Around[];
  /** With `--profile`: the daemon's CPU profile, written as it stopped. */
  profile?: CpuProfile;
}

/**
 * For each event: the time from the main thread's read of the event off
 * libvirtd's socket to its next write of more than 8 bytes (the
 * `TestSignal`; `PropertiesChanged` follows in a write of its own).
 * libvirt reads a message's 4-byte length, then the rest; a message whose
 * rest is its 24-byte header alone is a keepalive, not an event, and is
 * passed over (it comes every 5 s, and taken as an event it would be
 * paired with the next change's write). Reads of the bus (Node reads its
 * sockets 64 KiB at a time), of an eventfd (8 bytes) and reads that found
 * nothing are passed over too.
 */
function readToWrite(calls: readonly ReadOrWrite[]): Span[] {
  const out: Span[] = [];
  const reads = calls.filter((c) => c.call === 'read' && (c.result ?? 1) > 0 && c.count !== 65536 && c.count !== 8);
  let next = 0;
  let eventRead: number | undefined;
  for (const c of calls) {
    if (c.call === 'read') {
      if (reads[next] !== c) continue;
      next++;
      let rest: ReadOrWrite | undefined;
      for (let i = next; i < reads.length && rest === undefined; i++) if (reads[i]!.fd === c.fd) rest = reads[i];
      const isEventLength = c.count === LENGTH_BYTES && rest !== undefined && rest.count !== KEEPALIVE_REST_BYTES;
      if (eventRead === undefined && isEventLength) eventRead = c.us;
    } else if (c.count > 8 && eventRead !== undefined) {
      out.push({ from: eventRead, to: c.us });
      eventRead = undefined;
    }
  }
  return out;
}

interface Span {
  readonly from: number;
  readonly to: number;
}

/** Where the main thread was around one event, µs. */
interface Around {
  /** Off a CPU between the read and the write. */
  readonly offCpu: number;
  /** Who took the CPU each time it was preempted (left it runnable) between them. */
  readonly preemptedBy: readonly string[];
  /**
   * From being woken (the event on its socket) to the read, when it slept
   * before the event: the wait for a CPU, then the loop's pass to the read.
   */
  readonly wokenToRead?: number;
  /** Of {@link wokenToRead}: from being woken to getting a CPU. */
  readonly wokenToCpu?: number;
}

/** {@link Around} for each span, from the thread's `switches` in order. */
function around(spans: readonly Span[], switches: readonly Switch[]): Around[] {
  let prevTo = -Infinity;
  return spans.map(({ from, to }) => {
    let offCpu = 0;
    const preemptedBy: string[] = [];
    let outAt: number | undefined;
    let wokenAt: number | undefined;
    let cpuAt: number | undefined;
    for (const sw of switches) {
      if (sw.us > to) break;
      if (sw.what === 'woken') {
        if (sw.us > prevTo && sw.us <= from) {
          wokenAt = sw.us;
          cpuAt = undefined;
        }
      } else if (sw.what === 'in' && wokenAt !== undefined && cpuAt === undefined && sw.us <= from) {
        cpuAt = sw.us;
        outAt = undefined;
      } else if (sw.what === 'out') {
        outAt = sw.us;
        if (sw.us >= from && sw.preempted) preemptedBy.push(sw.by ?? '?');
      } else if (outAt !== undefined) {
        if (sw.us > from) offCpu += sw.us - Math.max(outAt, from);
        outAt = undefined;
      }
    }
    if (outAt !== undefined) offCpu += to - Math.max(outAt, from);
    prevTo = to;
    const woken = wokenAt === undefined ? {} : { wokenToRead: from - wokenAt };
    const cpu = wokenAt === undefined || cpuAt === undefined ? {} : { wokenToCpu: cpuAt - wokenAt };
    return { offCpu, preemptedBy, ...woken, ...cpu };
  });
}

/**
 * One event's time over the direct client's, split where the listener's
 * thread read the event and wrote its signal (µs, all on CLOCK_MONOTONIC).
 */
interface Parts {
  /** The change's place in its pass, from 0. */
  readonly index: number;
  readonly over: number;
  /** When the listener read the event and wrote the signal. */
  readonly readUs: number;
  readonly writeUs: number;
  /** From the direct client's event to the listener's read of it (negative: it read first). */
  readonly toRead: number;
  /** From the read to the signal's write: the listener's own time. */
  readonly own: number;
  /** From the write to the probe's receipt: the bus and the probe. */
  readonly toProbe: number;
  readonly around?: Around;
}

/** One change as the direct client and the probe saw it (µs, CLOCK_MONOTONIC). */
interface Change {
  readonly callUs: number;
  readonly eventUs: number;
  readonly arrivalUs: number;
}

/** Each change split by the span (read → write) that falls between its call and the probe's receipt. */
function splitChanges(changes: readonly Change[], spans: readonly Span[], near: readonly Around[]): Parts[] {
  const out: Parts[] = [];
  let i = 0;
  for (const [index, c] of changes.entries()) {
    while (i < spans.length && spans[i]!.from < c.callUs) i++;
    const s = spans[i];
    if (s === undefined || s.to > c.arrivalUs) continue;
    out.push({
      index,
      over: c.arrivalUs - c.eventUs,
      readUs: s.from,
      writeUs: s.to,
      toRead: s.from - c.eventUs,
      own: s.to - s.from,
      toProbe: c.arrivalUs - s.to,
      ...(near[i] === undefined ? {} : { around: near[i] }),
    });
    i++;
  }
  return out;
}

/** The slowest changes: those at or above the p95 of `over`; and the others. */
function slowest(parts: readonly Parts[]): { cut: number; slow: Parts[]; others: Parts[] } {
  const cut = percentile(
    parts.map((p) => p.over),
    95,
  );
  return { cut, slow: parts.filter((p) => p.over >= cut), others: parts.filter((p) => p.over < cut) };
}

/** One change's parts, in words. */
function describeChange(p: Parts): string {
  let text = `${p.index}: over ${fmt(p.over, 0)} = event → read ${fmt(p.toRead, 0)} + own ${fmt(p.own, 0)} + write → probe ${fmt(p.toProbe, 0)}`;
  if (p.around === undefined) return text;
  text += `; off a CPU ${fmt(p.around.offCpu, 0)}`;
  if (p.around.preemptedBy.length > 0) text += ` (preempted by ${p.around.preemptedBy.join(', ')})`;
  if (p.around.wokenToCpu !== undefined) text += `, woken → on a CPU ${fmt(p.around.wokenToCpu, 0)}`;
  return text;
}

/**
 * The slowest changes ({@link slowest}), in words: the median of each
 * part, against all changes' median; then the three slowest (which set
 * the p99) one by one.
 */
function describeTail(parts: readonly Parts[]): string {
  if (parts.length === 0) return '';
  const { cut, slow } = slowest(parts);
  const part = (xs: readonly Parts[], f: (p: Parts) => number) => fmt(median(xs.map(f)), 0);
  const both = (f: (p: Parts) => number) => `${part(slow, f)} (all ${part(parts, f)})`;
  const preempted = slow.filter((p) => (p.around?.preemptedBy.length ?? 0) > 0).length;
  const offCpu = slow.flatMap((p) => (p.around === undefined ? [] : [p.around.offCpu]));
  const toCpu = slow.flatMap((p) => (p.around?.wokenToCpu === undefined ? [] : [p.around.wokenToCpu]));
  return (
    `  slowest ${slow.length} of ${parts.length} (over ≥ ${fmt(cut, 0)}), medians: event → read ${both((p) => p.toRead)}, ` +
    `read → write ${both((p) => p.own)}, write → probe ${both((p) => p.toProbe)}; ` +
    `off a CPU in own time ${fmt(median(offCpu), 0)}, preempted in ${preempted}, woken → on a CPU ${fmt(median(toCpu), 0)}; ` +
    `their places in the pass (from 0): ${slow
      .map((p) => p.index)
      .sort((a, b) => a - b)
      .join(' ')}` +
    [...slow]
      .sort((a, b) => b.over - a.over)
      .slice(0, 3)
      .map((p) => `\n    ${describeChange(p)}`)
      .join('')
  );
}

/** What libvirt's RPC reads first of each message: its length. */
const LENGTH_BYTES = 4;
/** The rest of a keepalive message: the RPC header, with no body. */
const KEEPALIVE_REST_BYTES = 24;

const q = (xs: readonly number[], p: number) => fmt(percentile(xs, p), 0);
const signed = (xs: readonly number[], p: number) => (percentile(xs, p) < 0 ? '' : '+') + q(xs, p);
const p50p99 = (xs: readonly number[]) => `p50/p99 ${q(xs, 50)}/${q(xs, 99)} µs`;

/** One pass of one listener, in words. */
function describe(over: readonly number[], split: readonly number[], near: readonly Around[]): string {
  let text = `over direct p50 ${signed(over, 50)} p99 ${signed(over, 99)} µs`;
  if (split.length === 0) return text;
  text += `\n  read → TestSignal written p25/p50/p75/p99 ${q(split, 25)}/${q(split, 50)}/${q(split, 75)}/${q(split, 99)} µs (${split.length} events)`;
  if (near.length === 0) return text;
  const by = new Map<string, number>();
  for (const a of near) for (const b of a.preemptedBy) by.set(b, (by.get(b) ?? 0) + 1);
  const byText = [...by].sort((a, b) => b[1] - a[1]).map(([who, n]) => `${who} ×${n}`);
  const preempted = near.filter((a) => a.preemptedBy.length > 0).length;
  text += `\n    of it off a CPU ${p50p99(near.map((a) => a.offCpu))}; preempted in ${preempted} events`;
  if (byText.length > 0) text += ` (by ${byText.join(', ')})`;
  const woken = near.flatMap((a) => (a.wokenToRead === undefined ? [] : [a.wokenToRead]));
  const toCpu = near.flatMap((a) => (a.wokenToCpu === undefined ? [] : [a.wokenToCpu]));
  text += `\n  woken → read ${p50p99(woken)} (${woken.length} events the thread slept before)`;
  text += `\n    of it woken → on a CPU ${p50p99(toCpu)}`;
  return text;
}

const work = mkdtempSync(join(tmpdir(), 'vmdevd-event-split-'));
const harness: Harness = { work, cleanups: [] };
try {
  const bus = await startPrivateBus();
  harness.cleanups.push(() => bus.stop());
  const libvirtd = await startLibvirtd();
  harness.cleanups.push(() => libvirtd.stop());
  const { Connection } = (await import(`${ROOT}plugins/libvirt/dist/src/binding.js`)) as {
    Connection: { open(uri: string): Promise<TestVmConnection & { close(): Promise<number> }> };
  };
  const conn = await Connection.open(libvirtd.uri);
  harness.cleanups.push(() => conn.close());
  const vm = await createTestVm(conn, { type: 'bench', name: `vmdevd-evsplit-${process.pid}` });
  harness.cleanups.push(() => vm.remove());
  console.log(
    `VM ${vm.name} (${vm.virtType}), ${ROUNDS} rounds; per listener ${CYCLES} cycles 50 ms apart, ${2 * CYCLES} at once`,
  );

  /** A probe of `sender`'s TestSignal, printing the VM's entry; resolves once it listens. */
  const signalProbe = async (sender: string, name: string): Promise<Service> => {
    const p = startService(
      `${TOOLS}/signal-probe`,
      [
        '--address',
        bus.address,
        '--json',
        '--sender',
        sender,
        '--interface',
        'org.example.dbustest.Module',
        '--member',
        'TestSignal',
        '--key',
        vm.name,
      ],
      join(work, `${name}.jsonl`),
    );
    harness.cleanups.push(() => p.stop());
    await waitUntil(`${name} probe`, () => /"ready"/.test(p.output()));
    return p;
  };

  /** One pass: each change as the direct client and the listener's probe saw it. */
  async function overDirect(probe: Service, intervalMs: number, cycles: number): Promise<Change[]> {
    const out = await eventProbe(libvirtd.uri, vm.name, cycles, intervalMs);
    // The last signal's line: a bus barrier would need a call, and the probe only listens.
    await new Promise((r) => setTimeout(r, 300));
    const signals = probe
      .output()
      .split('\n')
      .filter((l) => l.includes('"type":"signal"'))
      .map((l) => JSON.parse(l) as { t_ns: string; args: unknown[] });
    const arrivals = (op: string) =>
      signals
        .filter((s) => String(s.args[0]).endsWith(`=${op === 'suspend' ? 'paused' : 'running'}`))
        .map((s) => BigInt(s.t_ns));
    const changes: Change[] = [];
    const us = (ns: bigint) => Number(ns) / 1000;
    for (const l of out.split('\n')) {
      if (!l.includes('"type":"call"')) continue;
      const c = JSON.parse(l) as { op: string; t_call_ns: string; t_event_ns: string };
      const tCall = BigInt(c.t_call_ns);
      const tEvent = BigInt(c.t_event_ns);
      if (tEvent === 0n) continue;
      const at = arrivals(c.op).find((t) => t >= tCall);
      if (at !== undefined) changes.push({ callUs: us(tCall), eventUs: us(tEvent), arrivalUs: us(at) });
    }
    return changes;
  }

  const listeners = ['relay', ...variants.map((v) => v.name)];
  const rounds = new Map<string, Map<Mode, Pass[]>>(
    listeners.map((n) => [n, new Map(MODES.map((m) => [m.mode, [] as Pass[]]))]),
  );
  for (let r = 0; r < ROUNDS; r++) {
    const order: Array<Variant | 'relay'> = ['relay', ...variants];
    for (const listener of r % 2 === 0 ? order : [...order].reverse()) {
      const mark = harness.cleanups.length;
      const name = listener === 'relay' ? 'relay' : listener.name;
      const busName = `org.example.evsplit${r}${name.replace(/[^A-Za-z0-9]/g, '')}`;
      let pid: number;
      const profiles = join(work, `${busName}-profile`);
      const profiled = listener !== 'relay' && listener.profileIntervalUs !== undefined;
      if (listener === 'relay') {
        const relay = startService(
          `${TOOLS}/event-relay`,
          ['--uri', libvirtd.uri, '--address', bus.address, '--name', busName],
          join(work, `${busName}.log`),
        );
        harness.cleanups.push(() => relay.stop());
        await waitUntil('event relay', () => /"ready"/.test(relay.output()));
        // Its libvirt event loop, which reads the event and sends the signal, is its second thread.
        const threads = readdirSync(`/proc/${relay.pid}/task`).map(Number);
        pid = threads.find((t) => t !== relay.pid) ?? relay.pid;
      } else {
        const daemon = await startVmdevd(
          harness,
          bus.address,
          busName,
          [
            {
              id: 'local',
              plugin: 'libvirt',
              uri: libvirtd.uri,
              ...(listener.sliceUs === undefined ? {} : { loopSliceMicroseconds: listener.sliceUs }),
            },
          ],
          {
            nodeArgs: [
              ...listener.nodeArgs,
              ...(profiled
                ? ['--cpu-prof', `--cpu-prof-dir=${profiles}`, `--cpu-prof-interval=${listener.profileIntervalUs}`]
                : []),
            ],
            root: listener.root,
          },
        );
        pid = daemon.pid;
      }
      const probe = await signalProbe(busName, `${busName}-signals`);
      if (listener !== 'relay' && listener.warmCycles !== undefined)
        await eventProbe(libvirtd.uri, vm.name, listener.warmCycles, 0);
      for (const m of MODES) {
        const file = (what: string) => join(work, `r${r}-${name}-${m.mode}-${what}.perf`);
        const perf = await recordReadsAndWrites({ tid: pid }, file('rw'));
        const sched = await recordSwitches(pid, file('sched'));
        const changes = await overDirect(probe, m.intervalMs, m.cycles);
        const over = changes.map((c) => c.arrivalUs - c.eventUs);
        const calls = await perf?.stop();
        const switches = await sched?.stop();
        const spans = calls === undefined ? [] : readToWrite(calls);
        const own = spans.map((s) => s.to - s.from);
        const near = switches === undefined ? [] : around(spans, switches);
        const parts = splitChanges(changes, spans, near);
        rounds.get(name)!.get(m.mode)!.push({ over, parts, readToWrite: own, around: near });
        console.log(`round ${r + 1} ${name}, ${m.mode}: ${describe(over, own, near)}`);
        if (parts.length > 0) console.log(describeTail(parts));
      }
      // The daemon writes its profile as it stops.
      for (const cleanup of harness.cleanups.splice(mark).reverse()) await cleanup();
      if (profiled) {
        const file = readdirSync(profiles).find((f) => f.endsWith('.cpuprofile'));
        if (file === undefined) throw new Error(`${name}: the daemon wrote no CPU profile`);
        const profile = JSON.parse(readFileSync(join(profiles, file), 'utf8')) as CpuProfile;
        for (const m of MODES) rounds.get(name)!.get(m.mode)!.at(-1)!.profile = profile;
      }
    }
  }
  console.log("\np50: the median of the rounds (each round: its median); p99: of all rounds' events together; µs");
  const header = ['listener'];
  for (const m of MODES) header.push(`${m.mode}: over`, 'p99', 'read → write', 'p99');
  console.log(header.map((h) => h.padStart(14)).join(''));
  for (const [name, modes] of rounds) {
    const row = [name];
    for (const m of MODES) {
      const passes = modes.get(m.mode)!;
      row.push(fmt(median(passes.map((p) => median(p.over))), 0));
      row.push(
        fmt(
          percentile(
            passes.flatMap((p) => p.over),
            99,
          ),
          0,
        ),
      );
      const split = passes.every((p) => p.readToWrite.length > 0);
      row.push(split ? fmt(median(passes.map((p) => median(p.readToWrite))), 0) : '–');
      row.push(
        split
          ? fmt(
              percentile(
                passes.flatMap((p) => p.readToWrite),
                99,
              ),
              0,
            )
          : '–',
      );
    }
    console.log(row.map((c) => c.padStart(14)).join(''));
  }
  for (const [name, modes] of rounds) {
    for (const m of MODES) {
      const passes = modes.get(m.mode)!.filter((p) => p.profile !== undefined);
      if (passes.length === 0) continue;
      // Slow: the slowest of its own pass, as in the tail lines.
      const sum = (pick: 'slow' | 'others') =>
        mergeProfileSplits(
          passes.map(({ profile, parts }) =>
            profileSplit(
              profile!,
              slowest(parts)[pick].map((p) => ({ startUs: p.readUs, endUs: p.writeUs })),
            ),
          ),
        );
      console.log(
        `\n${name}, ${m.mode}: the main thread from the event's read to the signal's write (V8's profile), µs per event (and the share of events with ≥ 30 µs of it); slow: the slowest 5% of its pass over the direct client`,
      );
      for (const line of compareProfileSplits(sum('slow'), sum('others'), 'event')) console.log(line);
    }
  }
  console.log(
    "\nThe slowest 5% of all rounds' changes, each split where the listener read the event and wrote the signal:",
  );
  for (const [name, modes] of rounds) {
    for (const m of MODES) {
      const parts = modes.get(m.mode)!.flatMap((p) => p.parts);
      if (parts.length > 0) console.log(`${name}, ${m.mode}:\n${describeTail(parts)}`);
    }
  }
} finally {
  for (const cleanup of harness.cleanups.reverse()) await cleanup().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}
