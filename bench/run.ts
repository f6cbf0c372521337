/**
 * The vmdevd benchmark: vmdevd side by side with the bus's own floor, a C
 * reference server of the same contract (sd-bus), libvirt-dbus, a direct
 * libvirt client, C relays that do only vmdevd's job with libvirt (the
 * floor for events, detaches and calls on the test driver) and a bare
 * dbus-next service, all on one private dbus-daemon and (for events and
 * detaches) one real libvirtd, in one run.
 * Prints one table; `--json FILE` also writes every figure.
 *
 *   node dist/bench/run.js [--rounds N] [--warmup-rounds N] [--duration S] [--cycles N]
 *                          [--detach-cycles N] [--event-warmup-cycles N]
 *                          [--scale-hosts N] [--scale-vms N] [--quick] [--json FILE]
 *                          [--skip calls|libvirt|detach|scale|startup]...
 *
 * bench/README.md says what each figure is, and holds the table of a run.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dbus from 'dbus-next';
import { create } from 'xmlbuilder2';
import { startPrivateBus, type PrivateBus } from '../test/harness/dbus-daemon.js';
import { TestClient, type Signal } from '../test/harness/bus-client.js';
import { startLibvirtd } from '../test/harness/libvirtd.js';
import { startPrivateLibvirtd, type PrivateLibvirtd } from '../test/harness/private-libvirtd.js';
import { createTestVm } from '../test/harness/test-vms.js';
import { TEST_BACKEND } from '../test/harness/stack.js';
import {
  bootstrapInterval,
  eventProbe,
  fmt,
  load,
  median,
  nowNs,
  percentile,
  rssMiB,
  schedstat,
  ROOT,
  run,
  startLibvirtDbus as startLibvirtDbusIn,
  startService,
  startVmdevd as startVmdevdIn,
  TOOLS,
  waitUntil,
  type Harness,
  type LoadResult,
  type Service,
  warmDetachPath,
  parseCommandLine,
} from './lib.js';

const dbusVariant = dbus.Variant;

const USAGE = `
usage: node dist/bench/run.js [--rounds N] [--warmup-rounds N] [--duration S] [--cycles N]
                             [--detach-cycles N] [--event-warmup-cycles N]
                             [--scale-hosts N] [--scale-vms N] [--quick] [--json FILE]
                             [--skip calls|libvirt|detach|scale|startup]...
bench/README.md says what each figure is.
`;

const { values: opts } = parseCommandLine(USAGE, {
  options: {
    rounds: { type: 'string', default: '3' },
    'warmup-rounds': { type: 'string', default: '3' },
    duration: { type: 'string', default: '2' },
    cycles: { type: 'string', default: '200' },
    'detach-cycles': { type: 'string', default: '100' },
    'event-warmup-cycles': { type: 'string', default: '10' },
    'scale-hosts': { type: 'string', default: '10' },
    'scale-vms': { type: 'string', default: '1000' },
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
    skip: { type: 'string', multiple: true, default: [] },
  },
});
const ROUNDS = opts.quick ? 1 : Number(opts.rounds);
const DURATION = opts.quick ? 1 : Number(opts.duration);
/** Unmeasured rounds before a daemon's first figures: what runs for days is measured warm. */
const WARMUP_ROUNDS = opts.quick ? 0 : Number(opts['warmup-rounds']);
const CYCLES = opts.quick ? 20 : Number(opts.cycles);
const DETACH_CYCLES = opts.quick ? 10 : Number(opts['detach-cycles']);
/** Unmeasured suspend/resume cycles at once before each event listener's passes. */
const EVENT_WARMUP_CYCLES = opts.quick ? 2 : Number(opts['event-warmup-cycles']);
/** Seconds of TestMethod calls a daemon serves before the detach figures. */
const DETACH_WARMUP_S = opts.quick ? 1 : 3;
const SCALE_HOSTS = Number(opts['scale-hosts']);
const SCALE_VMS = Number(opts['scale-vms']);
/** Times the floor of the scale part's start is measured (see scaleBenchmarks). */
const SCALE_FLOOR_ROUNDS = opts.quick ? 1 : 3;
const skip = new Set(opts.skip);

const work = mkdtempSync(join(tmpdir(), 'vmdevd-bench-'));
const cleanups: Array<() => Promise<unknown>> = [];
const results: Record<string, number> = {};
const notes: string[] = [];
const say = (s: string) => process.stderr.write(`${s}\n`);

const harness: Harness = { work, cleanups };
const startVmdevd = (bus: PrivateBus, busName: string, backends: unknown[], extra?: Record<string, unknown>) =>
  startVmdevdIn(harness, bus.address, busName, backends, { extra });
const startLibvirtDbus = (bus: PrivateBus, which: 'session' | 'system', log: string) =>
  startLibvirtDbusIn(harness, bus.address, which, log);

function testBackend(vms: number) {
  return [{ id: 'bench', plugin: TEST_BACKEND, vms: [], generate: vms, detachDelayMs: 0 }];
}

interface Server {
  readonly name: string;
  readonly dest: string;
  /** The `load` kind; the comparison's own when absent. */
  readonly kind?: string;
  readonly selector?: string;
  readonly expectEntries?: number;
  readonly path?: string;
  readonly devices?: readonly string[];
  readonly checkEvery?: number;
}

interface Figures {
  p50: number;
  p99: number;
  rate: number;
  clientCpu: number;
  /** With warm-up rounds: the first of them, the servers' first calls of this kind. */
  cold?: { p50: number; p99: number };
}

/**
 * One `load` figure per round for each server, interleaved; medians per
 * server. `warmupRounds` unmeasured rounds of each go first, when these are
 * a daemon's first calls: it runs for days, and its first seconds (the
 * JIT's compilations on the other core, the heap still growing) are
 * reported apart, as `cold`.
 */
async function compare(
  label: string,
  kind: string,
  inflight: number,
  servers: readonly Server[],
  address: string,
  warmupRounds = 0,
): Promise<Record<string, Figures>> {
  const per: Record<string, LoadResult[]> = {};
  const cold: Record<string, LoadResult> = {};
  for (let r = -warmupRounds; r < ROUNDS; r++) {
    for (const s of servers) {
      const res = await load(address, s.kind ?? kind, {
        dest: s.dest,
        path: s.path,
        inflight,
        duration: DURATION,
        selector: s.selector,
        expectEntries: s.expectEntries,
        devices: s.devices,
        checkEvery: s.checkEvery,
      });
      if (r === -warmupRounds && warmupRounds > 0) cold[s.name] = res;
      if (r >= 0) (per[s.name] ??= []).push(res);
    }
  }
  const out: Record<string, Figures> = {};
  for (const [name, list] of Object.entries(per)) {
    const first = cold[name];
    out[name] = {
      p50: median(list.map((x) => x.latency.p50_us)),
      p99: median(list.map((x) => x.latency.p99_us)),
      rate: median(list.map((x) => x.calls_per_s)),
      clientCpu: median(list.map((x) => x.client.cpu_us_per_call)),
      ...(first && { cold: { p50: first.latency.p50_us, p99: first.latency.p99_us } }),
    };
    say(
      `  ${label} ${name} x${inflight}: p50 ${fmt(out[name].p50)} µs, p99 ${fmt(out[name].p99)} µs, ${fmt(out[name].rate, 0)} calls/s` +
        (first
          ? ` (first round, unmeasured: p50 ${fmt(first.latency.p50_us)} µs, p99 ${fmt(first.latency.p99_us)} µs)`
          : ''),
    );
  }
  return out;
}

