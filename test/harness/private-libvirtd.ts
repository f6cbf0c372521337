/**
 * A libvirtd of the test's own, beside any other: started in a mount
 * namespace the harness makes (`unshare --mount`), with a private `/run`
 * and its own `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`,
 * `/var/cache/libvirt` and `/var/log/libvirt`, bind-mounted from a
 * directory of its own, so it shares no socket, state, config or domain
 * with the host's libvirtd or another one of these. It can also listen for
 * TLS on a loopback port (`qemu+tls://127.0.0.1:PORT/system`, with a PKI
 * from `test-pki.ts`), and an sshd can run in its namespace
 * (`private-sshd.ts`) for `qemu+ssh://`.
 *
 * Its unix socket is reachable from outside the namespace as
 * `DIR/run/libvirt-sock`: {@link PrivateLibvirtd.uri} names it. QEMU's log
 * goes to a file (no virtlogd in the namespace). `stop()` (call it from an
 * `after()` hook or a `finally`) stops libvirtd by its PID, then any QEMU
 * process its pid files still name, and removes the directory.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startProcess, type ManagedProcess } from './process.js';
import { makeTempDir, type TempDir } from './temp-dir.js';
import type { ServerPki } from './test-pki.js';

const execFileAsync = promisify(execFile);
const DAEMON_PATH = `${process.env['PATH'] ?? '/usr/bin:/bin'}:/usr/sbin:/sbin`;

/** What the namespace gets: the private /run, then each directory of the daemon bind-mounted. */
const NAMESPACE_SCRIPT = `set -e
root=$1
shift
mount -t tmpfs -o mode=0755 vmdevd-run /run
mkdir -p /run/libvirt /run/sshd
mount --bind "$root/run" /run/libvirt
mount --bind "$root/etc" /etc/libvirt
mount --bind "$root/lib" /var/lib/libvirt
mount --bind "$root/cache" /var/cache/libvirt
mount --bind "$root/log" /var/log/libvirt
exec "$@"
`;

export interface PrivateLibvirtdOptions {
  /** Also listen for TLS on 127.0.0.1:`port` with this PKI. */
  readonly tls?: { readonly port: number; readonly pki: ServerPki };
  /** How long to wait for it to answer. Default 30 s. */
  readonly startTimeoutMs?: number;
}

export interface PrivateLibvirtd {
  /** The directory its namespace mounts (`etc`, `run`, `lib`, `cache`, `log`). */
  readonly dir: string;
  /** libvirtd's PID (a new one after `restart()`). */
  readonly pid: number;
  /** `DRIVER+unix:///PATH?socket=…`: its unix socket, from outside the namespace (default `qemu`, `/system`). */
  uri(driver?: string, path?: string): string;
  /** Kills libvirtd with `signal` (default SIGKILL: its clients see the connection drop), waits for it to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts libvirtd again in a new namespace on the same directory (its domains come back). */
  restart(): Promise<void>;
  /** Its output so far. */
  output(): string;
  /** Stops libvirtd, then the QEMU processes it left, and removes the directory. Idempotent. */
  stop(): Promise<void>;
}

/** A TCP port on 127.0.0.1 that nothing listens on now. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}

function libvirtdConf(options: PrivateLibvirtdOptions): string {
  const lines = [
    '# written by the vmdevd test harness',
    'listen_tcp = 0',
    'auth_unix_rw = "none"',
    'auth_unix_ro = "none"',
  ];
  if (options.tls !== undefined) {
    const { port, pki } = options.tls;
    lines.push(
      'listen_tls = 1',
      'listen_addr = "127.0.0.1"',
      `tls_port = "${port}"`,
      'auth_tls = "none"',
      `key_file = "${pki.serverKey}"`,
      `cert_file = "${pki.serverCert}"`,
      `ca_file = "${pki.caCert}"`,
    );
  } else {
    lines.push('listen_tls = 0');
  }
  return `${lines.join('\n')}\n`;
}

async function answers(uri: string): Promise<boolean> {
  try {
    await execFileAsync('virsh', ['-c', uri, 'version'], { timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

/** Kills the QEMU processes whose pid files are in the daemon's run directory. */
function killLeftQemu(dir: string): void {
  const runDir = join(dir, 'run', 'qemu');
  if (!existsSync(runDir)) return;
  for (const name of readdirSync(runDir)) {
    if (!name.endsWith('.pid')) continue;
    const pid = Number(readFileSync(join(runDir, name), 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 1) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

export async function startPrivateLibvirtd(options: PrivateLibvirtdOptions = {}): Promise<PrivateLibvirtd> {
  const temp: TempDir = makeTempDir('vmdevd-libvirtd-');
  const dir = temp.path;
  for (const sub of ['etc', 'run', 'lib', 'cache', 'log']) mkdirSync(join(dir, sub), { mode: 0o755 });
  writeFileSync(join(dir, 'etc', 'libvirtd.conf'), libvirtdConf(options));
  // No virtlogd in the namespace: QEMU writes its log to a file itself.
  writeFileSync(join(dir, 'etc', 'qemu.conf'), 'stdio_handler = "file"\n');
  const socket = join(dir, 'run', 'libvirt-sock');
  const uri = (driver = 'qemu', path = '/system') => `${driver}+unix://${path}?socket=${socket}`;
  const timeoutMs = options.startTimeoutMs ?? 30_000;

  const spawnDaemon = async (): Promise<ManagedProcess> => {
    const args = ['libvirtd', ...(options.tls !== undefined ? ['--listen'] : [])];
    const daemon = startProcess(
      'unshare',
      ['--mount', '--propagation', 'private', 'sh', '-c', NAMESPACE_SCRIPT, 'sh', dir, ...args],
      { env: { ...process.env, PATH: DAEMON_PATH } },
    );
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const code = daemon.child.exitCode;
      if (code !== null) throw new Error(`the private libvirtd exited with ${code}:\n${daemon.output()}`);
      if (existsSync(socket) && (await answers(uri()))) return daemon;
      if (Date.now() > deadline) {
        await daemon.stop(5_000);
        throw new Error(`the private libvirtd did not answer within ${timeoutMs} ms:\n${daemon.output()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  let daemon: ManagedProcess;
  try {
    daemon = await spawnDaemon();
  } catch (err) {
    temp.remove();
    throw err;
  }
  let stopped = false;
  const kill = async (signal: NodeJS.Signals) => {
    const exited = daemon.exited();
    daemon.child.kill(signal);
    await exited;
  };
  return {
    dir,
    get pid() {
      return daemon.pid;
    },
    uri,
    output: () => daemon.output(),
    kill: (signal: NodeJS.Signals = 'SIGKILL') => kill(signal),
    async restart() {
      if (stopped) throw new Error('the private libvirtd was stopped');
      if (daemon.child.exitCode === null && daemon.child.signalCode === null) await kill('SIGKILL');
      daemon = await spawnDaemon();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await daemon.stop(15_000);
      killLeftQemu(dir);
      if (process.env['VMDEVD_TEST_KEEP_LOGS'] === undefined) temp.remove();
    },
  };
}
