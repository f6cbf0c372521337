/**
 * The vmdevd benchmark: vmdevd side by side with the bus's own floor, a C
 * reference server of the same contract (sd-bus), libvirt-dbus, a direct
 * libvirt client and a bare dbus-next service, all on one private
 * dbus-daemon and (for events and detaches) one real libvirtd, in one run.
 * Prints one table; `--json FILE` also writes every figure.
 *
 *   node dist/bench/run.js [--rounds N] [--duration S] [--cycles N] [--quick] [--json FILE]
 *                          [--skip calls|libvirt|detach|scale|startup]...
 *
 * bench/README.md says what each figure is, and holds the table of a run.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { create } from 'xmlbuilder2';
import { startPrivateBus, type PrivateBus } from '../test/harness/dbus-daemon.js';
import { startLibvirtd } from '../test/harness/libvirtd.js';
import { createTestVm } from '../test/harness/test-vms.js';
import { TEST_BACKEND } from '../test/harness/stack.js';
import { DAEMON_ENV, DAEMON_NODE_ARGS } from '../test/harness/vmdevd-process.js';
import {
  fmt,
  load,
  median,
  nowNs,
  percentile,
  rssMiB,
  ROOT,
  run,
  startService,
  TOOLS,
  waitUntil,
  type LoadResult,
  type Service,
} from './lib.js';

const { values: opts } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    duration: { type: 'string', default: '2' },
    cycles: { type: 'string', default: '50' },
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
    skip: { type: 'string', multiple: true, default: [] },
  },
});
const ROUNDS = opts.quick ? 1 : Number(opts.rounds);
const DURATION = opts.quick ? 1 : Number(opts.duration);
const CYCLES = opts.quick ? 20 : Number(opts.cycles);
const skip = new Set(opts.skip);

const work = mkdtempSync(join(tmpdir(), 'vmdevd-bench-'));
const cleanups: Array<() => Promise<unknown>> = [];
const results: Record<string, number> = {};
const notes: string[] = [];
const say = (s: string) => process.stderr.write(`${s}\n`);

const VMDEVD = `${ROOT}bin/vmdevd`;

/** Starts vmdevd with its log in a file and waits until it owns `busName`. */
async function startVmdevd(
  bus: PrivateBus,
  busName: string,
  backends: unknown[],
  extra: Record<string, unknown> = {},
): Promise<Service & { startedNs: bigint }> {
  const config = join(work, `${busName}.json`);
  writeFileSync(config, JSON.stringify({ busName, logLevel: 'info', detachTimeoutSeconds: 30, backends, ...extra }));
  const startedNs = nowNs();
  const svc = startService(
    process.execPath,
    [...DAEMON_NODE_ARGS, VMDEVD, '--address', bus.address, '--config', config],
    join(work, `${busName}.log`),
    { ...process.env, ...DAEMON_ENV },
  );
  cleanups.push(() => svc.stop());
  await waitUntil(`${busName} ready`, () => /vmdevd: ready/.test(svc.output()) || svc.child.exitCode !== null);
  if (svc.child.exitCode !== null) throw new Error(`vmdevd ${busName} exited:\n${svc.output()}`);
  return { ...svc, startedNs };
}

function testBackend(vms: number) {
  return [{ id: 'bench', plugin: TEST_BACKEND, vms: [], generate: vms, detachDelayMs: 0 }];
}