async function callBenchmarks(bus: PrivateBus): Promise<void> {
  say('calls: starting the reference servers, libvirt-dbus and vmdevd');
  for (const n of [1, 100, 1000]) {
    const ref = startService(
      `${TOOLS}/ref-server`,
      ['--address', bus.address, '--name', `org.example.ref${n}`, '--vms', String(n)],
      join(work, `ref${n}.log`),
    );
    cleanups.push(() => ref.stop());
    await waitUntil(`ref-server ${n}`, () => /READY/.test(ref.output()));
  }
  const vmdevd1 = await startVmdevd(bus, 'org.example.vmdevd1', testBackend(1));
  await startVmdevd(bus, 'org.example.vmdevd100', testBackend(100));
  const vmdevd1000 = await startVmdevd(bus, 'org.example.vmdevd1000', testBackend(1000));
  // The libvirt plugin on libvirt's test driver: one libvirt call per request.
  await startVmdevd(bus, 'org.example.vmdevdlv', [{ id: 'lv', plugin: 'libvirt', uri: 'test:///default' }]);
  await startLibvirtDbus(bus, 'session', 'libvirt-dbus.log');
  // The floor for those requests: vmdevd's job on the same driver in C.
  const callRelay = startService(
    `${TOOLS}/call-relay`,
    ['--uri', 'test:///default', '--address', bus.address, '--name', 'org.example.callrelay'],
    join(work, 'call-relay.log'),
  );
  cleanups.push(() => callRelay.stop());
  await waitUntil('call relay', () => /"ready"/.test(callRelay.output()));
  await new Promise((r) => setTimeout(r, 500));
  results['rss_idle_mib'] = rssMiB(vmdevd1.pid);

  const tm = [
    { name: 'ref', dest: 'org.example.ref1', selector: 'vm-0000' },
    { name: 'vmdevd', dest: 'org.example.vmdevd1', selector: 'vm-00000' },
  ];
  const ping = await compare('bus ping', 'ping', 1, [{ name: 'bus', dest: 'org.freedesktop.DBus' }], bus.address);
  results['ping_p50_us'] = ping['bus']!.p50;
  results['ping_p99_us'] = ping['bus']!.p99;
  const t1 = await compare('TestMethod', 'testmethod', 1, tm, bus.address, WARMUP_ROUNDS);
  const t16 = await compare('TestMethod', 'testmethod', 16, tm, bus.address);
  const i1 = await compare('rejected TestMethod', 'testmethod-invalid', 1, tm, bus.address);
  const i16 = await compare('rejected TestMethod', 'testmethod-invalid', 16, tm, bus.address);
  // vmdevd's TestMethod with the libvirt plugin on test:///default against
  // libvirt-dbus's ListDomains on the same driver, in the same rounds: one
  // libvirt call per request on both sides. A disk the test domain lacks
  // (vmdevd reads the domain XML once more: DeviceNotFound) and one it has
  // (the test driver refuses the detach: NotSupported).
  const onTestDriver: Server[] = [
    { name: 'missing', dest: 'org.example.vmdevdlv', selector: 'test', devices: ['d:type=disk,target=vdz'] },
    { name: 'present', dest: 'org.example.vmdevdlv', selector: 'test', devices: ['d:type=disk,target=vda'] },
    { name: 'libvirt-dbus', dest: 'org.libvirt', kind: 'libvirt-listdomains' },
  ];
  // The C relay's latency with one call in flight; it takes its requests
  // one at a time on its call thread, so its calls/s is no floor for
  // vmdevd's (which reads the XML once for the requests that wait).
  const relayed: Server[] = [
    { name: 'relay-missing', dest: 'org.example.callrelay', selector: 'test', devices: ['d:type=disk,target=vdz'] },
    { name: 'relay-present', dest: 'org.example.callrelay', selector: 'test', devices: ['d:type=disk,target=vda'] },
  ];
  const l1 = await compare('test driver', 'testmethod', 1, [...onTestDriver, ...relayed], bus.address, WARMUP_ROUNDS);
  const l16 = await compare('test driver', 'testmethod', 16, onTestDriver, bus.address);
  for (const who of ['missing', 'present']) {
    if (l1[who]!.cold) {
      results[`lv_${who}_cold_p50_us`] = l1[who]!.cold.p50;
      results[`lv_${who}_cold_p99_us`] = l1[who]!.cold.p99;
    }
    results[`lv_${who}_p50_us`] = l1[who]!.p50;
    results[`lv_${who}_p99_us`] = l1[who]!.p99;
    results[`lv_${who}_rate16`] = l16[who]!.rate;
    results[`lv_relay_${who}_p50_us`] = l1[`relay-${who}`]!.p50;
    results[`lv_relay_${who}_p99_us`] = l1[`relay-${who}`]!.p99;
  }
  const n1 = await compare(
    'libvirt-dbus Name',
    'libvirt-get-name',
    1,
    [{ name: 'libvirt-dbus', dest: 'org.libvirt' }],
    bus.address,
  );
  for (const [k, v] of Object.entries({ testmethod: [t1, t16], invalid: [i1, i16] })) {
    for (const who of ['ref', 'vmdevd']) {
      results[`${k}_${who}_p50_us`] = v[0]![who]!.p50;
      results[`${k}_${who}_p99_us`] = v[0]![who]!.p99;
      results[`${k}_${who}_rate16`] = v[1]![who]!.rate;
    }
  }
  results['load_client_cpu_us'] = t1['vmdevd']!.clientCpu;
  if (t1['vmdevd']!.cold) {
    results['testmethod_vmdevd_cold_p50_us'] = t1['vmdevd']!.cold.p50;
    results['testmethod_vmdevd_cold_p99_us'] = t1['vmdevd']!.cold.p99;
  }
  results['listdomains_libvirtdbus_p50_us'] = l1['libvirt-dbus']!.p50;
  results['listdomains_libvirtdbus_p99_us'] = l1['libvirt-dbus']!.p99;
  results['listdomains_libvirtdbus_rate16'] = l16['libvirt-dbus']!.rate;
  results['getname_libvirtdbus_p50_us'] = n1['libvirt-dbus']!.p50;
  for (const n of [1, 100, 1000]) {
    const servers = [
      { name: 'ref', dest: `org.example.ref${n}`, expectEntries: n },
      { name: 'vmdevd', dest: `org.example.vmdevd${n}`, expectEntries: n },
    ];
    const g1 = await compare(`Get TestProperty (${n})`, 'get-testproperty', 1, servers, bus.address, WARMUP_ROUNDS);
    const g16 = await compare(`Get TestProperty (${n})`, 'get-testproperty', 16, servers, bus.address);
    for (const who of ['ref', 'vmdevd']) {
      results[`get${n}_${who}_p50_us`] = g1[who]!.p50;
      results[`get${n}_${who}_p99_us`] = g1[who]!.p99;
      results[`get${n}_${who}_rate16`] = g16[who]!.rate;
    }
  }
  results['rss_after_load_mib'] = rssMiB(vmdevd1.pid);
  results['rss_1000_test_backend_mib'] = rssMiB(vmdevd1000.pid);
}

interface Binding {
  Connection: {
    open(
      uri: string,
      options?: { readOnly?: boolean; onEvent?: (e: { kind: string; uuid: string; event?: number }) => void },
    ): Promise<{
      close(): Promise<number>;
      defineXml(xml: string): Promise<{ uuid: string; name: string }>;
      create(uuid: string): Promise<void>;
      destroy(uuid: string): Promise<void>;
      undefine(uuid: string, flags?: number): Promise<void>;
      getDomain(uuid: string): Promise<{ active: boolean }>;
    }>;
  };
}

