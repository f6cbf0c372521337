/**
 * QEMU processes for tests, run directly (no libvirt): `qemu-system-x86_64
 * -nodefaults -display none`, 64 MiB, KVM when /dev/kvm is usable and TCG
 * otherwise, with QMP monitors on unix sockets (`server=on,wait=off`), by
 * default one for vmdevd and one for the test. No guest OS: the firmware
 * finds nothing to boot, or, with `guest`, a boot sector of a few
 * instructions that puts the machine into one state a guest could cause.
 *
 * Each process is kept by its PID and stopped by it (`stop()`, from an
 * `after()` hook or a `finally`); the harness's exit handler kills it should
 * the test process end first. Its directory (sockets, disk images) is
 * removed by `stop()`.
 */
import { accessSync, constants, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startProcess, type ManagedProcess } from './process.js';
import { makeTempDir, type TempDir } from './temp-dir.js';

export const QEMU_BINARY = 'qemu-system-x86_64';
const IMAGE_BYTES = 1024 * 1024;

/**
 * Boot sectors that each do one thing once per QEMU process and then halt
 * (a flag in CMOS memory, which a reset keeps, makes a second boot just
 * halt): `poweroff` enters ACPI S5 (with `-no-shutdown`, QEMU stays, status
 * `shutdown`), `panic` writes to the pvpanic port (status `guest-panicked`),
 * `suspend` enters ACPI S3 (status `suspended`). The ACPI registers are
 * where the firmware (SeaBIOS) puts them on a q35 machine.
 */
export type GuestProgram = 'poweroff' | 'panic' | 'suspend';

/** The instructions of each program, in 16-bit real mode (SeaBIOS jumps to 0x7c00). */
const ACTIONS: Record<GuestProgram, number[]> = {
  // mov dx, 0x604 (PM1a control); mov ax, SLP_EN | SLP_TYP 0 (S5); out dx, ax
  poweroff: [0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef],
  // mov dx, 0x505 (pvpanic); mov al, 1 (panicked); out dx, al
  panic: [0xba, 0x05, 0x05, 0xb0, 0x01, 0xee],
  // mov dx, 0x604; mov ax, SLP_EN | SLP_TYP 1 (S3); out dx, ax
  suspend: [0xba, 0x04, 0x06, 0xb8, 0x00, 0x24, 0xef],
};

/** The CMOS byte that says the program already ran (unused by QEMU and SeaBIOS). */
const CMOS_FLAG = 0x7e;

function bootSector(program: GuestProgram): Buffer {
  const action = ACTIONS[program];
  const code = [
    ...[0xb0, CMOS_FLAG, 0xe6, 0x70, 0xe4, 0x71], // mov al, FLAG; out 0x70, al; in al, 0x71
    ...[0x84, 0xc0, 0x75, 10 + action.length - 2], // test al, al; jnz halt
    ...[0xb0, CMOS_FLAG, 0xe6, 0x70, 0xb0, 0x01, 0xe6, 0x71], // CMOS[FLAG] = 1
    ...action,
    ...[0xf4, 0xeb, 0xfd], // halt: hlt; jmp halt
  ];
  const sector = Buffer.alloc(512);
  Buffer.from(code).copy(sector);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  return sector;
}

export interface QemuOptions {
  /** The machine type. Default `q35` (the guest programs need it). */
  readonly machine?: string;
  /**
   * The QMP monitors: name → socket path. Default: `vmdevd` and `test`,
   * both in the process's directory (`vmdevd.qmp`, `test.sock`).
   */
  readonly monitors?: Readonly<Record<string, string>>;
  /** Drives to create as 1 MiB sparse raw images, by drive id (`-drive if=none,id=ID,…`). */
  readonly drives?: readonly string[];
  /** `-device` arguments, in order. */
  readonly devices?: readonly string[];
  /** Any other arguments. */
  readonly args?: readonly string[];
  /** Start with the CPU stopped (`-S`: status `prelaunch`). */
  readonly paused?: boolean;
  /** A boot sector that puts the machine into one state (see {@link GuestProgram}). */
  readonly guest?: GuestProgram;
  /** Default: `kvm` when /dev/kvm can be opened, else `tcg`; or $VMDEVD_TEST_ACCEL. */
  readonly accel?: 'kvm' | 'tcg';
  /** How long to wait for the sockets. Default 30 s. */
  readonly startTimeoutMs?: number;
}

