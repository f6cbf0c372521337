/**
 * Helpers of the benchmark harness: running the C tools, statistics,
 * processes with their output in files, and RSS.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { DAEMON_ENV, DAEMON_NODE_ARGS } from '../test/harness/vmdevd-process.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const TOOLS = `${ROOT}bench/c/build`;

/** Percentiles as the C tools report them, in µs. */
export interface Latency {
  readonly n: number;
  readonly p50_us: number;
  readonly p90_us: number;
  readonly p99_us: number;
  readonly mean_us: number;
}

export interface LoadResult {
  /** Calls made before the measured ones. */
  readonly warmup: number;
  /** Calls answered in the measured time (after `warmup`). */
  readonly calls: number;
  readonly calls_per_s: number;
  readonly latency: Latency;
  readonly client: { readonly cpu_us_per_call: number };
  readonly errors: Record<string, number>;
  readonly failed: number;
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(values: readonly number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

/** Runs a command to completion; rejects with its output on a non-zero exit. */
export function run(
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
  okCodes = [0],
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      okCodes.includes(code ?? -1)
        ? resolve(out)
        : reject(new Error(`${command} ${args.join(' ')} exited ${code}:\n${err}${out}`)),
    );
  });
}

/** `load` against one server; the parsed JSON summary. */
export async function load(
  address: string,
  kind: string,
  options: {
    dest?: string;
    path?: string;
    inflight?: number;
    duration?: number;
    selector?: string;
    expectEntries?: number;
    /** `--device LABEL:TOKEN,…` for each entry: the devices of a TestMethod. */
    devices?: readonly string[];
    /** Walk every Nth reply's body only (a 10,000-entry map costs the client more than the server). */
    checkEvery?: number;
  },
): Promise<LoadResult> {
  const args = [
    '--address',
    address,
    '--call',
    kind,
    '--json',
    '--duration',
    String(options.duration ?? 3),
    '--inflight',
    String(options.inflight ?? 1),
  ];
  if (options.dest) args.push('--dest', options.dest);
  if (options.path) args.push('--path', options.path);
  if (options.selector) args.push('--selector', options.selector);
  if (options.expectEntries !== undefined) args.push('--expect-entries', String(options.expectEntries));
  for (const device of options.devices ?? []) args.push('--device', device);
  if (options.checkEvery !== undefined) args.push('--check-every', String(options.checkEvery));
  const out = await run(`${TOOLS}/load`, args);
  const result = JSON.parse(out) as LoadResult;
  if (result.failed > 0)
    throw new Error(
      `load ${kind} against ${options.dest}: ${result.failed} calls failed: ${JSON.stringify(result.errors)}`,
    );
  return result;
}

/**
 * Warms a daemon's detach path, as one that has served requests for a
 * while: `seconds` of `TestMethod` for a disk the VM lacks, one call in
 * flight (the request path up to the libvirt call, each ending
 * `DeviceNotFound`).
 */
export async function warmDetachPath(address: string, dest: string, vm: string, seconds: number): Promise<void> {
  await load(address, 'testmethod', { dest, selector: vm, devices: ['d:type=disk,target=sdz'], duration: seconds });
}

/** A long-running process whose output goes to a file, stopped by its PID. */
export interface Service {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly log: string;
  output(): string;
  stop(): Promise<void>;
}

const services = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of services) c.kill('SIGKILL');
});

