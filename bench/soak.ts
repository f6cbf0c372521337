/**
 * The soak: vmdevd under an hour (by default) of paced, mixed load against
 * the test backend, on a private dbus-daemon. Each minute it samples the
 * daemon's resident size and open file descriptors (from /proc) and its
 * JavaScript heap (a node report, asked for with SIGUSR2), then prints the
 * samples as a table, the slope of each after the first ten minutes, and
 * writes them as an SVG plot.
 *
 *   node dist/bench/soak.js [--minutes 60] [--rate 40] [--clients 8] [--sample-seconds 60]
 *                           [--svg FILE] [--json FILE] [--seed N]
 *   node dist/bench/soak.js --replot FILE.json [--svg FILE]
 *
 * `--replot` draws the plot and prints the table again from the JSON of a
 * run, without running anything.
 *
 * The load is open-loop: `--rate` calls per second in all, spread over
 * `--clients` bus connections, whatever the daemon's latency (at most 400
 * in flight; past that a call is counted as skipped, not queued). The mix:
 * detaches that succeed, fail, take long, time out and join each other,
 * invalid requests, unknown VMs, reads and writes of TestProperty, and
 * bursts of state changes from the backend. bench/README.md has the
 * result of a run.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dbus from 'dbus-next';
import { BUS_NAME, TestClient, type CallError } from '../test/harness/bus-client.js';
import { startPrivateBus } from '../test/harness/dbus-daemon.js';
import { TEST_BACKEND } from '../test/harness/stack.js';
import { DAEMON_ENV, DAEMON_NODE_ARGS } from '../test/harness/vmdevd-process.js';
import { fmt, parseCommandLine, ROOT, startService, waitUntil } from './lib.js';
import { linearSlope, soakSvg, type SoakSample } from './soak-plot.js';

const USAGE = `
usage: node dist/bench/soak.js [--minutes 60] [--rate 40] [--clients 8] [--sample-seconds 60]
                              [--svg FILE] [--json FILE] [--seed N]
       node dist/bench/soak.js --replot FILE.json [--svg FILE]
`;

const { values: opts } = parseCommandLine(USAGE, {
  options: {
    minutes: { type: 'string', default: '60' },
    rate: { type: 'string', default: '40' },
    clients: { type: 'string', default: '8' },
    'sample-seconds': { type: 'string', default: '60' },
    svg: { type: 'string', default: join(ROOT, 'bench/soak.svg') },
    json: { type: 'string' },
    seed: { type: 'string', default: '1' },
    replot: { type: 'string' },
  },
});
const MINUTES = Number(opts.minutes);
const RATE = Number(opts.rate);
const CLIENTS = Number(opts.clients);
const SAMPLE_MS = Number(opts['sample-seconds']) * 1000;
const MAX_IN_FLIGHT = 400;
const VMS = 200;
/** The slope is taken from here on: the first minutes are warm-up (JIT, pools, caches). */
const SETTLED_MINUTES = Math.min(10, MINUTES / 2);
const say = (s: string) => process.stderr.write(`${s}\n`);

/** A small seeded generator (mulberry32): the same seed gives the same mix. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = random(Number(opts.seed));
const pick = <T>(list: readonly T[]): T => list[Math.floor(rnd() * list.length)]!;
const vmName = (i: number) => `vm-${String(i).padStart(5, '0')}`;

const work = mkdtempSync(join(tmpdir(), 'vmdevd-soak-'));
const reports = join(work, 'reports');
const counts = {
  requests: {} as Record<string, number>,
  replies: {} as Record<string, number>,
  outcomes: {} as Record<string, number>,
  skipped: 0,
};
const bump = (map: Record<string, number>, key: string) => (map[key] = (map[key] ?? 0) + 1);
/** Devices owed an outcome (vm and label), and outcomes that came for no such device or twice. */
const owed = new Set<string>();
let unexpectedOutcomes = 0;