async function libvirtBenchmarks(bus: PrivateBus, uri: string): Promise<void> {
  const libvirtd = { uri };
  const { Connection } = (await import(`${ROOT}plugins/libvirt/dist/src/binding.js`)) as Binding;
  const conn = await Connection.open(libvirtd.uri);
  cleanups.push(() => conn.close());
  const vm = await createTestVm(conn, { type: 'bench', name: `vmdevd-bench-${process.pid}` });
  cleanups.push(() => vm.remove());
  say(
    `events: VM ${vm.name} (${vm.virtType}); one listener per pass: libvirt-dbus --system, our binding alone, a C relay, vmdevd`,
  );

  const probe = (args: string[], name: string) => {
    const p = startService(
      `${TOOLS}/signal-probe`,
      ['--address', bus.address, '--json', ...args],
      join(work, `${name}.jsonl`),
    );
    cleanups.push(() => p.stop());
    return p;
  };
  const signalTimes = (p: Service, match: (args: unknown[]) => boolean) =>
    p
      .output()
      .split('\n')
      .filter((l) => l.includes('"type":"signal"'))
      .map((l) => JSON.parse(l) as { t_ns: string; args: unknown[] })
      .filter((sig) => match(sig.args))
      .map((sig) => BigInt(sig.t_ns));
  /** A probe of `sender`'s TestSignal, printing the VM's entry; resolves once it listens. */
  const testSignalProbe = async (sender: string, name: string) => {
    const p = probe(
      ['--sender', sender, '--interface', 'org.example.dbustest.Module', '--member', 'TestSignal', '--key', vm.name],
      name,
    );
    await waitUntil(`${name} probe`, () => /"ready"/.test(p.output()));
    return p;
  };
  /** When the VM's entry in the probe's signals showed the state an operation leads to. */
  const stateSignalTimes = (p: Service) => (op: string) =>
    signalTimes(p, (args) => String(args[0]).endsWith(`=${op === 'suspend' ? 'paused' : 'running'}`));

  /**
   * One pass: event-probe suspends and resumes the VM while one listener
   * listens, `intervalMs` after each event it sees (0: the next change at
   * once, as a client that reacts to each event would). Listeners get a
   * pass each, so that they do not compete for the CPUs at the moment
   * libvirtd sends the event (on a 2-core machine, four woken processes
   * would measure the scheduler). Returns, per change, how long after the
   * call the direct client saw its event and how much later the listener
   * saw it.
   */
  async function pass(
    name: string,
    arrivals: (op: string) => bigint[],
    intervalMs: number,
    cycles: number,
    { keepFirst = false }: { keepFirst?: boolean } = {},
  ): Promise<{ direct: number[]; over: number[]; total: number[] }> {
    const out = await eventProbe(libvirtd.uri, vm.name, cycles, intervalMs);
    await new Promise((r) => setTimeout(r, 500));
    const calls = out
      .split('\n')
      .filter((l) => l.includes('"type":"call"'))
      .map((l) => JSON.parse(l) as { op: string; t_call_ns: string; t_event_ns: string })
      // The first change of a pass comes half a second or more after the
      // last one before it: neither 50 ms apart nor at once.
      .slice(keepFirst ? 0 : 1);
    const direct: number[] = [];
    const over: number[] = [];
    const total: number[] = [];
    for (const c of calls) {
      const tCall = BigInt(c.t_call_ns);
      const tEvent = BigInt(c.t_event_ns);
      if (tEvent === 0n) continue;
      direct.push(Number(tEvent - tCall) / 1000);
      const at = arrivals(c.op).find((t) => t >= tCall);
      if (at === undefined) continue;
      total.push(Number(at - tCall) / 1000);
      over.push(Number(at - tEvent) / 1000);
    }
    if (over.length < calls.length) notes.push(`events: ${name} matched ${over.length} of ${calls.length} changes`);
    say(
      `  events, ${name}, ${intervalMs} ms apart: direct p50 ${fmt(percentile(direct, 50))} µs, ${name} +${fmt(percentile(over, 50))} µs, p99 +${fmt(percentile(over, 99))} µs`,
    );
    return { direct, over, total };
  }
  /** Both ways: changes 50 ms apart, and each at once after the event of the previous one. */
  const EVENT_MODES = [
    { mode: 'apart', intervalMs: 50, cycles: CYCLES },
    { mode: 'atonce', intervalMs: 0, cycles: 2 * CYCLES },
  ] as const;
  const record = (key: string, r: { direct: number[]; over: number[]; total: number[] }) => {
    results[`event_${key}_p50_us`] = percentile(r.total, 50);
    results[`event_${key}_p99_us`] = percentile(r.total, 99);
    results[`event_${key}_over_p50_us`] = percentile(r.over, 50);
    results[`event_${key}_over_p99_us`] = percentile(r.over, 99);
    results[`event_${key}_direct_p50_us`] = percentile(r.direct, 50);
  };

  /**
   * Before a listener's passes: EVENT_WARMUP_CYCLES unmeasured cycles at
   * once, as the call figures have their unmeasured rounds (what runs for
   * days is measured warm). Recorded under `key` as the listener's first
   * changes.
   */
  const warmUp = async (key: string, name: string, arrivals: (op: string) => bigint[]) => {
    if (EVENT_WARMUP_CYCLES === 0) return;
    const first = await pass(`${name} (its first changes)`, arrivals, 0, EVENT_WARMUP_CYCLES, { keepFirst: true });
    results[`event_${key}_first_over_p50_us`] = percentile(first.over, 50);
    results[`event_${key}_first_over_max_us`] = Math.max(...first.over);
    results[`event_${key}_first_changes`] = first.over.length;
  };

  const lvd = await startLibvirtDbus(bus, 'system', 'libvirt-dbus-system.log');
  const theirs = probe(
    ['--sender', 'org.libvirt', '--interface', 'org.libvirt.Connect', '--member', 'DomainEvent'],
    'domainevent',
  );
  await waitUntil('DomainEvent probe', () => /"ready"/.test(theirs.output()));
  await warmUp('libvirtdbus', 'libvirt-dbus DomainEvent', () => signalTimes(theirs, () => true));
  for (const m of EVENT_MODES) {
    record(
      `libvirtdbus_${m.mode}`,
      await pass('libvirt-dbus DomainEvent', () => signalTimes(theirs, () => true), m.intervalMs, m.cycles),
    );
  }
  await theirs.stop();
  await lvd.stop();

  // Our binding alone, in this idle Node process: where the event reaches
  // JavaScript, before any of vmdevd's own work and the bus.
  const bindingArrivals: bigint[] = [];
  const watcher = await Connection.open(libvirtd.uri, {
    readOnly: true,
    onEvent: (e) => {
      if (e.kind === 'lifecycle' && e.uuid === vm.uuid) bindingArrivals.push(process.hrtime.bigint());
    },
  });
  await warmUp('binding', 'the binding in Node', () => bindingArrivals);
  for (const m of EVENT_MODES) {
    record(`binding_${m.mode}`, await pass('the binding in Node', () => bindingArrivals, m.intervalMs, m.cycles));
  }
  await watcher.close();

  // The floor for any daemon: a C relay that sends the map from libvirt's
  // event callback, with nothing between (bench/c/event-relay.c).
  const relay = startService(
    `${TOOLS}/event-relay`,
    ['--uri', libvirtd.uri, '--address', bus.address, '--name', 'org.example.eventrelay'],
    join(work, 'event-relay.log'),
  );
  cleanups.push(() => relay.stop());
  await waitUntil('event relay', () => /"ready"/.test(relay.output()));
  const relayed = await testSignalProbe('org.example.eventrelay', 'relaysignal');
  await warmUp('relay', 'the C relay', stateSignalTimes(relayed));
  for (const m of EVENT_MODES) {
    record(`relay_${m.mode}`, await pass('the C relay', stateSignalTimes(relayed), m.intervalMs, m.cycles));
  }
  await relayed.stop();
  await relay.stop();

  // vmdevd with the libvirt plugin.
  const daemon = await startVmdevd(bus, 'org.example.dbustest', [
    { id: 'local', plugin: 'libvirt', uri: libvirtd.uri },
  ]);
  const ours = await testSignalProbe('org.example.dbustest', 'testsignal');
  await warmUp('vmdevd', 'vmdevd TestSignal', stateSignalTimes(ours));
  for (const m of EVENT_MODES) {
    const vmdevd = await pass('vmdevd TestSignal', stateSignalTimes(ours), m.intervalMs, m.cycles);
    record(`vmdevd_${m.mode}`, vmdevd);
    results[`event_direct_${m.mode}_p50_us`] = percentile(vmdevd.direct, 50);
    results[`event_${m.mode}_changes`] = vmdevd.direct.length;
  }

  // End to end: the same SCSI disk detached directly, through vmdevd and
  // through libvirt-dbus, in turn, so that each cycle through a daemon has a
  // direct one just before it.
  if (!skip.has('detach')) {
    /** detach-probe on the VM's `sda`, DETACH_CYCLES of each kind in turn, direct ones first. */
    const alternate = (...kinds: string[]) =>
      run(`${TOOLS}/detach-probe`, [
        '--uri',
        libvirtd.uri,
        '--domain',
        vm.name,
        '--target',
        'sda',
        '--cycles',
        String(DETACH_CYCLES),
        '--json',
        '--mode',
        'alternate',
        '--address',
        bus.address,
        ...kinds,
      ]);
    type Samples = Array<{ mode: string; ok: boolean; latency_ns?: number; event_ns?: number }>;
    const samplesOf = (output: string) =>
      (
        JSON.parse(
          output
            .split('\n')
            .filter((l) => l.startsWith('{'))
            .at(-1)!,
        ) as { samples: Samples }
      ).samples;
    /** One daemon's cycles: each against the direct cycle of its group (direct first, then each daemon once). */
    const daemonCycles = (mode: string, samples: Samples, group: number) => {
      const all: number[] = [];
      const libvirtPart: number[] = [];
      const afterEvent: number[] = [];
      const pairs: Array<[number, number]> = [];
      for (let i = 0; i + group - 1 < samples.length; i += group) {
        const d = samples[i]!;
        const v = samples.slice(i + 1, i + group).find((s) => s.mode === mode)!;
        if (v.ok && v.latency_ns !== undefined) all.push(v.latency_ns / 1000);
        if (d.ok && v.ok && d.mode === 'direct') pairs.push([d.latency_ns! / 1000, v.latency_ns! / 1000]);
        // The probe's own DEVICE_REMOVED in the daemon's cycle: libvirt's
        // part (call → event) and the daemon's (event → its signal).
        if (v.ok && v.event_ns !== undefined) {
          libvirtPart.push(v.event_ns / 1000);
          afterEvent.push((v.latency_ns! - v.event_ns) / 1000);
        }
      }
      return { all, libvirtPart, afterEvent, pairs };
    };
    const medianDifference = (sample: ReadonlyArray<[number, number]>) =>
      median(sample.map((p) => p[1])) - median(sample.map((p) => p[0]));

    // The daemon's first detaches: its request path has run only as often
    // as these pairs (the events passes ran none of it).
    const fresh = daemonCycles('vmdevd', samplesOf(await alternate()), 2);
    const [freshLow, freshHigh] = bootstrapInterval(fresh.pairs, medianDifference);
    results['detach_fresh_pairs'] = fresh.pairs.length;
    results['detach_fresh_diff_p50_us'] = medianDifference(fresh.pairs);
    results['detach_fresh_diff_ci_low_us'] = freshLow;
    results['detach_fresh_diff_ci_high_us'] = freshHigh;
    say(
      `  detach on the daemon's first requests, ${fresh.pairs.length} pairs: difference +${fmt(medianDifference(fresh.pairs))} µs ` +
        `(95% bootstrap ${fmt(freshLow)} to ${fmt(freshHigh)})`,
    );
    // Then measured warm, as the call figures are: a daemon that runs for
    // days has served requests before.
    await warmDetachPath(bus.address, 'org.example.dbustest', vm.name, DETACH_WARMUP_S);
    const lvdDetach = await startLibvirtDbus(bus, 'system', 'libvirt-dbus-detach.log');
    const before = schedstat(daemon.pid);
    const out = await alternate('--with-libvirt-dbus');
    await lvdDetach.stop();
    const res = { samples: samplesOf(out) };
    const direct = res.samples.filter((s) => s.mode === 'direct' && s.ok).map((s) => s.latency_ns! / 1000);
    const { all: vmdevd, libvirtPart, afterEvent, pairs } = daemonCycles('vmdevd', res.samples, 3);
    const theirs = daemonCycles('libvirt-dbus', res.samples, 3);
    const differences = pairs.map(([d, v]) => v - d);
    const [low, high] = bootstrapInterval(pairs, medianDifference);
    const [theirLow, theirHigh] = bootstrapInterval(theirs.pairs, medianDifference);
    results['detach_direct_p50_us'] = median(direct);
    results['detach_vmdevd_p50_us'] = median(vmdevd);
    results['detach_direct_p99_us'] = percentile(direct, 99);
    results['detach_vmdevd_p99_us'] = percentile(vmdevd, 99);
    results['detach_pairs'] = pairs.length;
    results['detach_diff_p50_us'] = medianDifference(pairs);
    results['detach_diff_ci_low_us'] = low;
    results['detach_diff_ci_high_us'] = high;
    results['detach_pair_diff_p25_us'] = percentile(differences, 25);
    results['detach_pair_diff_p50_us'] = percentile(differences, 50);
    results['detach_pair_diff_p75_us'] = percentile(differences, 75);
    results['detach_libvirtdbus_p50_us'] = median(theirs.all);
    results['detach_libvirtdbus_pairs'] = theirs.pairs.length;
    results['detach_libvirtdbus_diff_p50_us'] = medianDifference(theirs.pairs);
    results['detach_libvirtdbus_diff_ci_low_us'] = theirLow;
    results['detach_libvirtdbus_diff_ci_high_us'] = theirHigh;
    results['detach_libvirtdbus_event_to_signal_p50_us'] = median(theirs.afterEvent);
    results['detach_libvirtdbus_event_to_signal_p99_us'] = percentile(theirs.afterEvent, 99);
    // How long vmdevd's main thread, once woken, waited for a CPU: on two
    // cores, libvirtd and QEMU are busy right when a detach starts and ends.
    const after = schedstat(daemon.pid);
    if (before !== undefined && after !== undefined && after.slices > before.slices) {
      const wakes = after.slices - before.slices;
      results['detach_daemon_cpu_ms'] = (after.runNs - before.runNs) / 1e6;
      results['detach_daemon_wait_per_wake_us'] = (after.waitNs - before.waitNs) / 1000 / wakes;
      results['detach_daemon_wakes'] = wakes;
    }
    // The floor: a C relay that does only this (bench/c/detach-relay.c),
    // in pairs with direct detaches; detach-probe drives it as it drives vmdevd.
    const relay = startService(
      `${TOOLS}/detach-relay`,
      ['--uri', libvirtd.uri, '--address', bus.address, '--name', 'org.example.detachrelay'],
      join(work, 'detach-relay.log'),
    );
    cleanups.push(() => relay.stop());
    await waitUntil('detach relay', () => /"ready"/.test(relay.output()));
    const relayOut = await alternate('--dest', 'org.example.detachrelay');
    await relay.stop();
    const relayed = daemonCycles('vmdevd', samplesOf(relayOut), 2);
    const [relayLow, relayHigh] = bootstrapInterval(relayed.pairs, medianDifference);
    results['detach_relay_p50_us'] = median(relayed.all);
    results['detach_relay_pairs'] = relayed.pairs.length;
    results['detach_relay_diff_p50_us'] = medianDifference(relayed.pairs);
    results['detach_relay_diff_ci_low_us'] = relayLow;
    results['detach_relay_diff_ci_high_us'] = relayHigh;
    results['detach_relay_event_to_signal_p50_us'] = median(relayed.afterEvent);
    say(
      `  detach through the C relay, ${relayed.pairs.length} pairs: p50 ${fmt(median(relayed.all))} µs, ` +
        `difference +${fmt(medianDifference(relayed.pairs))} µs (95% bootstrap ${fmt(relayLow)} to ${fmt(relayHigh)}); ` +
        `event → DeviceDetached p50 ${fmt(median(relayed.afterEvent))} µs`,
    );
    results['detach_vmdevd_to_event_p50_us'] = median(libvirtPart);
    results['detach_vmdevd_event_to_signal_p50_us'] = median(afterEvent);
    results['detach_vmdevd_event_to_signal_p99_us'] = percentile(afterEvent, 99);
    say(
      `  detach, ${pairs.length} pairs: direct p50 ${fmt(median(direct))} µs, vmdevd p50 ${fmt(median(vmdevd))} µs, ` +
        `difference +${fmt(medianDifference(pairs))} µs (95% bootstrap ${fmt(low)} to ${fmt(high)}); ` +
        `in vmdevd's cycles TestMethod → libvirt's event p50 ${fmt(median(libvirtPart))} µs, ` +
        `event → DeviceDetached p50 ${fmt(median(afterEvent))} µs`,
    );
    say(
      `  detach through libvirt-dbus, ${theirs.pairs.length} pairs: p50 ${fmt(median(theirs.all))} µs, ` +
        `difference +${fmt(medianDifference(theirs.pairs))} µs (95% bootstrap ${fmt(theirLow)} to ${fmt(theirHigh)}); ` +
        `event → DeviceRemoved p50 ${fmt(median(theirs.afterEvent))} µs`,
    );
    if (results['detach_daemon_wakes'] !== undefined)
      say(
        `  detach: vmdevd's main thread ran ${fmt(results['detach_daemon_cpu_ms']!)} ms in ${results['detach_daemon_wakes']} wakes, ` +
          `waiting ${fmt(results['detach_daemon_wait_per_wake_us']!)} µs for a CPU per wake (mean)`,
      );
  }
}