export function startService(
  command: string,
  args: readonly string[],
  log: string,
  env: NodeJS.ProcessEnv = process.env,
): Service {
  const fd = openSync(log, 'a');
  const child = spawn(command, args, { env, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  services.add(child);
  const exited = new Promise<void>((resolve) => child.once('exit', () => (services.delete(child), resolve())));
  return {
    child,
    pid: child.pid!,
    log,
    output: () => readFileSync(log, 'utf8'),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

/** Resolves when `check()` is true, polling; rejects after `timeoutMs`. */
export async function waitUntil(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 20_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resident set size of a process, in MiB. */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]);
  return kb / 1024;
}

/**
 * A thread's scheduler counters (`/proc/PID/task/TID/schedstat`): time on a
 * CPU, time runnable but waiting for one, and how many times it was given
 * one. Undefined where the kernel keeps no such file.
 */
export function schedstat(pid: number, tid = pid): { runNs: number; waitNs: number; slices: number } | undefined {
  try {
    const [run, wait, slices] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number);
    return { runNs: run!, waitNs: wait!, slices: slices! };
  } catch {
    return undefined;
  }
}

/** CLOCK_MONOTONIC in ns, the clock the C tools stamp with. */
export function nowNs(): bigint {
  return process.hrtime.bigint();
}

/**
 * A benchmark's options: `--help` (or `-h`) prints `usage` and exits 0; an
 * option it does not know, or a value missing, prints what is wrong and
 * `usage`, and exits 2, instead of a stack trace.
 */
export function parseCommandLine<T extends ParseArgsConfig>(usage: string, config: T): ReturnType<typeof parseArgs<T>> {
  const args = config.args ?? process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${usage.trim()}\n`);
    process.exit(0);
  }
  try {
    return parseArgs(config);
  } catch (err) {
    if (!(err instanceof TypeError) || !String((err as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS'))
      throw err;
    process.stderr.write(`${err.message}\n${usage.trim()}\n`);
    process.exit(2);
  }
}

export const fmt = (v: number, digits = 1) => (Number.isFinite(v) ? v.toFixed(digits) : '–');

/**
 * A 95% interval of `statistic` by the bootstrap: `rounds` resamples (with
 * replacement) of `items`, from a fixed seed so that a run reproduces.
 */
export function bootstrapInterval<T>(
  items: readonly T[],
  statistic: (sample: readonly T[]) => number,
  rounds = 2000,
): [number, number] {
  if (items.length === 0) return [NaN, NaN];
  let seed = 0x9e3779b9;
  const random = () => {
    // xorshift32
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 0x100000000;
  };
  const values: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const sample = Array.from({ length: items.length }, () => items[Math.floor(random() * items.length)]!);
    values.push(statistic(sample));
  }
  return [percentile(values, 2.5), percentile(values, 97.5)];
}

/** Where a benchmark keeps its files, and what it stops at the end (the last first). */
export interface Harness {
  readonly work: string;
  readonly cleanups: Array<() => Promise<unknown>>;
}

/**
 * Starts vmdevd as the unit runs it (bin/vmdevd's node options and
 * environment, then `nodeArgs`), its config and log in `work`, and waits
 * until it owns `busName`.
 */
export async function startVmdevd(
  h: Harness,
  address: string,
  busName: string,
  backends: unknown[],
  options: {
    extra?: Record<string, unknown>;
    nodeArgs?: readonly string[];
    /** A built checkout whose bin/vmdevd to run, instead of this one's. */
    root?: string;
  } = {},
): Promise<Service & { startedNs: bigint }> {
  const config = join(h.work, `${busName}.json`);
  writeFileSync(
    config,
    JSON.stringify({ busName, logLevel: 'info', detachTimeoutSeconds: 30, backends, ...options.extra }),
  );
  const startedNs = nowNs();
  const svc = startService(
    process.execPath,
    [
      ...DAEMON_NODE_ARGS,
      ...(options.nodeArgs ?? []),
      join(options.root ?? ROOT, 'bin/vmdevd'),
      '--address',
      address,
      '--config',
      config,
    ],
    join(h.work, `${busName}.log`),
    { ...process.env, ...DAEMON_ENV },
  );
  h.cleanups.push(() => svc.stop());
  await waitUntil(`${busName} ready`, () => /vmdevd: ready/.test(svc.output()) || svc.child.exitCode !== null);
  if (svc.child.exitCode !== null) throw new Error(`vmdevd ${busName} exited:\n${svc.output()}`);
  return { ...svc, startedNs };
}

/**
 * libvirt-dbus on the bus at `address`, once it answers: `--session` serves
 * the test driver on /org/libvirt/Test, `--system` qemu:///system on
 * /org/libvirt/QEMU (it takes that bus from DBUS_SYSTEM_BUS_ADDRESS). It
 * opens its libvirt connection (and subscribes to events) on the first call.
 */
export async function startLibvirtDbus(
  h: Harness,
  address: string,
  which: 'session' | 'system',
  log: string,
): Promise<Service> {
  const lvd = startService('/usr/sbin/libvirt-dbus', [`--${which}`], join(h.work, log), {
    ...process.env,
    [which === 'session' ? 'DBUS_SESSION_BUS_ADDRESS' : 'DBUS_SYSTEM_BUS_ADDRESS']: address,
  });
  h.cleanups.push(() => lvd.stop());
  const path = which === 'session' ? [] : ['--path', '/org/libvirt/QEMU'];
  await waitUntil(`libvirt-dbus --${which}`, async () => {
    try {
      await run(`${TOOLS}/load`, [
        '--address',
        address,
        '--call',
        'libvirt-listdomains',
        ...path,
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
  return lvd;
}

/** A daemon of the split benchmarks: its name and node options, and what other options add to it. */
export interface DaemonVariant {
  readonly name: string;
  readonly nodeArgs: readonly string[];
}

/**
 * The variants that options give: `--variant NAME=NODE-OPTIONS` each, then
 * `--NAME=VALUE` options of other kinds through `apply`, which finds the
 * variant of that name or adds one without node options. With none, one
 * daemon as it is, named `vmdevd`.
 */
export function daemonVariants<V extends DaemonVariant>(
  specs: readonly string[],
  more: ReadonlyArray<{
    readonly option: string;
    readonly specs: readonly string[];
    /** Checks the value (throwing an Error that says what it takes) and sets it on the variant. */
    readonly apply: (variant: V, value: string) => void;
  }>,
): V[] {
  const split = (option: string, spec: string): [string, string] => {
    const eq = spec.indexOf('=');
    if (eq <= 0) throw new Error(`${option} ${spec}: NAME=VALUE`);
    return [spec.slice(0, eq), spec.slice(eq + 1)];
  };
  const variants = specs.map((spec) => {
    const [name, options] = split('--variant', spec);
    const variant: DaemonVariant = { name, nodeArgs: options.split(' ').filter(Boolean) };
    return variant as V;
  });
  for (const { option, specs: values, apply } of more) {
    for (const spec of values) {
      const [name, value] = split(option, spec);
      let variant = variants.find((v) => v.name === name);
      if (variant === undefined) variants.push((variant = { name, nodeArgs: [] } as DaemonVariant as V));
      try {
        apply(variant, value);
      } catch (err) {
        throw new Error(`${option} ${spec}: ${(err as Error).message}`, { cause: err });
      }
    }
  }
  if (variants.length === 0) variants.push({ name: 'vmdevd', nodeArgs: [] } as DaemonVariant as V);
  return variants;
}

/**
 * `event-probe`: suspends and resumes `domain` `cycles` times, `intervalMs`
 * after each event it sees, and prints each call's time and its event's.
 */
export function eventProbe(uri: string, domain: string, cycles: number, intervalMs: number): Promise<string> {
  return run(`${TOOLS}/event-probe`, [
    '--uri',
    uri,
    '--domain',
    domain,
    '--cycles',
    String(cycles),
    '--interval-ms',
    String(intervalMs),
    '--emit-timestamps',
    '--json',
  ]);
}

/**
 * One `read` or `write` system call seen by {@link recordReadsAndWrites}:
 * its thread, time (µs), file descriptor and byte count asked for, and for
 * a read what it returned (bytes, or a negative errno such as -11, EAGAIN).
 * A `sendmsg` (how sd-bus writes: the C tools) is a write of a count not
 * known, given as Infinity.
 */
export interface ReadOrWrite {
  readonly tid: number;
  readonly us: number;
  readonly call: 'read' | 'write';
  readonly fd: number;
  readonly count: number;
  readonly result?: number;
}

const PERF = ['/usr/bin/perf', '/usr/local/bin/perf'].find((p) => existsSync(p));

/**
 * Runs `perf record ARGS -o file` from half a second after the call (perf
 * needs that to attach) until `stop()`, which gives `perf script -F
 * FIELDS`'s text.
 */
async function perfRecord(args: readonly string[], file: string, fields: string): Promise<{ stop(): Promise<string> }> {
  // CLOCK_MONOTONIC, the clock the C tools stamp with: a system call's time compares with theirs.
  const perf = spawn(PERF!, ['record', '-q', '-k', 'CLOCK_MONOTONIC', ...args, '-o', file], { stdio: 'ignore' });
  const exited = new Promise((resolve) => perf.once('exit', resolve));
  await new Promise((resolve) => setTimeout(resolve, 500));
  return {
    async stop() {
      perf.kill('SIGINT');
      await exited;
      return execFileSync(PERF!, ['script', '-i', file, '-F', fields], {
        maxBuffer: 1 << 28,
        stdio: ['ignore', 'pipe', 'ignore'],
      }).toString();
    },
  };
}

/**
 * One thread woken, leaving a CPU (`preempted` when it was still runnable)
 * or getting one again, seen by {@link recordSwitches}; time in µs.
 */
export interface Switch {
  readonly us: number;
  readonly what: 'woken' | 'out' | 'in';
  readonly preempted: boolean;
  /** `out`: the command name of the thread that got the CPU. */
  readonly by?: string;
}

/**
 * Records, with `perf` on every CPU, when thread `tid` is woken, leaves a
 * CPU and gets one again (the scheduler's `sched_wakeup` and
 * `sched_switch`), on the clock of {@link recordReadsAndWrites}, until
 * `stop()`, which gives them in order. Undefined where there is no perf.
 */
export async function recordSwitches(tid: number, file: string): Promise<{ stop(): Promise<Switch[]> } | undefined> {
  if (PERF === undefined) return undefined;
  const switches = ['-e', 'sched:sched_switch', '--filter', `prev_pid == ${tid} || next_pid == ${tid}`];
  const wakeups = ['-e', 'sched:sched_wakeup', '--filter', `pid == ${tid}`];
  const perf = await perfRecord(['-a', ...switches, ...wakeups], file, 'time,event,trace');
  return {
    async stop() {
      const script = await perf.stop();
      const switched = /^\s*([\d.]+):\s.*\bprev_pid=(\d+) .*\bprev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+)/;
      const woken = /^\s*([\d.]+):\s+sched:sched_wakeup:/;
      const out: Switch[] = [];
      for (const l of script.split('\n')) {
        const w = woken.exec(l);
        if (w !== null) {
          out.push({ us: Number(w[1]) * 1e6, what: 'woken', preempted: false });
          continue;
        }
        const m = switched.exec(l);
        if (m === null) continue;
        const us = Number(m[1]) * 1e6;
        if (Number(m[2]) === tid) out.push({ us, what: 'out', preempted: m[3]!.startsWith('R'), by: m[4]! });
        if (Number(m[5]) === tid) out.push({ us, what: 'in', preempted: false });
      }
      return out.sort((a, b) => a.us - b.us);
    },
  };
}

/** Whether {@link recordReadsAndWrites} can record. */
export function havePerf(): boolean {
  return PERF !== undefined;
}

/**
 * Records, with `perf` (Debian's linux-perf) and its tracepoints, the
 * `read` and `write` system calls of a process (`pid`: its threads and
 * those it starts later) or of one thread (`tid`), into `file`, from half
 * a second after the call (perf needs that to attach) until `stop()`,
 * which gives them in order. Undefined where there is no perf.
 */
export async function recordReadsAndWrites(
  target: { readonly pid: number } | { readonly tid: number },
  file: string,
): Promise<{ stop(): Promise<ReadOrWrite[]> } | undefined> {
  if (PERF === undefined) return undefined;
  const who = 'pid' in target ? ['-p', String(target.pid)] : ['-t', String(target.tid)];
  const events = ['read', 'write', 'sendmsg'].flatMap((call) => ['-e', `syscalls:sys_enter_${call}`]);
  events.push('-e', 'syscalls:sys_exit_read');
  const perf = await perfRecord([...events, ...who], file, 'tid,time,event,trace');
  return {
    async stop() {
      const script = await perf.stop();
      const enter = /^\s*(\d+)\s+([\d.]+):\s+syscalls:sys_enter_(read|write): fd: 0x(\w+), buf: 0x\w+, count: 0x(\w+)/;
      const exit = /^\s*(\d+)\s+[\d.]+:\s+syscalls:sys_exit_read: 0x(\w+)/;
      const sendmsg = /^\s*(\d+)\s+([\d.]+):\s+syscalls:sys_enter_sendmsg: fd: 0x(\w+)/;
      const calls: ReadOrWrite[] = [];
      // A thread's read returns before it makes another call: its exit
      // belongs to its last read.
      const openRead = new Map<number, number>();
      for (const l of script.split('\n')) {
        const sent = sendmsg.exec(l);
        if (sent !== null) {
          const [, tid, time, fd] = sent;
          calls.push({
            tid: Number(tid),
            us: Number(time) * 1e6,
            call: 'write',
            fd: parseInt(fd!, 16),
            count: Infinity,
          });
          continue;
        }
        const m = enter.exec(l);
        if (m !== null) {
          const tid = Number(m[1]);
          if (m[3] === 'read') openRead.set(tid, calls.length);
          calls.push({
            tid,
            us: Number(m[2]) * 1e6,
            call: m[3] as 'read' | 'write',
            fd: parseInt(m[4]!, 16),
            count: parseInt(m[5]!, 16),
          });
          continue;
        }
        const x = exit.exec(l);
        const at = x === null ? undefined : openRead.get(Number(x[1]));
        if (at !== undefined) {
          // perf prints the return value as an unsigned 64-bit number.
          calls[at] = { ...calls[at]!, result: Number(BigInt.asIntN(64, BigInt(`0x${x![2]}`))) };
          openRead.delete(Number(x![1]));
        }
      }
      return calls;
    },
  };
}

/** A V8 CPU profile (`--cpu-prof`): its times are µs on CLOCK_MONOTONIC, as the C tools'. */
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

/** What a profiled thread's time goes to, in {@link profileSplit}. */
export const PROFILE_KINDS = ['waiting', 'garbage collection', 'V8 itself', 'native code', 'JavaScript'] as const;
export type ProfileKind = (typeof PROFILE_KINDS)[number];

function profileLabel(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  return `${functionName || '(anonymous)'} ${url.split('/').pop() ?? ''}:${lineNumber + 1}`;
}

function profileKind(node: ProfileNode): ProfileKind {
  const name = node.callFrame.functionName;
  if (name === '(idle)') return 'waiting';
  if (name === '(garbage collector)') return 'garbage collection';
  if (name === '(program)') return 'V8 itself';
  return node.callFrame.url === '' ? 'native code' : 'JavaScript';
}

/** {@link profileSplit}'s sums over a set of spans. */
export interface ProfileSplit {
  spans: number;
  /** µs of each kind, summed over the spans. */
  byKind: Map<ProfileKind, number>;
  /** How many spans had at least 30 µs of each kind. */
  withKind: Map<ProfileKind, number>;
  /** µs of each function's self time (by name, file and line), summed over the spans. */
  byFunction: Map<string, number>;
}

/** What the profiled thread did within each span (µs, the profile's clock), summed over the spans. */
export function profileSplit(
  profile: CpuProfile,
  spans: ReadonlyArray<{ readonly startUs: number; readonly endUs: number }>,
): ProfileSplit {
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const times: number[] = [];
  let t = profile.startTime;
  for (const delta of profile.timeDeltas) times.push((t += delta));
  const out: ProfileSplit = { spans: spans.length, byKind: new Map(), withKind: new Map(), byFunction: new Map() };
  let first = 0;
  for (const span of [...spans].sort((a, b) => a.startUs - b.startUs)) {
    while (first < times.length && times[first]! < span.startUs) first++;
    const mine = new Map<ProfileKind, number>();
    for (let i = first; i < times.length && times[i]! <= span.endUs; i++) {
      const node = nodes.get(profile.samples[i]!)!;
      const us = Math.min((times[i + 1] ?? times[i]!) - times[i]!, span.endUs - times[i]!);
      const kind = profileKind(node);
      mine.set(kind, (mine.get(kind) ?? 0) + us);
      if (kind !== 'waiting')
        out.byFunction.set(profileLabel(node), (out.byFunction.get(profileLabel(node)) ?? 0) + us);
    }
    for (const [kind, us] of mine) {
      out.byKind.set(kind, (out.byKind.get(kind) ?? 0) + us);
      if (us >= 30) out.withKind.set(kind, (out.withKind.get(kind) ?? 0) + 1);
    }
  }
  return out;
}

/**
 * Two {@link profileSplit}s side by side, as lines: µs of each kind per
 * span (and the share of spans with ≥ 30 µs of it), then the functions
 * that take the most more self time in a slow span than in another.
 */
export function compareProfileSplits(slow: ProfileSplit, other: ProfileSplit, what: string): string[] {
  const lines = [`  ${'what'.padEnd(20)} ${'slow'.padStart(16)} ${'the others'.padStart(16)}`];
  const cell = (x: ProfileSplit, kind: ProfileKind) =>
    `${fmt((x.byKind.get(kind) ?? 0) / x.spans, 0)} (${fmt((100 * (x.withKind.get(kind) ?? 0)) / x.spans, 0)}%)`;
  for (const kind of PROFILE_KINDS)
    lines.push(`  ${kind.padEnd(20)} ${cell(slow, kind).padStart(16)} ${cell(other, kind).padStart(16)}`);
  lines.push(`\nFunctions (self time) taking the most more time in a slow ${what}, µs per ${what} (slow, the others):`);
  const excess = [...slow.byFunction]
    .map(([fn, us]) => [fn, us / slow.spans, (other.byFunction.get(fn) ?? 0) / other.spans] as const)
    .sort((a, b) => b[1] - b[2] - (a[1] - a[2]))
    .slice(0, 15);
  for (const [fn, a, b] of excess) lines.push(`  ${fmt(a).padStart(7)} ${fmt(b).padStart(7)}  ${fn}`);
  return lines;
}

/** {@link profileSplit}s of several profiles, summed. */
export function mergeProfileSplits(splits: readonly ProfileSplit[]): ProfileSplit {
  const out: ProfileSplit = { spans: 0, byKind: new Map(), withKind: new Map(), byFunction: new Map() };
  const add = <K>(to: Map<K, number>, from: Map<K, number>) => {
    for (const [k, v] of from) to.set(k, (to.get(k) ?? 0) + v);
  };
  for (const s of splits) {
    out.spans += s.spans;
    add(out.byKind, s.byKind);
    add(out.withKind, s.withKind);
    add(out.byFunction, s.byFunction);
  }
  return out;
}
