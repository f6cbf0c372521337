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
 *   benchmark's figure), for both ways;
 * - for vmdevd, with `perf` (Debian's linux-perf), its main thread's `read`
 *   and `write` system calls from their tracepoints: from the first read
 *   of libvirtd's socket after the last signal (the event arriving) to the
 *   write of the `TestSignal`. This is vmdevd's own time on the event
 *   path, without libvirtd, the bus or the probe, and it varies far less
 *   between rounds than the end-to-end figures.
 *
 * Then, per listener, the median of the rounds' medians.
 *
 *   make -C bench/c && npm run build &&
 *     node dist/bench/event-split.js [--rounds N] [--cycles N]
 *       [--variant NAME=NODE-OPTIONS]... [--warm NAME=CYCLES]...
 *       [--daemon NAME=DIR]...
 *
 * `--variant NAME=NODE-OPTIONS` adds node options to that variant's daemon,
 * after bin/vmdevd's own; `--warm NAME=CYCLES` has the variant NAME's
 * daemon follow CYCLES unmeasured suspend/resume cycles, one at once after
 * the other, before its passes (`--variant first= --warm warm=200`
 * compares a daemon's first events with those of one that has followed
 * some); `--daemon NAME=DIR` runs the variant NAME from another built
 * checkout (its `bin/vmdevd`, bundles and binding: a change against the
 * code before it). Without variants, one daemon as it is. Run it as root, on a
 * machine where nothing else runs, and not beside another benchmark.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startPrivateBus } from '../test/harness/dbus-daemon.js';
import { startLibvirtd } from '../test/harness/libvirtd.js';
import { createTestVm, type TestVmConnection } from '../test/harness/test-vms.js';
import {
  daemonVariants,
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
  type DaemonVariant,
  type Harness,
  type ReadOrWrite,
  type Service,
} from './lib.js';

const { values: opts } = parseArgs({
  options: {
    rounds: { type: 'string', default: '4' },
    cycles: { type: 'string', default: '50' },
    variant: { type: 'string', multiple: true, default: [] },
    warm: { type: 'string', multiple: true, default: [] },
    daemon: { type: 'string', multiple: true, default: [] },
  },
});
const ROUNDS = Number(opts.rounds);
const CYCLES = Number(opts.cycles);
if (!(ROUNDS >= 1) || !(CYCLES >= 1)) throw new Error('--rounds and --cycles take positive numbers');

interface Variant extends DaemonVariant {
  warmCycles?: number;
  root?: string;
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
]);

if (!havePerf()) console.error('no perf (apt-get install linux-perf): the read → signal figure is left out');

/** Both ways, as the benchmark: 50 ms apart, and at once (twice the cycles). */
const MODES = [
  { mode: 'apart', intervalMs: 50, cycles: CYCLES },
  { mode: 'atonce', intervalMs: 0, cycles: 2 * CYCLES },
] as const;
type Mode = (typeof MODES)[number]['mode'];

interface Pass {
  /** The listener's signal later than the direct client's event, p50 (µs). */
  readonly over: number;
  /** vmdevd only: from the event's read to the TestSignal's write, per event (µs). */
  readonly readToWrite: readonly number[];
}

/**
 * For each event: the time from the main thread's first read that is
 * neither of the bus (Node reads its sockets 64 KiB at a time) nor of an
 * eventfd (8 bytes) after the last signal written, to its next write of
 * more than 8 bytes (the `TestSignal`; `PropertiesChanged` follows in a
 * write of its own).
 */
function readToWrite(calls: readonly ReadOrWrite[]): number[] {
  const out: number[] = [];
  let eventRead: number | undefined;
  for (const { us, call, count } of calls) {
    if (call === 'read') {
      if (eventRead === undefined && count !== 65536 && count !== 8) eventRead = us;
    } else if (count > 8 && eventRead !== undefined) {
      out.push(us - eventRead);
      eventRead = undefined;
    }
  }
  return out;
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

  /** One pass: the listener's signals later than the direct client's events, p50. */
  async function overDirect(probe: Service, intervalMs: number, cycles: number): Promise<number> {
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
    const over: number[] = [];
    for (const l of out.split('\n')) {
      if (!l.includes('"type":"call"')) continue;
      const c = JSON.parse(l) as { op: string; t_call_ns: string; t_event_ns: string };
      const tCall = BigInt(c.t_call_ns);
      const tEvent = BigInt(c.t_event_ns);
      if (tEvent === 0n) continue;
      const at = arrivals(c.op).find((t) => t >= tCall);
      if (at !== undefined) over.push(Number(at - tEvent) / 1000);
    }
    return median(over);
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
      if (listener === 'relay') {
        const relay = startService(
          `${TOOLS}/event-relay`,
          ['--uri', libvirtd.uri, '--address', bus.address, '--name', busName],
          join(work, `${busName}.log`),
        );
        harness.cleanups.push(() => relay.stop());
        await waitUntil('event relay', () => /"ready"/.test(relay.output()));
        pid = relay.pid;
      } else {
        const daemon = await startVmdevd(
          harness,
          bus.address,
          busName,
          [{ id: 'local', plugin: 'libvirt', uri: libvirtd.uri }],
          { nodeArgs: listener.nodeArgs, root: listener.root },
        );
        pid = daemon.pid;
      }
      const probe = await signalProbe(busName, `${busName}-signals`);
      if (listener !== 'relay' && listener.warmCycles !== undefined)
        await eventProbe(libvirtd.uri, vm.name, listener.warmCycles, 0);
      for (const m of MODES) {
        const perf =
          listener === 'relay'
            ? undefined
            : await recordReadsAndWrites({ tid: pid }, join(work, `r${r}-${name}-${m.mode}.perf`));
        const over = await overDirect(probe, m.intervalMs, m.cycles);
        const calls = await perf?.stop();
        const split = calls === undefined ? [] : readToWrite(calls);
        rounds.get(name)!.get(m.mode)!.push({ over, readToWrite: split });
        console.log(
          `round ${r + 1} ${name}, ${m.mode}: +${fmt(over, 0)} µs over direct` +
            (split.length > 0
              ? `, read → TestSignal written p25/p50/p75 ${fmt(percentile(split, 25), 0)}/${fmt(percentile(split, 50), 0)}/${fmt(percentile(split, 75), 0)} µs (${split.length})`
              : ''),
        );
      }
      for (const cleanup of harness.cleanups.splice(mark).reverse()) await cleanup();
    }
  }
  console.log('\nmedian of the rounds (each round: its median), µs');
  const header = ['listener', 'apart: over', 'read → write', 'at once: over', 'read → write'];
  console.log(header.map((h) => h.padStart(15)).join(''));
  for (const [name, modes] of rounds) {
    const row = [name];
    for (const m of MODES) {
      const passes = modes.get(m.mode)!;
      row.push(fmt(median(passes.map((p) => p.over)), 0));
      row.push(
        passes.every((p) => p.readToWrite.length > 0) ? fmt(median(passes.map((p) => median(p.readToWrite))), 0) : '–',
      );
    }
    console.log(row.map((c) => c.padStart(15)).join(''));
  }
} finally {
  for (const cleanup of harness.cleanups.reverse()) await cleanup().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
}