export interface QemuProcess {
  readonly pid: number;
  readonly accel: 'kvm' | 'tcg';
  /** The process's own directory: sockets unless placed elsewhere, disk images. */
  readonly dir: TempDir;
  /** A monitor's socket path. */
  socket(name: string): string;
  /** The image file of a drive from `drives`. */
  image(drive: string): string;
  /** What QEMU wrote to stdout and stderr. */
  output(): string;
  /** Resolves with the exit code (128 + signal number for a signal). */
  exited(): Promise<number>;
  /** Sends `signal` to the process (by its PID). */
  signal(signal: NodeJS.Signals): void;
  /** Sends `signal` (default SIGKILL) and waits for the exit. Leaves the directory. */
  kill(signal?: NodeJS.Signals): Promise<number>;
  /** SIGTERM (SIGKILL after 10 s), then removes the directory. Idempotent. */
  stop(): Promise<void>;
}

/** `kvm` when this process can open /dev/kvm for reading and writing, else `tcg`. */
export function defaultAccel(): 'kvm' | 'tcg' {
  const forced = process.env['VMDEVD_TEST_ACCEL'];
  if (forced === 'kvm' || forced === 'tcg') return forced;
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return 'kvm';
  } catch {
    return 'tcg';
  }
}

/** True when a unix socket is listening at `path` (from /proc/net/unix: no connection is made). */
export function socketListening(path: string): boolean {
  // Columns: Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is __SO_ACCEPTCON (listening).
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields.length >= 8 && fields.slice(7).join(' ') === path && (parseInt(fields[3]!, 16) & 0x10000) !== 0)
      return true;
  }
  return false;
}

/** Starts QEMU and resolves once every monitor socket listens. */
export async function startQemu(options: QemuOptions = {}): Promise<QemuProcess> {
  const dir = makeTempDir('vmdevd-qemu-');
  const monitors = options.monitors ?? { vmdevd: dir.file('vmdevd.qmp'), test: dir.file('test.sock') };
  const accel = options.accel ?? defaultAccel();
  const args = [
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-machine',
    options.machine ?? 'q35',
    '-accel',
    accel,
    '-m',
    '64',
    '-smp',
    '1',
  ];
  for (const path of Object.values(monitors)) args.push('-qmp', `unix:${path},server=on,wait=off`);
  if (options.paused) args.push('-S');
  let proc: ManagedProcess | undefined;
  try {
    for (const drive of options.drives ?? []) {
      const image = dir.file(`${drive}.img`);
      await writeFile(image, '');
      await truncate(image, IMAGE_BYTES);
      args.push('-drive', `if=none,id=${drive},file=${image},format=raw`);
    }
    if (options.guest !== undefined) {
      const image = dir.file('boot.img');
      writeFileSync(image, bootSector(options.guest));
      // SeaBIOS reads a disk only if it is larger than one sector.
      await truncate(image, IMAGE_BYTES);
      args.push('-drive', `if=none,id=boot,file=${image},format=raw`, '-device', 'ide-hd,drive=boot,bus=ide.0');
      if (options.guest === 'poweroff') args.push('-no-shutdown');
      if (options.guest === 'panic') args.push('-device', 'pvpanic', '-action', 'panic=pause');
      if (options.guest === 'suspend') args.push('-global', 'ICH9-LPC.disable_s3=0');
    }
    for (const device of options.devices ?? []) args.push('-device', device);
    args.push(...(options.args ?? []));
    proc = startProcess(QEMU_BINARY, args);
    const started = proc;
    let exited = false;
    void started.exited().then(() => (exited = true));
    const deadline = performance.now() + (options.startTimeoutMs ?? 30_000);
    for (;;) {
      if (Object.values(monitors).every((p) => existsSync(p) && socketListening(p))) break;
      if (exited)
        throw new Error(`${QEMU_BINARY} exited at start:\n${started.output()}\n(arguments: ${args.join(' ')})`);
      if (performance.now() > deadline) throw new Error(`${QEMU_BINARY} did not open its QMP sockets in time`);
      await new Promise((r) => setTimeout(r, 20));
    }
  } catch (err) {
    await proc?.stop(2000);
    dir.remove();
    throw err;
  }
  const child = proc;
  let stopped = false;
  return {
    pid: child.pid,
    accel,
    dir,
    socket(name) {
      const path = monitors[name];
      if (path === undefined) throw new Error(`no monitor named ${name}`);
      return path;
    },
    image: (drive) => join(dir.path, `${drive}.img`),
    output: () => child.output(),
    exited: () => child.exited(),
    signal(signal) {
      process.kill(child.pid, signal);
    },
    async kill(signal = 'SIGKILL') {
      try {
        process.kill(child.pid, signal);
      } catch {
        // already gone
      }
      return child.exited();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      // A stopped process must be continued to act on SIGTERM.
      try {
        process.kill(child.pid, 'SIGCONT');
      } catch {
        // already gone
      }
      await child.stop(10_000);
      dir.remove();
    },
  };
}
