/**
 * An OS tree booted with systemd-nspawn, for tests of what runs under a real
 * systemd: its own PID 1, journal and system bus, and its own users.
 *
 * The tree is booted with `--volatile=overlay`: it is mounted read-only under
 * an overlay whose writable layer is a tmpfs, so every change made inside
 * lives in memory and is gone with the container. That needs no btrfs (as
 * `--ephemeral` would, or a full copy of the tree without it) and leaves
 * nothing on disk to clean up after a run that was killed, whatever the file
 * system of the tree; and a shared, cached tree stays as it was built.
 *
 * No machined on the host is needed or used (`--register=no --keep-unit`),
 * so the container is reached through the PID of its systemd: commands run
 * inside with `nsenter -t PID -a`, and `stop()` sends that systemd
 * SIGRTMIN+3 (halt), waits for systemd-nspawn to exit, and kills both by PID
 * as a last resort. Both are killed when the test process exits whatever
 * happened (systemd-nspawn's death alone does not end the container).
 * The container has a private network: only its own loopback.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import type { Writable } from 'node:stream';
import { startProcess, type ManagedProcess } from './process.js';

/** systemd's "halt" signal: glibc's SIGRTMIN is 34. */
const SIGRTMIN_PLUS_3 = 37;
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface Bind {
  /** A path on the host. */
  readonly source: string;
  /** Where it appears in the container; default the same path. */
  readonly target?: string;
  readonly readOnly?: boolean;
}

export interface NspawnOptions {
  /** The OS tree to boot. It is not modified. */
  readonly directory: string;
  /** The machine (and host) name; default `vmdevd-<random>`. */
  readonly machine?: string;
  readonly binds?: readonly Bind[];
  /** How long boot may take, until `systemctl is-system-running --wait` answers. Default 120 s. */
  readonly bootTimeoutMs?: number;
}

export interface ExecOptions {
  /** Written to the command's standard input. */
  readonly input?: string;
  /** Run as this user (`runuser -u USER --`), with the groups /etc/group gives it. Default root. */
  readonly user?: string;
}

export interface ExecResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

// Containers still running, killed by PID when the test process exits.
const running = new Set<NspawnContainer>();
process.on('exit', () => {
  for (const c of running) c.kill();
});

export class NspawnContainer {
  #stopped = false;

  private constructor(
    readonly machine: string,
    private readonly nspawn: ManagedProcess,
    /** The host PID of the container's systemd (PID 1 inside). */
    readonly systemdPid: number,
    /** What `systemctl is-system-running --wait` answered: `running` or `degraded`. */
    readonly state: string,
    /** The units that failed during boot (when `state` is `degraded`). */
    readonly failedUnits: readonly string[],
  ) {}

  /** The PID of systemd-nspawn on the host. */
  get nspawnPid(): number {
    return this.nspawn.pid;
  }

  /** Boots the tree and waits until its systemd says the boot is over. */
  static async boot(options: NspawnOptions): Promise<NspawnContainer> {
    const machine = options.machine ?? `vmdevd-${randomBytes(4).toString('hex')}`;
    const deadline = Date.now() + (options.bootTimeoutMs ?? 120_000);
    const args = [
      `--directory=${options.directory}`,
      '--volatile=overlay',
      '--boot',
      '--register=no',
      '--keep-unit',
      '--console=pipe',
      '--private-network',
      '--link-journal=no',
      `--machine=${machine}`,
    ];
    for (const b of options.binds ?? []) {
      const spec = b.target === undefined || b.target === b.source ? b.source : `${b.source}:${b.target}`;
      args.push(`${b.readOnly ? '--bind-ro' : '--bind'}=${spec}`);
    }
    const nspawn = startProcess('systemd-nspawn', args, { env: { PATH, LANG: 'C.UTF-8' } });
    let systemdPid: number | undefined;
    try {
      systemdPid = await waitFor('the container to start systemd', deadline, nspawn, () => containerInit(nspawn.pid));
      const pid = systemdPid;
      // Kill it with the test process from now on, even before boot is over.
      const early = { kill: () => killPid(pid) };
      process.once('exit', early.kill);
      const state = await waitFor('systemctl is-system-running --wait', deadline, nspawn, async () => {
        const r = await nsenter(pid, ['systemctl', 'is-system-running', '--wait'], {});
        const answer = r.stdout.trim();
        if (answer === 'running' || answer === 'degraded') return answer;
        if (['maintenance', 'stopping', 'offline'].includes(answer)) {
          throw new Error(`the container's systemd is ${answer}:\n${nspawn.output()}`);
        }
        return undefined; // not reachable yet (no bus), or still "initializing"
      });
      const failed =
        state === 'degraded'
          ? (await nsenter(pid, ['systemctl', '--failed', '--plain', '--no-legend', '--no-pager'], {})).stdout
              .split('\n')
              .map((l) => l.trim().split(/\s+/)[0]!)
              .filter(Boolean)
          : [];
      const container = new NspawnContainer(machine, nspawn, pid, state, failed);
      running.add(container);
      process.removeListener('exit', early.kill);
      return container;
    } catch (err) {
      if (systemdPid !== undefined) killPid(systemdPid);
      await nspawn.stop(5_000);
      throw err;
    }
  }