/**
 * A libvirt test-driver node with `n` running domains, named `vm-NNNN` from
 * `first` on (the names of the C reference server's map, so both maps are
 * the same bytes).
 */
function nodeXml(first: number, n: number): string {
  const node = create().ele('node');
  for (let i = first; i < first + n; i++) {
    const d = node.ele('domain', { type: 'test' });
    d.ele('name').txt(`vm-${String(i).padStart(4, '0')}`);
    d.ele('uuid').txt(`00000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
    d.ele('memory').txt('65536');
    d.ele('vcpu').txt('1');
    d.ele('os').ele('type').txt('hvm');
    d.ele('metadata').ele('urn:vmdevd:vm:1', 'vmdevd:vm', { type: i % 2 ? 'odd' : 'even' });
  }
  return node.end({ headless: true });
}

/**
 * Many hosts at scale: SCALE_HOSTS private libvirtds (each in a mount
 * namespace of its own), each serving a test-driver node of SCALE_VMS
 * running domains, and one vmdevd with a backend on each.
 */
async function scaleBenchmarks(bus: PrivateBus): Promise<void> {
  const total = SCALE_HOSTS * SCALE_VMS;
  const map: Record<string, string> = {};
  for (let i = 0; i < total; i++) map[`vm-${String(i).padStart(4, '0')}`] = 'running';
  const mapFile = join(work, 'map-scale.json');
  writeFileSync(mapFile, JSON.stringify(map));
  say(`scale: ${SCALE_HOSTS} private libvirtds × ${SCALE_VMS} domains`);
  const daemons: PrivateLibvirtd[] = [];
  cleanups.push(async () => {
    for (const d of daemons) await d.stop();
  });
  const backends: Array<{ id: string; plugin: string; uri: string }> = [];
  for (let h = 0; h < SCALE_HOSTS; h++) {
    const file = join(work, `node-${h}.xml`);
    writeFileSync(file, nodeXml(h * SCALE_VMS, SCALE_VMS));
    const daemon = await startPrivateLibvirtd();
    daemons.push(daemon);
    backends.push({ id: `host${h}`, plugin: 'libvirt', uri: daemon.uri('test', file) });
  }
  const ref = startService(
    `${TOOLS}/ref-server`,
    ['--address', bus.address, '--name', 'org.example.refscale', '--vms', String(total)],
    join(work, 'ref-scale.log'),
  );
  cleanups.push(() => ref.stop());
  const bare = startService(
    process.execPath,
    [`${ROOT}dist/bench/bare-service.js`, bus.address, 'org.example.bare', mapFile],
    join(work, 'bare.log'),
  );
  cleanups.push(() => bare.stop());
  await waitUntil('ref-server at scale', () => /READY/.test(ref.output()));
  await waitUntil('bare service', () => /READY/.test(bare.output()));

  // The floor of a start: a C client (virsh) opening every host and
  // listing its domains, all at once. Opening a test-driver URI makes
  // libvirtd read its node's domains, for every connection anew, so this
  // is the part of the start that is libvirtd's work, whoever the client.
  const floors: number[] = [];
  for (let i = 0; i < SCALE_FLOOR_ROUNDS; i++) {
    const t0 = performance.now();
    const listed = await Promise.all(backends.map(({ uri }) => run('virsh', ['-c', uri, 'list', '--all', '--name'])));
    floors.push(performance.now() - t0);
    const count = listed.reduce((n, out) => n + out.split('\n').filter((l) => l.trim() !== '').length, 0);
    if (count !== total) throw new Error(`virsh listed ${count} domains of ${total}`);
  }
  results['scale_floor_ms'] = median(floors);
  say(
    `  a C client (virsh) opening the ${SCALE_HOSTS} hosts and listing their domains, all at once: ` +
      `median ${fmt(results['scale_floor_ms'])} ms of ${floors.map((f) => fmt(f, 0)).join(', ')}`,
  );

  const busName = 'org.example.scale';
  const probe = startService(
    `${TOOLS}/signal-probe`,
    ['--address', bus.address, '--json', '--sender', busName, '--member', 'TestSignal', '--count', '1'],
    join(work, 'scale.jsonl'),
  );
  cleanups.push(() => probe.stop());
  await waitUntil('scale probe', () => /"ready"/.test(probe.output()));
  const svc = await startVmdevd(bus, busName, backends);
  await waitUntil(`first TestSignal at ${total} VMs`, () => /"type":"signal"/.test(probe.output()), 120_000);
  const first = JSON.parse(
    probe
      .output()
      .split('\n')
      .find((l) => l.includes('"type":"signal"'))!,
  ) as { t_ns: string; args: unknown[] };
  results['scale_first_signal_ms'] = Number(BigInt(first.t_ns) - svc.startedNs) / 1e6;
  results['scale_first_signal_entries'] = (first.args[0] as { entries?: number }).entries ?? NaN;
  say(`  first complete TestSignal ${fmt(results['scale_first_signal_ms'])} ms after the start`);

  // The types come after the first map (a call per domain): a selector by
  // type is answered once every backend has read them. "odd" names 5,000
  // VMs, so the answer is AmbiguousSelector, and it comes only then.
  const client = await TestClient.connect(bus.address);
  cleanups.push(async () => client.close());
  const byType = await client.call({ destination: busName, member: 'GetDevices', signature: 's', body: ['odd'] }).then(
    () => 'an answer',
    (err: Error) => err.message,
  );
  results['scale_types_ms'] = Number(nowNs() - svc.startedNs) / 1e6;
  if (!/matches \d+ VMs/.test(byType)) throw new Error(`GetDevices("odd") at scale: ${byType}`);
  say(`  a selector by type answered ${fmt(results['scale_types_ms'])} ms after the start`);

  // Get TestProperty against the C reference holding the same map; the
  // client walks every 20th reply (walking 10,000 entries costs it more
  // than either server, on the same two cores).
  const get = await compare(
    `Get TestProperty (${total})`,
    'get-testproperty',
    1,
    [
      { name: 'ref', dest: 'org.example.refscale', expectEntries: total, checkEvery: 20 },
      { name: 'vmdevd', dest: busName, expectEntries: total, checkEvery: 20 },
    ],
    bus.address,
  );
  results['scale_get_ref_p50_us'] = get['ref']!.p50;
  results['scale_get_vmdevd_p50_us'] = get['vmdevd']!.p50;
  results['scale_get_ref_p99_us'] = get['ref']!.p99;
  results['scale_get_vmdevd_p99_us'] = get['vmdevd']!.p99;

  // Every VM changes state at once: one write pauses all of them.
  const signals = await client.subscribe(`type='signal',sender='${busName}',member='TestSignal'`);
  const paused = Object.fromEntries(Object.keys(map).map((k) => [k, 'paused']));
  const isAllPaused = (s: Signal) => {
    const m = s.body[0] as Record<string, string>;
    return Object.keys(m).length === total && Object.values(m).every((v) => v === 'paused');
  };
  const t0 = performance.now();
  await client.call({
    destination: busName,
    interface: 'org.freedesktop.DBus.Properties',
    member: 'Set',
    signature: 'ssv',
    body: ['org.example.dbustest.Module', 'TestProperty', new dbusVariant('a{ss}', paused)],
  });
  const written = performance.now() - t0;
  const last = await signals.waitFor(isAllPaused, 120_000, 'a TestSignal with every VM paused');
  // A bus barrier: once this Get is answered, every signal sent before it has arrived.
  const now = await client.call({
    destination: busName,
    interface: 'org.freedesktop.DBus.Properties',
    member: 'Get',
    signature: 'ss',
    body: ['org.example.dbustest.Module', 'TestProperty'],
  });
  const property = (now[0] as { value: Record<string, string> }).value;
  const lastSignal = signals.signals.at(-1)!;
  results['scale_burst_write_ms'] = written;
  results['scale_burst_last_signal_ms'] = last.at - t0;
  results['scale_burst_signals'] = signals.signals.length;
  results['scale_burst_last_equals'] =
    isAllPaused(lastSignal) && JSON.stringify(property) === JSON.stringify(paused) ? 1 : 0;
  say(
    `  all ${total} paused at once: written in ${fmt(written)} ms, ${signals.signals.length} TestSignals, ` +
      `the one with all paused ${fmt(last.at - t0)} ms after the write began; the last equals libvirt's: ${results['scale_burst_last_equals'] === 1}`,
  );

  // Memory, after the same Gets to both.
  for (const dest of [busName, 'org.example.bare']) {
    await run(`${TOOLS}/load`, [
      '--address',
      bus.address,
      '--call',
      'get-testproperty',
      '--dest',
      dest,
      '--count',
      '200',
      '--check-every',
      '20',
    ]);
  }
  await new Promise((r) => setTimeout(r, 1000));
  results['rss_scale_mib'] = rssMiB(svc.pid);
  results['rss_bare_scale_mib'] = rssMiB(bare.pid);
  say(`  RSS ${fmt(results['rss_scale_mib'])} MiB vs bare dbus-next ${fmt(results['rss_bare_scale_mib'])} MiB`);
}

async function startupBenchmark(bus: PrivateBus): Promise<void> {
  const times: number[] = [];
  for (let i = 0; i < (opts.quick ? 3 : 7); i++) {
    const busName = `org.example.start${i}`;
    const probe = startService(
      `${TOOLS}/signal-probe`,
      [
        '--address',
        bus.address,
        '--json',
        '--sender',
        'org.freedesktop.DBus',
        '--member',
        'NameOwnerChanged',
        '--count',
        '2',
        '--path',
        '/org/freedesktop/DBus',
      ],
      join(work, `start${i}.jsonl`),
    );
    await waitUntil('start probe', () => /"ready"/.test(probe.output()));
    const svc = await startVmdevd(bus, busName, [{ id: 'default', plugin: 'libvirt', uri: 'test:///default' }]);
    // The first NameOwnerChanged is the connection's unique name, about
    // 10 ms before the bus name; the figure is the one for the bus name.
    const owned = () =>
      probe
        .output()
        .split('\n')
        .filter((l) => l.includes('"type":"signal"'))
        .map((l) => JSON.parse(l) as { t_ns: string; args: unknown[] })
        .find((s) => s.args[0] === busName);
    await waitUntil('NameOwnerChanged of the bus name', () => owned() !== undefined);
    const sig = owned()!;
    times.push(Number(BigInt(sig.t_ns) - svc.startedNs) / 1e6);
    await svc.stop();
    await probe.stop();
  }
  results['start_to_name_ms'] = median(times);
  say(
    `  start to bus name: median ${fmt(results['start_to_name_ms'])} ms of ${times.map((t) => fmt(t, 0)).join(', ')}`,
  );
}

function table(): string {
  const r = (k: string) => results[k] ?? NaN;
  const ratio = (a: number, b: number) => a / b;
  const rows: Array<[string, string, string, string, string, string]> = [];
  // A figure of a part left out (--skip) gets no row.
  const row = (what: string, vm: number, ref: string, other: string, rat: string, target: string) => {
    if (Number.isFinite(vm)) rows.push([what, fmt(vm), ref, other, rat, target]);
  };
  const yes = (ok: boolean) => (ok ? 'met' : 'MISSED');
  const tmR50 = ratio(r('testmethod_vmdevd_p50_us'), r('testmethod_ref_p50_us'));
  const tmR99 = ratio(r('testmethod_vmdevd_p99_us'), r('testmethod_ref_p99_us'));
  const tmRate = ratio(r('testmethod_vmdevd_rate16'), r('testmethod_ref_rate16'));
  row(
    'TestMethod p50 (µs)',
    r('testmethod_vmdevd_p50_us'),
    fmt(r('testmethod_ref_p50_us')),
    `ListDomains ${fmt(r('listdomains_libvirtdbus_p50_us'))}`,
    `${fmt(tmR50, 2)}×`,
    `≤ 1.25× C: ${yes(tmR50 <= 1.25)}`,
  );
  row(
    'TestMethod p99 (µs)',
    r('testmethod_vmdevd_p99_us'),
    fmt(r('testmethod_ref_p99_us')),
    `ListDomains ${fmt(r('listdomains_libvirtdbus_p99_us'))}`,
    `${fmt(tmR99, 2)}×`,
    `≤ 2× C: ${yes(tmR99 <= 2)}`,
  );
  row(
    '… in the first, unmeasured round, on a fresh daemon, p99 (µs)',
    r('testmethod_vmdevd_cold_p99_us'),
    '',
    `p50 ${fmt(r('testmethod_vmdevd_cold_p50_us'))}`,
    '',
    '',
  );
  row(
    'TestMethod calls/s, 16 in flight',
    r('testmethod_vmdevd_rate16'),
    fmt(r('testmethod_ref_rate16'), 0),
    `ListDomains ${fmt(r('listdomains_libvirtdbus_rate16'), 0)}`,
    `${fmt(tmRate, 2)}×`,
    `≥ 0.6× C and > libvirt-dbus: ${yes(tmRate >= 0.6 && r('testmethod_vmdevd_rate16') > r('listdomains_libvirtdbus_rate16'))}`,
  );
  row(
    'rejected TestMethod p50 (µs)',
    r('invalid_vmdevd_p50_us'),
    fmt(r('invalid_ref_p50_us')),
    '',
    `${fmt(ratio(r('invalid_vmdevd_p50_us'), r('invalid_ref_p50_us')), 2)}×`,
    '',
  );
  row(
    'rejected TestMethod p99 (µs)',
    r('invalid_vmdevd_p99_us'),
    fmt(r('invalid_ref_p99_us')),
    '',
    `${fmt(ratio(r('invalid_vmdevd_p99_us'), r('invalid_ref_p99_us')), 2)}×`,
    '',
  );
  row(
    'rejected TestMethod calls/s, 16 in flight',
    r('invalid_vmdevd_rate16'),
    fmt(r('invalid_ref_rate16'), 0),
    '',
    `${fmt(ratio(r('invalid_vmdevd_rate16'), r('invalid_ref_rate16')), 2)}×`,
    '',
  );
  for (const n of [1, 100, 1000]) {
    const g = ratio(r(`get${n}_vmdevd_p50_us`), r(`get${n}_ref_p50_us`));
    row(
      `Get TestProperty, ${n} VMs, p50 (µs)`,
      r(`get${n}_vmdevd_p50_us`),
      fmt(r(`get${n}_ref_p50_us`)),
      n === 1 ? `Domain.Name ${fmt(r('getname_libvirtdbus_p50_us'))}` : '',
      `${fmt(g, 2)}×`,
      n === 1000 ? `≤ 1.5× C: ${yes(g <= 1.5)}` : '',
    );
    row(
      `Get TestProperty, ${n} VMs, p99 (µs)`,
      r(`get${n}_vmdevd_p99_us`),
      fmt(r(`get${n}_ref_p99_us`)),
      '',
      `${fmt(ratio(r(`get${n}_vmdevd_p99_us`), r(`get${n}_ref_p99_us`)), 2)}×`,
      '',
    );
    row(
      `Get TestProperty, ${n} VMs, calls/s ×16`,
      r(`get${n}_vmdevd_rate16`),
      fmt(r(`get${n}_ref_rate16`), 0),
      '',
      `${fmt(ratio(r(`get${n}_vmdevd_rate16`), r(`get${n}_ref_rate16`)), 2)}×`,
      '',
    );
  }
  for (const [who, what] of [
    ['missing', 'a disk it lacks'],
    ['present', 'a disk it has'],
  ] as const) {
    const p50 = r(`lv_${who}_p50_us`);
    const p99 = r(`lv_${who}_p99_us`);
    const rate = r(`lv_${who}_rate16`);
    const theirs = (k: string) => r(`listdomains_libvirtdbus_${k}`);
    row(
      `TestMethod on test:///default, ${what}, p50 (µs)`,
      p50,
      '',
      `ListDomains ${fmt(theirs('p50_us'))}`,
      `${fmt(ratio(p50, theirs('p50_us')), 2)}×`,
      `≤ libvirt-dbus: ${yes(p50 <= theirs('p50_us'))}`,
    );
    row(
      `TestMethod on test:///default, ${what}, p99 (µs)`,
      p99,
      '',
      `ListDomains ${fmt(theirs('p99_us'))}`,
      `${fmt(ratio(p99, theirs('p99_us')), 2)}×`,
      `≤ libvirt-dbus: ${yes(p99 <= theirs('p99_us'))}`,
    );
    if (results[`lv_relay_${who}_p50_us`] !== undefined) {
      row(
        '… a C relay (the reply, then the libvirt calls on a call thread, then the outcome signal), p50 / p99 (µs)',
        r(`lv_relay_${who}_p50_us`),
        '',
        `p99 ${fmt(r(`lv_relay_${who}_p99_us`))}`,
        `p99 ${fmt(ratio(r(`lv_relay_${who}_p99_us`), theirs('p99_us')), 2)}×`,
        '',
      );
    }
    row(
      '… in the first, unmeasured round, on a fresh daemon, p99 (µs)',
      r(`lv_${who}_cold_p99_us`),
      '',
      `p50 ${fmt(r(`lv_${who}_cold_p50_us`))}`,
      '',
      '',
    );
    row(
      `TestMethod on test:///default, ${what}, calls/s ×16`,
      rate,
      '',
      `ListDomains ${fmt(theirs('rate16'), 0)}`,
      `${fmt(ratio(rate, theirs('rate16')), 2)}×`,
      `≥ 1.5× libvirt-dbus: ${yes(rate >= 1.5 * theirs('rate16'))}`,
    );
  }
  for (const [mode, what] of [
    ['apart', '50 ms apart'],
    ['atonce', 'one after the other at once'],
  ] as const) {
    const p50 = r(`event_vmdevd_${mode}_over_p50_us`);
    const p99 = r(`event_vmdevd_${mode}_over_p99_us`);
    const theirs50 = r(`event_libvirtdbus_${mode}_over_p50_us`);
    const theirs99 = r(`event_libvirtdbus_${mode}_over_p99_us`);
    row(
      `suspend/resume ${what} → TestSignal, p50 (µs)`,
      r(`event_vmdevd_${mode}_p50_us`),
      `direct client ${fmt(r(`event_direct_${mode}_p50_us`))}`,
      `DomainEvent ${fmt(r(`event_libvirtdbus_${mode}_p50_us`))}`,
      '',
      '',
    );
    row(
      `… later than the direct client, p50 (µs)`,
      p50,
      '',
      `DomainEvent +${fmt(theirs50)}`,
      `+${fmt(p50)} µs`,
      `≤ +150 µs and < DomainEvent: ${yes(p50 <= 150 && p50 < theirs50)}`,
    );
    row(
      `… later than the direct client, p99 (µs)`,
      p99,
      '',
      `DomainEvent +${fmt(theirs99)}`,
      `+${fmt(p99)} µs`,
      `< DomainEvent: ${yes(p99 < theirs99)}`,
    );
    row(
      `… a C relay (event callback → signal, nothing else), later, p50 / p99 (µs)`,
      r(`event_relay_${mode}_over_p50_us`),
      '',
      `p99 +${fmt(r(`event_relay_${mode}_over_p99_us`))}`,
      `+${fmt(r(`event_relay_${mode}_over_p50_us`))} µs`,
      '',
    );
    row(
      `… our binding alone (in Node), later, p50 (µs)`,
      r(`event_binding_${mode}_over_p50_us`),
      '',
      '',
      `+${fmt(r(`event_binding_${mode}_over_p50_us`))} µs`,
      '',
    );
  }
  if (results['event_vmdevd_first_changes'] !== undefined) {
    row(
      `… a fresh daemon's first ${r('event_vmdevd_first_changes')} changes, at once (before the warm-up), later, p50 / max (µs)`,
      r('event_vmdevd_first_over_p50_us'),
      '',
      `max +${fmt(r('event_vmdevd_first_over_max_us'))}; DomainEvent p50 +${fmt(r('event_libvirtdbus_first_over_p50_us'))}, max +${fmt(r('event_libvirtdbus_first_over_max_us'))}`,
      `+${fmt(r('event_vmdevd_first_over_p50_us'))} µs`,
      '',
    );
  }
  if (results['detach_vmdevd_p50_us'] !== undefined) {
    const d = r('detach_diff_p50_us');
    row(
      `TestMethod → DeviceDetached, SCSI disk, p50 of ${r('detach_pairs')} pairs (µs)`,
      r('detach_vmdevd_p50_us'),
      `direct ${fmt(r('detach_direct_p50_us'))}`,
      `95% interval +${fmt(r('detach_diff_ci_low_us'))} to +${fmt(r('detach_diff_ci_high_us'))}`,
      `+${fmt(d)} µs`,
      `≤ +1000 µs over direct: ${yes(d <= 1000)}`,
    );
    if (results['detach_libvirtdbus_p50_us'] !== undefined) {
      row(
        `… libvirt-dbus's DetachDevice → DeviceRemoved, p50 of ${r('detach_libvirtdbus_pairs')} pairs (µs)`,
        r('detach_libvirtdbus_p50_us'),
        '',
        `95% interval +${fmt(r('detach_libvirtdbus_diff_ci_low_us'))} to +${fmt(r('detach_libvirtdbus_diff_ci_high_us'))}; event → DeviceRemoved p50 ${fmt(r('detach_libvirtdbus_event_to_signal_p50_us'))}, p99 ${fmt(r('detach_libvirtdbus_event_to_signal_p99_us'))}`,
        `+${fmt(r('detach_libvirtdbus_diff_p50_us'))} µs`,
        '',
      );
    }
    if (results['detach_relay_p50_us'] !== undefined) {
      row(
        `… a C relay (TestMethod → detach → DeviceDetached, nothing else), p50 of ${r('detach_relay_pairs')} pairs (µs)`,
        r('detach_relay_p50_us'),
        '',
        `95% interval +${fmt(r('detach_relay_diff_ci_low_us'))} to +${fmt(r('detach_relay_diff_ci_high_us'))}; event → DeviceDetached p50 ${fmt(r('detach_relay_event_to_signal_p50_us'))}`,
        `+${fmt(r('detach_relay_diff_p50_us'))} µs`,
        '',
      );
    }
    if (results['detach_fresh_pairs'] !== undefined) {
      row(
        `… on the daemon's first requests (before the warm-up), later than direct, p50 of ${r('detach_fresh_pairs')} pairs (µs)`,
        r('detach_fresh_diff_p50_us'),
        '',
        `95% interval +${fmt(r('detach_fresh_diff_ci_low_us'))} to +${fmt(r('detach_fresh_diff_ci_high_us'))}`,
        `+${fmt(r('detach_fresh_diff_p50_us'))} µs`,
        '',
      );
    }
    row(
      '… each vmdevd cycle minus the direct one before it, p25 / p50 / p75 (µs)',
      r('detach_pair_diff_p50_us'),
      '',
      `${fmt(r('detach_pair_diff_p25_us'))} / ${fmt(r('detach_pair_diff_p50_us'))} / ${fmt(r('detach_pair_diff_p75_us'))}`,
      '',
      '',
    );
    if (results['detach_vmdevd_to_event_p50_us'] !== undefined) {
      row(
        "… in vmdevd's cycles: TestMethod → the probe's own DEVICE_REMOVED, p50 (µs)",
        r('detach_vmdevd_to_event_p50_us'),
        `direct ${fmt(r('detach_direct_p50_us'))}`,
        '',
        '',
        '',
      );
      row(
        "… in vmdevd's cycles: that DEVICE_REMOVED → DeviceDetached, p50 / p99 (µs)",
        r('detach_vmdevd_event_to_signal_p50_us'),
        '',
        `p99 ${fmt(r('detach_vmdevd_event_to_signal_p99_us'))}`,
        '',
        '',
      );
    }
    if (results['detach_daemon_wakes'] !== undefined) {
      row(
        "… vmdevd's main thread, runnable but waiting for a CPU, per wake during the pairs (µs, mean)",
        r('detach_daemon_wait_per_wake_us'),
        '',
        `${r('detach_daemon_wakes')} wakes, ${fmt(r('detach_daemon_cpu_ms'))} ms on a CPU`,
        '',
        '',
      );
    }
  }
  if (results['scale_first_signal_ms'] !== undefined) {
    const total = SCALE_HOSTS * SCALE_VMS;
    const label = `${SCALE_HOSTS} hosts × ${SCALE_VMS} VMs`;
    row(
      `${label}: start → first complete TestSignal (ms)`,
      r('scale_first_signal_ms'),
      '',
      `${fmt(r('scale_first_signal_entries'), 0)} entries`,
      '',
      `< 3000 ms: ${yes(r('scale_first_signal_ms') < 3000 && r('scale_first_signal_entries') === total)}`,
    );
    row(
      `… a C client (virsh) opening the ${SCALE_HOSTS} hosts and listing their domains, all at once, median of ${SCALE_FLOOR_ROUNDS} (ms)`,
      r('scale_floor_ms'),
      '',
      'libvirtd reads a node at each open',
      `vmdevd ${fmt(ratio(r('scale_first_signal_ms'), r('scale_floor_ms')), 2)}×`,
      '',
    );
    row(`${label}: start → a selector by type answered (ms)`, r('scale_types_ms'), '', 'every type read', '', '');
    const g = ratio(r('scale_get_vmdevd_p50_us'), r('scale_get_ref_p50_us'));
    row(
      `${label}: Get TestProperty p50 (µs)`,
      r('scale_get_vmdevd_p50_us'),
      fmt(r('scale_get_ref_p50_us')),
      '',
      `${fmt(g, 2)}×`,
      `≤ 1.5× C: ${yes(g <= 1.5)}`,
    );
    row(
      `${label}: Get TestProperty p99 (µs)`,
      r('scale_get_vmdevd_p99_us'),
      fmt(r('scale_get_ref_p99_us')),
      '',
      `${fmt(ratio(r('scale_get_vmdevd_p99_us'), r('scale_get_ref_p99_us')), 2)}×`,
      '',
    );
    row(
      `${label}: all paused by one write → TestSignal with all paused (ms)`,
      r('scale_burst_last_signal_ms'),
      '',
      `write answered ${fmt(r('scale_burst_write_ms'))} ms; ${fmt(r('scale_burst_signals'), 0)} TestSignals`,
      '',
      `last map = libvirt's: ${yes(r('scale_burst_last_equals') === 1)}`,
    );
    const rss = ratio(r('rss_scale_mib'), r('rss_bare_scale_mib'));
    row(
      `${label}: RSS (MiB)`,
      r('rss_scale_mib'),
      `bare dbus-next ${fmt(r('rss_bare_scale_mib'))}`,
      '',
      `${fmt(rss, 2)}×`,
      `≤ 1.5× bare: ${yes(rss <= 1.5)}`,
    );
  }
  row('RSS idle, 1 VM (MiB)', r('rss_idle_mib'), '', '', '', '');
  row('RSS after the call load (MiB)', r('rss_after_load_mib'), '', '', '', '');
  row('start → bus name (ms)', r('start_to_name_ms'), '', '', '', `< 300 ms: ${yes(r('start_to_name_ms') < 300)}`);
  const header = ['measure', 'vmdevd', 'C reference (sd-bus)', 'other', 'ratio', 'target'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((x) => x[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

async function main(): Promise<void> {
  await run('make', ['-s', '-C', `${ROOT}bench/c`]);
  const bus = await startPrivateBus();
  cleanups.push(() => bus.stop());
  const t0 = Date.now();
  if (!skip.has('calls')) await callBenchmarks(bus);
  if (!skip.has('libvirt')) {
    const libvirtd = await startLibvirtd();
    cleanups.push(() => libvirtd.stop());
    await libvirtBenchmarks(bus, libvirtd.uri);
  }
  if (!skip.has('scale')) await scaleBenchmarks(bus);
  if (!skip.has('startup')) await startupBenchmark(bus);
  results['bench_seconds'] = (Date.now() - t0) / 1000;
  results['bus_floor_note'] = 0;
  const load = (await run('cat', ['/proc/loadavg'])).split(' ').slice(0, 3).join(' ');
  console.log(
    `\nvmdevd benchmark: ${ROUNDS} round(s) of ${DURATION} s per call figure, ${CYCLES} event cycles; load average ${load}`,
  );
  console.log(
    `bus floor (Peer.Ping answered by dbus-daemon): p50 ${fmt(results['ping_p50_us'] ?? NaN)} µs, p99 ${fmt(results['ping_p99_us'] ?? NaN)} µs; the load client's own CPU: ${fmt(results['load_client_cpu_us'] ?? NaN)} µs per TestMethod\n`,
  );
  console.log(table());
  for (const n of notes) console.log(`note: ${n}`);
  if (opts.json)
    writeFileSync(
      opts.json,
      JSON.stringify(
        { date: new Date().toISOString(), load, rounds: ROUNDS, duration: DURATION, cycles: CYCLES, results },
        null,
        2,
      ),
    );
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  });
