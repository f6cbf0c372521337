/**
 * A Debian tree for system tests, made with debootstrap and kept on the
 * machine between runs.
 *
 * Layout: `CACHE/NAME/root` is the tree, `CACHE/NAME/stamp` what it was made
 * from (suite, variant, packages). A tree whose stamp matches is reused; one
 * that is missing or was made from another list is built again. A build runs
 * in `CACHE/.NAME.build-PID` and is renamed into place only once debootstrap
 * succeeded and every package is installed and configured, so an interrupted
 * build is never used; the next build removes what a dead one left (with any
 * mounts debootstrap left inside it).
 */
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { run } from './process.js';

export interface DebianTreeOptions {
  /** Where trees are kept, e.g. /var/cache/vmdevd-test. */
  readonly cacheDir: string;
  /** The tree's directory name in `cacheDir`. */
  readonly name: string;
  /** A Debian suite, e.g. `bookworm`. */
  readonly suite: string;
  readonly mirror: string;
  /** Installed on top of debootstrap's `minbase` variant, with their dependencies. */
  readonly packages: readonly string[];
  /** Called with a line for each thing it does (build, reuse, cleanup). */
  readonly log?: (line: string) => void;
}

export interface DebianTree {
  /** The root of the tree. Boot it read-only or on an overlay: it is shared by every run. */
  readonly root: string;
  /** True when this call built it, false when it was reused. */
  readonly built: boolean;
}

const VARIANT = 'minbase';

function stampOf(options: DebianTreeOptions): string {
  const packages = [...new Set(options.packages)].sort();
  return `${JSON.stringify({ suite: options.suite, variant: VARIANT, packages }, undefined, 2)}\n`;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The mount points at or under `dir`, deepest first. */
function mountsUnder(dir: string): string[] {
  const unescape = (p: string) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map(unescape)
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

/**
 * Removes a tree, first unmounting what an interrupted debootstrap left
 * mounted in it (/proc, /sys), and never crossing into another file system.
 */
async function removeTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  for (const mount of mountsUnder(dir)) await run('umount', ['--lazy', mount]);
  const r = await run('rm', ['-rf', '--one-file-system', '--', dir]);
  if (r.code !== 0) throw new Error(`cannot remove ${dir}: ${r.stderr}`);
}

/** Runs a command with its output appended to `logFile`; resolves with its exit code. */
function runLogged(command: string, args: readonly string[], logFile: string): Promise<number> {
  const fd = openSync(logFile, 'a');
  try {
    const child = spawn(command, args, { stdio: ['ignore', fd, fd] });
    return new Promise((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => resolve(code ?? (signal === null ? 1 : 128)));
    });
  } finally {
    closeSync(fd);
  }
}

function tail(file: string, lines = 30): string {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n') : '';
}

/** The tree described by `options`: reused when its stamp matches, else built (which downloads from `mirror`). */
export async function ensureDebianTree(options: DebianTreeOptions): Promise<DebianTree> {
  const log = options.log ?? (() => {});
  const dir = join(options.cacheDir, options.name);
  const root = join(dir, 'root');
  const stampFile = join(dir, 'stamp');
  const stamp = stampOf(options);
  const matches = () => existsSync(root) && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp;
  if (matches()) return { root, built: false };

  mkdirSync(options.cacheDir, { recursive: true, mode: 0o755 });
  // What builds that died left behind (their PID is gone).
  for (const entry of readdirSync(options.cacheDir)) {
    const m = new RegExp(`^\\.${options.name.replace(/[.]/g, '\\.')}\\.(?:build|old)-(\\d+)$`).exec(entry);
    if (m !== null && (Number(m[1]) === process.pid || !alive(Number(m[1])))) {
      log(`removing ${entry}, left by an interrupted build`);
      await removeTree(join(options.cacheDir, entry));
    }
  }

  const build = join(options.cacheDir, `.${options.name}.build-${process.pid}`);
  mkdirSync(build, { mode: 0o755 });
  try {
    const logFile = join(build, 'debootstrap.log');
    const packages = [...new Set(options.packages)].sort();
    log(
      existsSync(dir) ? `${dir}: made from another list of packages; building it again` : `${dir}: absent; building it`,
    );
    const code = await runLogged(
      'debootstrap',
      [`--variant=${VARIANT}`, `--include=${packages.join(',')}`, options.suite, join(build, 'root'), options.mirror],
      logFile,
    );
    if (code !== 0) throw new Error(`debootstrap failed (exit ${code}); the end of its log:\n${tail(logFile)}`);
    // debootstrap can end with packages it could not configure: check each one.
    const q = await run('chroot', [
      join(build, 'root'),
      'dpkg-query',
      '-W',
      '-f=${Package} ${db:Status-Abbrev}\\n',
      ...packages,
    ]);
    const broken = packages.filter((p) => !new RegExp(`^${p.replace(/[.+]/g, '\\$&')} ii `, 'm').test(q.stdout));
    if (q.code !== 0 || broken.length > 0) {
      throw new Error(`debootstrap left packages not installed or not configured: ${broken.join(', ')}\n${q.stderr}`);
    }
    writeFileSync(join(build, 'stamp'), stamp);
    const old = join(options.cacheDir, `.${options.name}.old-${process.pid}`);
    if (existsSync(dir)) renameSync(dir, old);
    try {
      renameSync(build, dir);
    } catch (err) {
      // Another run put its own build in place meanwhile: use it if it fits.
      const code = (err as NodeJS.ErrnoException).code;
      if ((code === 'ENOTEMPTY' || code === 'EEXIST') && matches()) {
        await removeTree(build);
        return { root, built: false };
      }
      throw err;
    }
    await removeTree(old);
    return { root, built: true };
  } catch (err) {
    await removeTree(build);
    throw err;
  }
}