  /** Runs a command inside, as root or `options.user`, to completion. */
  exec(command: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    return nsenter(this.systemdPid, asUser(command, options.user), options);
  }

  /** Like {@link exec}, and fails unless the command exits with 0. */
  async check(command: readonly string[], options: ExecOptions = {}): Promise<string> {
    const r = await this.exec(command, options);
    if (r.code !== 0) throw new Error(`${command.join(' ')} failed (exit ${r.code}):\n${r.stdout}${r.stderr}`);
    return r.stdout;
  }

  /** Writes a file inside (through `cat`: /dev/stdin cannot be opened when it is a socket, as node makes it). */
  async writeFile(path: string, content: string): Promise<void> {
    await this.check(['sh', '-c', 'cat > "$1"', 'sh', path], { input: content });
  }

  /** Starts a command inside and returns at once; stop it with the handle (its nsenter, by PID). */
  spawn(command: readonly string[], options: ExecOptions = {}): ManagedProcess {
    const proc = startProcess('nsenter', nsenterArgs(this.systemdPid, asUser(command, options.user)), {
      env: containerEnv(),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    writeInput(proc.child.stdin!, options.input);
    return proc;
  }

  /** What systemd-nspawn and the container's console printed. */
  console(): string {
    return this.nspawn.output();
  }

  /**
   * Halts the container (SIGRTMIN+3 to its systemd) and waits for
   * systemd-nspawn to exit; after `graceMs`, kills both. Idempotent.
   */
  async stop(graceMs = 60_000): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    try {
      process.kill(this.systemdPid, SIGRTMIN_PLUS_3);
    } catch {
      // already gone
    }
    const timer = setTimeout(() => this.kill(), graceMs);
    await this.nspawn.exited();
    clearTimeout(timer);
    running.delete(this);
  }

  /** SIGKILL to the container's systemd (which ends every process inside) and to systemd-nspawn. */
  kill(): void {
    killPid(this.systemdPid);
    killPid(this.nspawn.pid);
  }
}

function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** The host PID of the container's PID 1 once it runs systemd: the child of systemd-nspawn that is PID 1 in its namespace. */
function containerInit(nspawnPid: number): number | undefined {
  const taskDir = `/proc/${nspawnPid}/task`;
  if (!existsSync(taskDir)) return undefined;
  for (const task of readdirSync(taskDir)) {
    let children: string;
    try {
      children = readFileSync(`${taskDir}/${task}/children`, 'utf8');
    } catch {
      continue;
    }
    for (const pid of children.trim().split(/\s+/).filter(Boolean).map(Number)) {
      try {
        const nspid = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]?.split(/\s+/);
        const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
        if (nspid !== undefined && nspid.length > 1 && nspid[nspid.length - 1] === '1' && comm === 'systemd')
          return pid;
      } catch {
        // exited meanwhile
      }
    }
  }
  return undefined;
}

/** Polls `check` until it returns a value, `nspawn` exits (an error), or the deadline passes (an error). */
async function waitFor<T>(
  what: string,
  deadline: number,
  nspawn: ManagedProcess,
  check: () => T | undefined | Promise<T | undefined>,
): Promise<T> {
  let exited = false;
  void nspawn.exited().then(() => (exited = true));
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (exited) throw new Error(`systemd-nspawn exited while waiting for ${what}:\n${nspawn.output()}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${nspawn.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A clean environment for commands inside: nothing of the host's but what is set here. */
function containerEnv(): NodeJS.ProcessEnv {
  return { PATH, LANG: 'C.UTF-8', HOME: '/root' };
}

function asUser(command: readonly string[], user: string | undefined): readonly string[] {
  return user === undefined || user === 'root' ? command : ['runuser', '-u', user, '--', ...command];
}

function nsenterArgs(pid: number, command: readonly string[]): string[] {
  return ['--target', String(pid), '--all', '--', ...command];
}

function nsenter(pid: number, command: readonly string[], options: ExecOptions): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', nsenterArgs(pid, command), { env: containerEnv() });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code: code ?? (signal === null ? 1 : 128), stdout, stderr }));
    writeInput(child.stdin, options.input);
  });
}

/**
 * Gives a command its input and closes its standard input. A command that
 * exits without reading it makes the write fail (EPIPE): its exit status
 * says what happened, so that error is not one of its own.
 */
function writeInput(stdin: Writable, input: string | undefined): void {
  stdin.on('error', () => {});
  if (input === undefined) stdin.end();
  else stdin.end(input);
}