async function main(): Promise<void> {
  const bus = await startPrivateBus();
  const controlSocket = join(work, 'control.sock');
  const configFile = join(work, 'config.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      detachTimeoutSeconds: 1,
      logLevel: 'info',
      backends: [
        {
          id: 'soak',
          plugin: TEST_BACKEND,
          generate: VMS,
          detachDelayMs: 5,
          slowMs: 300,
          stateDelayMs: 5,
          controlSocket,
        },
      ],
    }),
  );
  mkdirSync(reports);
  const daemon = startService(
    process.execPath,
    [
      ...DAEMON_NODE_ARGS,
      '--report-on-signal',
      '--report-signal=SIGUSR2',
      '--report-compact',
      `--report-directory=${reports}`,
      join(ROOT, 'bin/vmdevd'),
      '--address',
      bus.address,
      '--config',
      configFile,
    ],
    join(work, 'vmdevd.log'),
    { ...process.env, ...DAEMON_ENV },
  );
  const clients: TestClient[] = [];
  try {
    await waitUntil('vmdevd ready', () => /vmdevd: ready/.test(daemon.output()) || daemon.child.exitCode !== null);
    if (daemon.child.exitCode !== null) throw new Error(`vmdevd exited:\n${daemon.output()}`);
    for (let i = 0; i < CLIENTS; i++) clients.push(await TestClient.connect(bus.address));
    await watchOutcomes(clients[0]!);
    say(
      `soak: ${MINUTES} min, ${RATE} calls/s over ${CLIENTS} connections, ${VMS} VMs, a sample every ${SAMPLE_MS / 1000} s; vmdevd pid ${daemon.pid}, work dir ${work}`,
    );

    const samples: SoakSample[] = [];
    const started = Date.now();
    const sample = async () => {
      const s = await sampleDaemon(daemon.pid, (Date.now() - started) / 60_000);
      samples.push(s);
      say(
        `  ${fmt(s.minute, 1).padStart(5)} min  rss ${fmt(s.rssMiB)} MiB  heap ${fmt(s.heapUsedMiB)}/${fmt(s.heapTotalMiB)} MiB  fds ${s.fds}  calls ${total(counts.requests)}`,
      );
    };
    await sample();
    const load = startLoad(clients, controlSocket);
    const end = started + MINUTES * 60_000;
    for (let next = started + SAMPLE_MS; next <= end + 1; next += SAMPLE_MS) {
      await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
      await sample();
    }
    await load.stop();
    // Every accepted device has its outcome within 2T + G (4 s here): wait for them, as a hang guard.
    await waitUntil('the last outcomes', () => owed.size === 0, 30_000).catch(() => {});

    const settled = samples.filter((s) => s.minute >= SETTLED_MINUTES - 1e-6);
    const slopes = {
      rssMiBPerHour: linearSlope(settled.map((s) => [s.minute / 60, s.rssMiB])),
      heapUsedMiBPerHour: linearSlope(settled.map((s) => [s.minute / 60, s.heapUsedMiB])),
      fdsPerHour: linearSlope(settled.map((s) => [s.minute / 60, s.fds])),
    };
    printTable(samples, slopes);
    writeFileSync(
      opts.svg,
      soakSvg(samples, {
        settledMinutes: SETTLED_MINUTES,
        slopes,
        title: `vmdevd soak: ${MINUTES} min, ${RATE} calls/s, ${VMS} VMs (test backend)`,
      }),
    );
    say(`soak: plot written to ${opts.svg}`);
    if (opts.json !== undefined) {
      writeFileSync(
        opts.json,
        JSON.stringify(
          {
            date: new Date().toISOString(),
            minutes: MINUTES,
            rate: RATE,
            clients: CLIENTS,
            vms: VMS,
            samples,
            slopes,
            counts,
            missingOutcomes: owed.size,
            unexpectedOutcomes,
          },
          null,
          2,
        ),
      );
    }
  } finally {
    for (const c of clients) c.close();
    await daemon.stop();
    await bus.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

function total(map: Record<string, number>): number {
  return Object.values(map).reduce((a, b) => a + b, 0);
}

/** Counts outcome signals, matching each to the device it was owed to. */
async function watchOutcomes(client: TestClient): Promise<void> {
  await client.call({
    destination: 'org.freedesktop.DBus',
    path: '/org/freedesktop/DBus',
    interface: 'org.freedesktop.DBus',
    member: 'AddMatch',
    signature: 's',
    body: [`type='signal',sender='${BUS_NAME}'`],
  });
  client.bus.on('message', (msg: dbus.Message) => {
    if (msg.type !== dbus.MessageType.SIGNAL) return;
    if (msg.member === 'DeviceDetached' || msg.member === 'DeviceDetachFailed') {
      const [vm, label, error] = msg.body as string[];
      bump(counts.outcomes, msg.member === 'DeviceDetached' ? 'detached' : error!.replace(/^.*\./, ''));
      if (!owed.delete(`${vm}\u0000${label}`)) unexpectedOutcomes++;
    } else {
      bump(counts.outcomes, `signal ${msg.member}`);
    }
  });
}

/** Starts the paced load; `stop()` waits for the calls in flight. */
function startLoad(clients: readonly TestClient[], controlSocket: string): { stop(): Promise<void> } {
  let inFlight = 0;
  let serial = 0;
  let idle: (() => void) | undefined;
  const issue = (kind: string, client: TestClient, call: () => Promise<unknown>) => {
    if (inFlight >= MAX_IN_FLIGHT) {
      counts.skipped++;
      return;
    }
    bump(counts.requests, kind);
    inFlight++;
    call()
      .then(
        (r) => bump(counts.replies, `${kind}: ${typeof r === 'boolean' ? String(r) : 'ok'}`),
        (err: CallError) => bump(counts.replies, `${kind}: ${err.type ?? err.message}`),
      )
      .finally(() => {
        inFlight--;
        if (inFlight === 0) idle?.();
      });
  };
  const detach = (client: TestClient, vm: string, devices: Record<string, string[]>) => async () => {
    // Owed from before the call: the outcome may arrive before the reply.
    const keys = Object.keys(devices).map((label) => `${vm}\u0000${label}`);
    for (const k of keys) owed.add(k);
    try {
      const accepted = await client.testMethod(vm, devices);
      if (!accepted) for (const k of keys) owed.delete(k);
      return accepted;
    } catch (err) {
      for (const k of keys) owed.delete(k);
      throw err;
    }
  };
  const one = () => {
    const client = clients[serial % clients.length]!;
    const n = serial++;
    const vm = vmName(Math.floor(rnd() * VMS));
    const r = rnd();
    if (r < 0.4) {
      const devices: Record<string, string[]> = {};
      for (let i = 0, count = 1 + Math.floor(rnd() * 3); i < count; i++) {
        const kind = pick([
          'ok',
          'ok',
          'ok',
          'ok',
          'slow',
          'fail-RemovalFailed',
          'fail-DeviceNotFound',
          'hang',
          'verify',
        ]);
        devices[`${kind}-${n}-${i}`] = ['type=disk', `target=d${n}x${i}`];
      }
      issue('TestMethod valid', client, detach(client, vm, devices));
    } else if (r < 0.45) {
      // The same device from two connections at once: the second joins the first.
      const other = clients[(serial + 1) % clients.length]!;
      const target = `target=j${n}`;
      issue('TestMethod same device', client, detach(client, vm, { [`slow-a${n}`]: ['type=disk', target] }));
      issue('TestMethod same device', other, detach(other, vm, { [`slow-b${n}`]: ['type=disk', target] }));
    } else if (r < 0.55) {
      issue('TestMethod invalid', client, () => client.testMethod(vm, { [`bad${n}`]: ['type=floppy'] }));
    } else if (r < 0.65) {
      issue('TestMethod unknown VM', client, () =>
        client.testMethod(`nosuch-${n}`, { d: ['type=disk', 'target=vdb'] }),
      );
    } else if (r < 0.85) {
      issue('Get TestProperty', client, () => client.getProperty('TestProperty'));
    } else if (r < 0.95) {
      issue('Set TestProperty', client, () =>
        client.setProperty('TestProperty', 'a{ss}', { [vm]: pick(['running', 'paused']) }),
      );
    } else {
      // The backend changes 20 VMs' states at once, as a host's events would.
      const vms = Array.from({ length: 20 }, () => vmName(Math.floor(rnd() * VMS)));
      issue('backend burst', client, () => control(controlSocket, vms));
    }
  };
  const tickMs = 100;
  let owedCalls = 0;
  const timer = setInterval(() => {
    owedCalls += (RATE * tickMs) / 1000;
    for (; owedCalls >= 1; owedCalls--) one();
  }, tickMs);
  return {
    async stop() {
      clearInterval(timer);
      if (inFlight > 0) await new Promise<void>((resolve) => (idle = resolve));
    },
  };
}

/** One state change per VM through the test backend's control socket. */
function control(socket: string, vms: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = connect(socket);
    let answers = 0;
    s.on('error', reject);
    s.on('data', (data) => {
      answers += data.toString().split('\n').filter(Boolean).length;
      if (answers >= vms.length) {
        s.end();
        resolve();
      }
    });
    for (const vm of vms) s.write(JSON.stringify({ cmd: 'state', vm, state: pick(['running', 'paused']) }) + '\n');
  });
}

