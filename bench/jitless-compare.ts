/**
 * JIT or --jitless: the same daemon, the same test backend, the same bus,
 * measured in alternation so that both modes see the same machine load.
 *
 *   make -C bench/c && npm run build
 *   node dist/bench/jitless-compare.js [ROUNDS] [SECONDS]
 *
 * For each round and mode: the time from spawning node to the bus name
 * appearing (NameOwnerChanged, seen by a client subscribed beforehand), then
 * `bench/c/build/load` for TestMethod (accepted: validation, XML, detach
 * jobs and outcome signals), TestMethod with an invalid device (validation
 * only), and Get TestProperty, and the daemon's RSS at the end. Prints one
 * JSON line per run and a Markdown table of medians over the rounds.
 *
 * The daemon logs at `warn` to a file, so the per-request log line (and
 * the reading of a pipe by this script) does not dominate what is measured.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestClient } from '../test/harness/bus-client.js';
import { startPrivateBus } from '../test/harness/dbus-daemon.js';
import { run } from '../test/harness/process.js';
import { TEST_BACKEND, DEFAULT_VMS } from '../test/harness/stack.js';
import { makeTempDir } from '../test/harness/temp-dir.js';
import { DAEMON_ENV, DAEMON_NODE_ARGS, REPO_ROOT, VMDEVD_BIN } from '../test/harness/vmdevd-process.js';

const LOAD = join(REPO_ROOT, 'bench/c/build/load');
// Both with the daemon's own options (bin/vmdevd's first line), as the unit and its drop-in run it.
const MODES = { jit: [...DAEMON_NODE_ARGS], jitless: ['--jitless', '--no-expose-wasm', ...DAEMON_NODE_ARGS] };
type Mode = keyof typeof MODES;

const KINDS = [
  { name: 'TestMethod', args: ['--call', 'testmethod', '--selector', 'vm1', '--expect-bool', 'true'] },
  { name: 'TestMethod, invalid device', args: ['--call', 'testmethod-invalid', '--selector', 'vm1'] },
  { name: 'Get TestProperty', args: ['--call', 'get-testproperty', '--expect-entries', String(DEFAULT_VMS.length)] },
];

interface LoadResult {
  calls_per_s: number;
  latency: { p50_us: number; p99_us: number };
  failed: number;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 3);
  const seconds = Number(process.argv[3] ?? 5);
  if (!existsSync(LOAD)) throw new Error(`${LOAD} is missing: run make -C bench/c`);
  const dir = makeTempDir('vmdevd-jitless-');
  const bus = await startPrivateBus();
  const client = await TestClient.connect(bus.address);
  const configFile = dir.file('config.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      logLevel: 'warn',
      detachTimeoutSeconds: 5,
      backends: [{ id: 'test', plugin: TEST_BACKEND, vms: DEFAULT_VMS }],
    }),
  );
  const names = await client.subscribe(
    "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='org.example.dbustest'",
  );
  const results: Record<Mode, { startMs: number[]; rssKiB: number[]; kinds: Record<string, LoadResult[]> }> = {
    jit: { startMs: [], rssKiB: [], kinds: {} },
    jitless: { startMs: [], rssKiB: [], kinds: {} },
  };
  let daemon: ChildProcess | undefined;
  try {
    for (let round = 0; round < rounds; round++) {
      // Alternate which mode goes first, so neither always gets the warmer machine.
      const order: Mode[] = round % 2 === 0 ? ['jit', 'jitless'] : ['jitless', 'jit'];
      for (const mode of order) {
        const seen = names.signals.length;
        const log = openSync(dir.file(`daemon-${mode}-${round}.log`), 'w');
        const t0 = performance.now();
        daemon = spawn(
          process.execPath,
          [...MODES[mode], VMDEVD_BIN, '--address', bus.address, '--config', configFile],
          { stdio: ['ignore', log, log], env: { ...process.env, ...DAEMON_ENV } },
        );
        closeSync(log);
        const appeared = await names.waitFor(
          (s) => names.signals.indexOf(s) >= seen && s.body[2] !== '',
          20_000,
          'the bus name',
        );
        const startMs = appeared.at - t0;
        results[mode].startMs.push(startMs);
        for (const kind of KINDS) {
          const r = await run(LOAD, ['--address', bus.address, '--duration', String(seconds), '--json', ...kind.args]);
          if (r.code !== 0) throw new Error(`load ${kind.name} (${mode}) failed: ${r.stderr}${r.stdout}`);
          const parsed = JSON.parse(r.stdout) as LoadResult;
          (results[mode].kinds[kind.name] ??= []).push(parsed);
          console.log(
            JSON.stringify({
              round,
              mode,
              kind: kind.name,
              startMs: Math.round(startMs),
              calls_per_s: parsed.calls_per_s,
              p50_us: parsed.latency.p50_us,
              p99_us: parsed.latency.p99_us,
            }),
          );
        }
        results[mode].rssKiB.push(rssKiB(daemon.pid!));
        const exited = new Promise((r) => daemon!.once('exit', r));
        daemon.kill('SIGTERM');
        await exited;
        daemon = undefined;
      }
    }
  } finally {
    if (daemon?.exitCode === null) daemon.kill('SIGKILL');
    client.close();
    await bus.stop();
    dir.remove();
  }

  const row = (label: string, f: (m: Mode) => string) => `| ${label} | ${f('jit')} | ${f('jitless')} |`;
  const lines = [`| median of ${rounds} rounds, ${seconds} s each | JIT | --jitless |`, '|---|---:|---:|'];
  lines.push(row('start to bus name (ms)', (m) => median(results[m].startMs).toFixed(0)));
  for (const kind of KINDS) {
    const of = (m: Mode) => results[m].kinds[kind.name]!;
    lines.push(row(`${kind.name}: calls/s`, (m) => median(of(m).map((r) => r.calls_per_s)).toFixed(0)));
    lines.push(row(`${kind.name}: p50 (us)`, (m) => median(of(m).map((r) => r.latency.p50_us)).toFixed(1)));
    lines.push(row(`${kind.name}: p99 (us)`, (m) => median(of(m).map((r) => r.latency.p99_us)).toFixed(1)));
  }
  lines.push(row('RSS after the runs (MiB)', (m) => (median(results[m].rssKiB) / 1024).toFixed(1)));
  console.log(lines.join('\n'));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