/** One `load` figure per round for each server, interleaved; medians per server. */
async function compare(
  label: string,
  kind: string,
  inflight: number,
  servers: Array<{ name: string; dest: string; selector?: string; expectEntries?: number; path?: string }>,
  address: string,
): Promise<Record<string, { p50: number; p99: number; rate: number; clientCpu: number }>> {
  const per: Record<string, LoadResult[]> = {};
  for (let r = 0; r < ROUNDS; r++) {
    for (const s of servers) {
      const res = await load(address, kind, {
        dest: s.dest,
        path: s.path,
        inflight,
        duration: DURATION,
        selector: s.selector,
        expectEntries: s.expectEntries,
      });
      (per[s.name] ??= []).push(res);
    }
  }
  const out: Record<string, { p50: number; p99: number; rate: number; clientCpu: number }> = {};
  for (const [name, list] of Object.entries(per)) {
    out[name] = {
      p50: median(list.map((x) => x.latency.p50_us)),
      p99: median(list.map((x) => x.latency.p99_us)),
      rate: median(list.map((x) => x.calls_per_s)),
      clientCpu: median(list.map((x) => x.client.cpu_us_per_call)),
    };
    say(
      `  ${label} ${name} x${inflight}: p50 ${fmt(out[name].p50)} µs, p99 ${fmt(out[name].p99)} µs, ${fmt(out[name].rate, 0)} calls/s`,
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
  const lvd = startService('/usr/sbin/libvirt-dbus', ['--session'], join(work, 'libvirt-dbus.log'), {
    ...process.env,
    DBUS_SESSION_BUS_ADDRESS: bus.address,
  });
  cleanups.push(() => lvd.stop());
  await waitUntil('libvirt-dbus', async () => {
    try {
      await run(`${TOOLS}/load`, [
        '--address',
        bus.address,
        '--call',
        'libvirt-listdomains',
        '--count',
        '1',
        '--warmup',
        '0',
      ]);
      return true;
    } catch {
      return false;
    }
  });
  await new Promise((r) => setTimeout(r, 500));
  results['rss_idle_mib'] = rssMiB(vmdevd1.pid);

  const tm = [
    { name: 'ref', dest: 'org.example.ref1', selector: 'vm-0000' },
    { name: 'vmdevd', dest: 'org.example.vmdevd1', selector: 'vm-00000' },
  ];
  const ping = await compare('bus ping', 'ping', 1, [{ name: 'bus', dest: 'org.freedesktop.DBus' }], bus.address);
  results['ping_p50_us'] = ping['bus']!.p50;
  results['ping_p99_us'] = ping['bus']!.p99;
  const t1 = await compare('TestMethod', 'testmethod', 1, tm, bus.address);
  const t16 = await compare('TestMethod', 'testmethod', 16, tm, bus.address);
  const i1 = await compare('rejected TestMethod', 'testmethod-invalid', 1, tm, bus.address);
  const i16 = await compare('rejected TestMethod', 'testmethod-invalid', 16, tm, bus.address);
  const l1 = await compare(
    'libvirt-dbus',
    'libvirt-listdomains',
    1,
    [{ name: 'libvirt-dbus', dest: 'org.libvirt' }],
    bus.address,
  );
  const l16 = await compare(
    'libvirt-dbus',
    'libvirt-listdomains',
    16,
    [{ name: 'libvirt-dbus', dest: 'org.libvirt' }],
    bus.address,
  );
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
  results['listdomains_libvirtdbus_p50_us'] = l1['libvirt-dbus']!.p50;
  results['listdomains_libvirtdbus_p99_us'] = l1['libvirt-dbus']!.p99;
  results['listdomains_libvirtdbus_rate16'] = l16['libvirt-dbus']!.rate;
  results['getname_libvirtdbus_p50_us'] = n1['libvirt-dbus']!.p50;
  for (const n of [1, 100, 1000]) {
    const servers = [
      { name: 'ref', dest: `org.example.ref${n}`, expectEntries: n },
      { name: 'vmdevd', dest: `org.example.vmdevd${n}`, expectEntries: n },
    ];
    const g1 = await compare(`Get TestProperty (${n})`, 'get-testproperty', 1, servers, bus.address);
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
    `events: VM ${vm.name} (${vm.virtType}); one listener per pass: libvirt-dbus --system, our binding alone, vmdevd`,
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

  /**
   * One pass: event-probe suspends and resumes the VM CYCLES times while
   * one listener listens. Listeners get a pass each, so that they do not
   * compete for the CPUs at the moment libvirtd sends the event (on a
   * 2-core machine, four woken processes would measure the scheduler).
   * Returns, per change, how long after the call the direct client saw its
   * event and how much later the listener saw it.
   */
  async function pass(
    name: string,
    arrivals: (op: string) => bigint[],
  ): Promise<{ direct: number[]; over: number[]; total: number[] }> {
    const out = await run(`${TOOLS}/event-probe`, [
      '--uri',
      libvirtd.uri,
      '--domain',
      vm.name,
      '--cycles',
      String(CYCLES),
      '--emit-timestamps',
      '--json',
    ]);
    await new Promise((r) => setTimeout(r, 500));
    const calls = out
      .split('\n')
      .filter((l) => l.includes('"type":"call"'))
      .map((l) => JSON.parse(l) as { op: string; t_call_ns: string; t_event_ns: string });
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
    say(`  events, ${name}: direct p50 ${fmt(percentile(direct, 50))} µs, ${name} +${fmt(percentile(over, 50))} µs`);
    return { direct, over, total };
  }
  const record = (key: string, r: { direct: number[]; over: number[]; total: number[] }) => {
    results[`event_${key}_p50_us`] = percentile(r.total, 50);
    results[`event_${key}_p99_us`] = percentile(r.total, 99);
    results[`event_${key}_over_p50_us`] = percentile(r.over, 50);
    results[`event_${key}_over_p99_us`] = percentile(r.over, 99);
    results[`event_${key}_direct_p50_us`] = percentile(r.direct, 50);
  };

  // libvirt-dbus (--system, its system bus pointed at the private bus).
  const lvd = startService('/usr/sbin/libvirt-dbus', ['--system'], join(work, 'libvirt-dbus-system.log'), {
    ...process.env,
    DBUS_SYSTEM_BUS_ADDRESS: bus.address,
  });
  cleanups.push(() => lvd.stop());
  // libvirt-dbus opens its libvirt connection (and subscribes to events) on the first call.
  await waitUntil('libvirt-dbus --system', async () => {
    try {
      await run(`${TOOLS}/load`, [
        '--address',
        bus.address,
        '--call',
        'libvirt-listdomains',
        '--path',
        '/org/libvirt/QEMU',
        '--count',
        '1',
        '--warmup',
        '0',
      ]);
      return true;
    } catch {
      return false;
    }
  });
  const theirs = probe(
    ['--sender', 'org.libvirt', '--interface', 'org.libvirt.Connect', '--member', 'DomainEvent'],
    'domainevent',
  );
  await waitUntil('DomainEvent probe', () => /"ready"/.test(theirs.output()));
  record('libvirtdbus', await pass('libvirt-dbus DomainEvent', () => signalTimes(theirs, () => true)));
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
  record('binding', await pass('the binding in Node', () => bindingArrivals));
  await watcher.close();

  // vmdevd with the libvirt plugin.
  await startVmdevd(bus, 'org.example.dbustest', [{ id: 'local', plugin: 'libvirt', uri: libvirtd.uri }]);
  const ours = probe(
    [
      '--sender',
      'org.example.dbustest',
      '--interface',
      'org.example.dbustest.Module',
      '--member',
      'TestSignal',
      '--key',
      vm.name,
    ],
    'testsignal',
  );
  await waitUntil('TestSignal probe', () => /"ready"/.test(ours.output()));
  const vmdevd = await pass('vmdevd TestSignal', (op) =>
    signalTimes(ours, (args) => String(args[0]).endsWith(`=${op === 'suspend' ? 'paused' : 'running'}`)),
  );
  record('vmdevd', vmdevd);
  results['event_direct_p50_us'] = percentile(vmdevd.direct, 50);
  results['event_direct_p99_us'] = percentile(vmdevd.direct, 99);
  results['event_cycles'] = vmdevd.direct.length;

  // End to end: the same SCSI disk detached directly and through vmdevd.
  if (!skip.has('detach')) {
    for (const mode of ['direct', 'vmdevd'] as const) {
      const args = [
        '--uri',
        libvirtd.uri,
        '--domain',
        vm.name,
        '--target',
        'sda',
        '--cycles',
        String(Math.min(CYCLES, 30)),
        '--json',
        '--mode',
        mode,
      ];
      if (mode === 'vmdevd') args.push('--address', bus.address);
      const res = JSON.parse(
        (await run(`${TOOLS}/detach-probe`, args))
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .at(-1)!,
      ) as { latency?: { p50_us: number; p99_us: number }; detach?: { p50_us: number; p99_us: number } };
      const lat = res.latency ?? res.detach!;
      results[`detach_${mode}_p50_us`] = lat.p50_us;
      results[`detach_${mode}_p99_us`] = lat.p99_us;
      say(`  detach ${mode}: p50 ${fmt(lat.p50_us)} µs`);
    }
  }
}

/** A libvirt test-driver node with `n` running domains. */
function nodeXml(n: number): { xml: string; map: Record<string, string> } {
  const node = create().ele('node');
  const map: Record<string, string> = {};
  for (let i = 0; i < n; i++) {
    const name = `scale-${String(i).padStart(4, '0')}`;
    const d = node.ele('domain', { type: 'test' });
    d.ele('name').txt(name);
    d.ele('uuid').txt(`00000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
    d.ele('memory').txt('65536');
    d.ele('vcpu').txt('1');
    d.ele('os').ele('type').txt('hvm');
    d.ele('metadata').ele('urn:vmdevd:vm:1', 'vmdevd:vm', { type: i % 2 ? 'odd' : 'even' });
    map[name] = 'running';
  }
  return { xml: node.end({ headless: true }), map };
}

async function scaleBenchmarks(bus: PrivateBus): Promise<void> {
  const n = 1000;
  const { xml, map } = nodeXml(n);
  const file = join(work, 'node-1000.xml');
  writeFileSync(file, xml);
  const mapFile = join(work, 'map-1000.json');
  writeFileSync(mapFile, JSON.stringify(map));
  const busName = 'org.example.scale';
  const probe = startService(
    `${TOOLS}/signal-probe`,
    ['--address', bus.address, '--json', '--sender', busName, '--member', 'TestSignal', '--count', '1'],
    join(work, 'scale.jsonl'),
  );
  cleanups.push(() => probe.stop());
  await waitUntil('scale probe', () => /"ready"/.test(probe.output()));
  // Through libvirtd (test+unix), as qemu:///system is: the domains live in
  // libvirtd, not in vmdevd's process as with an in-process test:/// driver.
  const svc = await startVmdevd(bus, busName, [{ id: 'scale', plugin: 'libvirt', uri: `test+unix://${file}` }]);
  await waitUntil('first TestSignal at 1000 VMs', () => /"type":"signal"/.test(probe.output()), 60_000);
  const first = JSON.parse(
    probe
      .output()
      .split('\n')
      .find((l) => l.includes('"type":"signal"'))!,
  ) as { t_ns: string; args: unknown[] };
  results['scale_first_signal_ms'] = Number(BigInt(first.t_ns) - svc.startedNs) / 1e6;
  results['scale_first_signal_entries'] = Number(String(first.args[0]).replace(/\D+/g, '')) || NaN;
  // The same 1000 Gets to both, then their memory.
  const bare = startService(
    process.execPath,
    [`${ROOT}dist/bench/bare-service.js`, bus.address, 'org.example.bare', mapFile],
    join(work, 'bare.log'),
  );
  cleanups.push(() => bare.stop());
  await waitUntil('bare service', () => /READY/.test(bare.output()));
  for (const dest of [busName, 'org.example.bare']) {
    await run(`${TOOLS}/load`, [
      '--address',
      bus.address,
      '--call',
      'get-testproperty',
      '--dest',
      dest,
      '--count',
      '1000',
      '--expect-entries',
      String(n),
    ]);
  }
  await new Promise((r) => setTimeout(r, 1000));
  results['rss_1000_mib'] = rssMiB(svc.pid);
  results['rss_bare_1000_mib'] = rssMiB(bare.pid);
  say(
    `  scale: first TestSignal after ${fmt(results['scale_first_signal_ms'])} ms; RSS ${fmt(results['rss_1000_mib'])} MiB vs bare ${fmt(results['rss_bare_1000_mib'])} MiB`,
  );
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
        '1',
        '--path',
        '/org/freedesktop/DBus',
      ],
      join(work, `start${i}.jsonl`),
    );
    await waitUntil('start probe', () => /"ready"/.test(probe.output()));
    const svc = await startVmdevd(bus, busName, [{ id: 'default', plugin: 'libvirt', uri: 'test:///default' }]);
    await waitUntil('NameOwnerChanged', () => /"type":"signal"/.test(probe.output()));
    const sig = JSON.parse(
      probe
        .output()
        .split('\n')
        .find((l) => l.includes('"type":"signal"'))!,
    ) as { t_ns: string; args: unknown[] };
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
  const row = (what: string, vm: number, ref: string, other: string, rat: string, target: string) =>
    rows.push([what, fmt(vm), ref, other, rat, target]);
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
  const over = r('event_vmdevd_over_p50_us');
  row(
    'suspend/resume → TestSignal p50 (µs)',
    r('event_vmdevd_p50_us'),
    `direct client ${fmt(r('event_direct_p50_us'))}`,
    `DomainEvent ${fmt(r('event_libvirtdbus_p50_us'))}`,
    '',
    '',
  );
  row(
    '… later than the direct client, p50 (µs)',
    over,
    '',
    `DomainEvent +${fmt(r('event_libvirtdbus_over_p50_us'))}`,
    `+${fmt(over)} µs`,
    `≤ +150 µs: ${yes(over <= 150)}`,
  );
  row(
    'our binding alone (in Node), later than direct, p50 (µs)',
    r('event_binding_over_p50_us'),
    '',
    '',
    `+${fmt(r('event_binding_over_p50_us'))} µs`,
    '',
  );
  row(
    '… later than the direct client, p99 (µs)',
    r('event_vmdevd_over_p99_us'),
    '',
    `DomainEvent +${fmt(r('event_libvirtdbus_over_p99_us'))}`,
    '',
    '',
  );
  if (results['detach_vmdevd_p50_us'] !== undefined) {
    const d = r('detach_vmdevd_p50_us') - r('detach_direct_p50_us');
    row(
      'TestMethod → DeviceDetached, SCSI disk, p50 (µs)',
      r('detach_vmdevd_p50_us'),
      `direct ${fmt(r('detach_direct_p50_us'))}`,
      '',
      `+${fmt(d)} µs`,
      `≤ +1000 µs over direct: ${yes(d <= 1000)}`,
    );
  }
  row('1,000 VMs: start → first complete TestSignal (ms)', r('scale_first_signal_ms'), '', '', '', '');
  const rss = ratio(r('rss_1000_mib'), r('rss_bare_1000_mib'));
  row(
    'RSS at 1,000 VMs (MiB)',
    r('rss_1000_mib'),
    `bare dbus-next ${fmt(r('rss_bare_1000_mib'))}`,
    '',
    `${fmt(rss, 2)}×`,
    `≤ 1.2× bare: ${yes(rss <= 1.2)}`,
  );
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
  if (!skip.has('libvirt') || !skip.has('scale')) {
    const libvirtd = await startLibvirtd();
    cleanups.push(() => libvirtd.stop());
    if (!skip.has('libvirt')) await libvirtBenchmarks(bus, libvirtd.uri);
    if (!skip.has('scale')) await scaleBenchmarks(bus);
  }
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
