/**
 * A libvirtd for tests that need `qemu:///system`.
 *
 * {@link startLibvirtd} uses the host's libvirtd when one answers, and
 * otherwise starts virtlogd and libvirtd itself, in the foreground, as
 * children of the test process. It stops only what it started: call
 * `stop()` from an `after()` hook or a `finally`; should the test process
 * exit without it, an exit handler still sends SIGTERM to the children.
 *
 * Tests that use it must not run concurrently with each other, in one test
 * run (`node --test --test-concurrency=1`) or in two: a handle that
 * started libvirtd stops (or restarts) it even while another process uses
 * it, whose VMs are then left behind.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, mkdtempSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export const SYSTEM_URI = 'qemu:///system';
const LIBVIRTD_SOCKET = '/run/libvirt/libvirt-sock';
const VIRTLOGD_SOCKET = '/run/libvirt/virtlogd-sock';
// Debian keeps the daemons in /usr/sbin, which a non-login PATH may lack.
const DAEMON_PATH = `${process.env['PATH'] ?? '/usr/bin:/bin'}:/usr/sbin:/sbin`;

export interface LibvirtdOptions {
  /** How long to wait for libvirtd to answer after starting it. Default 30 s. */
  readonly startTimeoutMs?: number;
  /** How long `stop()` waits after SIGTERM before SIGKILL. Default 15 s. */
  readonly stopTimeoutMs?: number;
}

export interface Libvirtd {
  readonly uri: typeof SYSTEM_URI;
  /** True when this handle started libvirtd, and so may stop and restart it. */
  readonly owned: boolean;
  /** libvirtd's PID when owned (it changes on `restart()`). */
  readonly pid: number | undefined;
  /**
   * Where the started daemons write their output, when owned; removed by
   * `stop()` unless $VMDEVD_TEST_KEEP_LOGS is set.
   */
  readonly logFile: string | undefined;
  /** Stops what this handle started (libvirtd, then virtlogd); nothing when not owned. Idempotent. */
  stop(): Promise<void>;
  /**
   * Kills libvirtd with `signal` (default SIGKILL: connections see EOF),
   * waits for it to exit, and starts it again. Only for an owned libvirtd:
   * rejects otherwise.
   */
  restart(options?: { readonly signal?: NodeJS.Signals }): Promise<void>;
}

/** Resolves true when something accepts connections on the Unix socket `path`. */
export function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** True once libvirtd serves `qemu:///system` (its QEMU driver is up), not only its socket. */
async function libvirtdReady(): Promise<boolean> {
  try {
    await execFileAsync('virsh', ['-c', SYSTEM_URI, 'version'], { timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs: number,
  child?: ChildProcess,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child !== undefined && child.exitCode !== null) {
      throw new Error(`${what} exited with code ${child.exitCode} before it answered`);
    }
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`${what} did not answer within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** SIGTERM, then SIGKILL after `timeoutMs`; resolves once the child has exited. */
async function terminate(child: ChildProcess, timeoutMs: number): Promise<void> {
  const done = exited(child);
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve();
    }, timeoutMs);
  });
  await Promise.race([done, late]);
  clearTimeout(timer);
  await done;
}

// Children of this process that are still running, for the exit handler.
const running = new Set<ChildProcess>();
let exitHandlerInstalled = false;

function spawnDaemon(command: string, logFile: string): ChildProcess {
  const log = openSync(logFile, 'a');
  try {
    const child = spawn(command, [], {
      stdio: ['ignore', log, log],
      env: { ...process.env, PATH: DAEMON_PATH },
    });
    // A test that forgets stop() must not hang on the daemon: the exit
    // handler reaps it instead.
    child.unref();
    running.add(child);
    child.once('exit', () => running.delete(child));
    if (!exitHandlerInstalled) {
      exitHandlerInstalled = true;
      process.on('exit', () => {
        for (const daemon of running) daemon.kill('SIGTERM');
      });
    }
    return child;
  } finally {
    closeSync(log);
  }
}

class StartedLibvirtd implements Libvirtd {
  readonly uri = SYSTEM_URI;
  readonly owned = true;
  #libvirtd: ChildProcess;
  #stopped = false;

  constructor(
    libvirtd: ChildProcess,
    private readonly virtlogd: ChildProcess | undefined,
    readonly logFile: string,
    private readonly startTimeoutMs: number,
    private readonly stopTimeoutMs: number,
  ) {
    this.#libvirtd = libvirtd;
  }

  get pid(): number | undefined {
    return this.#libvirtd.pid;
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await terminate(this.#libvirtd, this.stopTimeoutMs);
    if (this.virtlogd !== undefined) await terminate(this.virtlogd, this.stopTimeoutMs);
    if (process.env['VMDEVD_TEST_KEEP_LOGS'] === undefined) {
      await rm(dirname(this.logFile), { recursive: true, force: true });
    }
  }

  async restart(options: { readonly signal?: NodeJS.Signals } = {}): Promise<void> {
    if (this.#stopped) throw new Error('libvirtd was stopped');
    const done = exited(this.#libvirtd);
    this.#libvirtd.kill(options.signal ?? 'SIGKILL');
    await done;
    this.#libvirtd = await startLibvirtdProcess(this.logFile, this.startTimeoutMs);
  }
}

async function startLibvirtdProcess(logFile: string, timeoutMs: number): Promise<ChildProcess> {
  const libvirtd = spawnDaemon('libvirtd', logFile);
  try {
    await waitFor('libvirtd', libvirtdReady, timeoutMs, libvirtd);
  } catch (error) {
    await terminate(libvirtd, 5_000);
    throw new Error(`${(error as Error).message} (its output is in ${logFile})`, { cause: error });
  }
  return libvirtd;
}

/**
 * Ensures a libvirtd serves `qemu:///system`: the host's when it answers
 * (`owned: false`), else virtlogd (unless it answers already) and libvirtd
 * started here (`owned: true`).
 */
export async function startLibvirtd(options: LibvirtdOptions = {}): Promise<Libvirtd> {
  const startTimeoutMs = options.startTimeoutMs ?? 30_000;
  const stopTimeoutMs = options.stopTimeoutMs ?? 15_000;
  if (await socketAnswers(LIBVIRTD_SOCKET)) {
    await waitFor('libvirtd', libvirtdReady, startTimeoutMs);
    return {
      uri: SYSTEM_URI,
      owned: false,
      pid: undefined,
      logFile: undefined,
      stop: async () => {},
      restart: async () => {
        throw new Error('libvirtd was not started by this test: it cannot restart it');
      },
    };
  }
  const logFile = join(mkdtempSync(join(tmpdir(), 'vmdevd-libvirtd-')), 'daemons.log');
  let virtlogd: ChildProcess | undefined;
  if (!(await socketAnswers(VIRTLOGD_SOCKET))) {
    virtlogd = spawnDaemon('virtlogd', logFile);
    try {
      await waitFor('virtlogd', () => socketAnswers(VIRTLOGD_SOCKET), startTimeoutMs, virtlogd);
    } catch (error) {
      await terminate(virtlogd, stopTimeoutMs);
      throw new Error(`${(error as Error).message} (its output is in ${logFile})`, { cause: error });
    }
  }
  try {
    const libvirtd = await startLibvirtdProcess(logFile, startTimeoutMs);
    return new StartedLibvirtd(libvirtd, virtlogd, logFile, startTimeoutMs, stopTimeoutMs);
  } catch (error) {
    if (virtlogd !== undefined) await terminate(virtlogd, stopTimeoutMs);
    throw error;
  }
}