/** RSS and fds from /proc; the heap from a node report the daemon writes on SIGUSR2. */
async function sampleDaemon(pid: number, minute: number): Promise<SoakSample> {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssMiB = Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
  const fds = readdirSync(`/proc/${pid}/fd`).length;
  process.kill(pid, 'SIGUSR2');
  let file: string | undefined;
  await waitUntil(
    'the node report',
    () => {
      try {
        file = readdirSync(reports).find((f) => f.endsWith('.json'));
        // Written in one go, but give it the chance to be complete.
        return file !== undefined && readFileSync(join(reports, file), 'utf8').trimEnd().endsWith('}');
      } catch {
        return false;
      }
    },
    10_000,
  );
  const report = JSON.parse(readFileSync(join(reports, file!), 'utf8')) as {
    javascriptHeap: { usedMemory: number; totalMemory: number };
  };
  unlinkSync(join(reports, file!));
  return {
    minute,
    rssMiB,
    heapUsedMiB: report.javascriptHeap.usedMemory / 1048576,
    heapTotalMiB: report.javascriptHeap.totalMemory / 1048576,
    fds,
  };
}

function printTable(
  samples: readonly SoakSample[],
  slopes: Record<string, number>,
  run = {
    minutes: MINUTES,
    rate: RATE,
    settledMinutes: SETTLED_MINUTES,
    missing: owed.size,
    unexpected: unexpectedOutcomes,
  },
): void {
  const lines = [
    '',
    `vmdevd soak: ${run.minutes} min, ${run.rate} calls/s, ${VMS} VMs of the test backend`,
    '',
    '| minute | RSS (MiB) | heap used (MiB) | heap total (MiB) | open fds |',
    '| -----: | --------: | --------------: | ---------------: | -------: |',
    ...samples.map(
      (s) => `| ${fmt(s.minute, 1)} | ${fmt(s.rssMiB)} | ${fmt(s.heapUsedMiB)} | ${fmt(s.heapTotalMiB)} | ${s.fds} |`,
    ),
    '',
    `slope from minute ${run.settledMinutes} on (least squares): RSS ${fmt(slopes['rssMiBPerHour']!, 2)} MiB/h, heap used ${fmt(slopes['heapUsedMiBPerHour']!, 2)} MiB/h, fds ${fmt(slopes['fdsPerHour']!, 2)} per hour`,
    '',
    `requests: ${JSON.stringify(counts.requests)}`,
    `replies: ${JSON.stringify(counts.replies)}`,
    `outcomes and other signals: ${JSON.stringify(counts.outcomes)}`,
    `skipped (over ${MAX_IN_FLIGHT} in flight): ${counts.skipped}; devices still owed an outcome: ${run.missing}; outcomes for no pending device: ${run.unexpected}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

/** Draws the plot and prints the table of a run that was saved with --json. */
function replot(file: string): void {
  const run = JSON.parse(readFileSync(file, 'utf8')) as {
    minutes: number;
    rate: number;
    vms: number;
    samples: SoakSample[];
    counts: typeof counts;
    missingOutcomes: number;
    unexpectedOutcomes: number;
  };
  Object.assign(counts, run.counts);
  const settledMinutes = Math.min(10, run.minutes / 2);
  const settled = run.samples.filter((s) => s.minute >= settledMinutes - 1e-6);
  const slopes = {
    rssMiBPerHour: linearSlope(settled.map((s) => [s.minute / 60, s.rssMiB])),
    heapUsedMiBPerHour: linearSlope(settled.map((s) => [s.minute / 60, s.heapUsedMiB])),
    fdsPerHour: linearSlope(settled.map((s) => [s.minute / 60, s.fds])),
  };
  printTable(run.samples, slopes, {
    minutes: run.minutes,
    rate: run.rate,
    settledMinutes,
    missing: run.missingOutcomes,
    unexpected: run.unexpectedOutcomes,
  });
  writeFileSync(
    opts.svg,
    soakSvg(run.samples, {
      settledMinutes,
      slopes,
      title: `vmdevd soak: ${run.minutes} min, ${run.rate} calls/s, ${run.vms} VMs (test backend)`,
    }),
  );
  say(`soak: plot written to ${opts.svg}`);
}

if (opts.replot !== undefined) replot(opts.replot);
else await main();
