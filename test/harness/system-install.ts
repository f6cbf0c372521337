/**
 * Runs scripts/system-install.sh into a temporary DESTDIR, for tests of the
 * installed files and of the daemon running from them (as the service user,
 * who may not be able to read the checkout itself).
 */
import { chmodSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './process.js';
import { makeTempDir, type TempDir } from './temp-dir.js';
import { REPO_ROOT } from './vmdevd-process.js';

export const INSTALL_SCRIPT = join(REPO_ROOT, 'scripts/system-install.sh');

export interface Installed {
  readonly dir: TempDir;
  readonly destdir: string;
  readonly prefix: string;
  /** PREFIX/lib/vmdevd, with DESTDIR in front. */
  readonly pkglibdir: string;
  /** The installed bin/vmdevd, with DESTDIR in front. */
  readonly bin: string;
  /** Where a path of the installed system is under DESTDIR. */
  path(systemPath: string): string;
  /** What the script printed. */
  readonly output: string;
  remove(): void;
}

export async function runInstallScript(
  action: 'install' | 'uninstall',
  destdir: string,
  extraArgs: readonly string[] = [],
  env: NodeJS.ProcessEnv = {},
) {
  const r = await run('bash', [INSTALL_SCRIPT, action, '--destdir', destdir, ...extraArgs], {
    env: { ...process.env, ...env },
  });
  if (r.code !== 0) throw new Error(`system-install.sh ${action} failed (${r.code}):\n${r.stdout}${r.stderr}`);
  return r;
}

/**
 * Installs into a new temporary DESTDIR whose path every user can
 * traverse, so the service user can run the installed daemon.
 */
export async function installToTempDir(options: { prefix?: string } = {}): Promise<Installed> {
  const dir = makeTempDir('vmdevd-install-');
  chmodSync(dir.path, 0o755);
  const destdir = dir.file('root');
  const prefix = options.prefix ?? '/usr/local';
  try {
    const r = await runInstallScript('install', destdir, ['--prefix', prefix, '--node', process.execPath]);
    const pkglibdir = join(destdir, prefix, 'lib/vmdevd');
    return {
      dir,
      destdir,
      prefix,
      pkglibdir,
      bin: join(pkglibdir, 'bin/vmdevd'),
      path: (p) => join(destdir, p),
      output: r.stdout + r.stderr,
      remove: () => dir.remove(),
    };
  } catch (err) {
    dir.remove();
    throw err;
  }
}

/**
 * Makes the compiled test-backend plugin loadable by an installed vmdevd,
 * as a third-party plugin is: its own directory with a `node_modules/vmdevd`
 * link to the installation. Returns the path to name as `plugin`.
 */
export function addTestBackend(installed: Installed, testBackendFile: string): string {
  const dir = installed.dir.file('test-backend');
  mkdirSync(join(dir, 'node_modules'), { recursive: true, mode: 0o755 });
  writeFileSync(
    join(dir, 'package.json'),
    JSON.stringify({ name: 'vmdevd-test-backend', type: 'module', main: 'index.js' }),
  );
  writeFileSync(join(dir, 'index.js'), readFileSync(testBackendFile));
  symlinkSync(installed.pkglibdir, join(dir, 'node_modules/vmdevd'));
  for (const p of [dir, join(dir, 'node_modules')]) chmodSync(p, 0o755);
  for (const p of ['package.json', 'index.js']) chmodSync(join(dir, p), 0o644);
  return dir;
}
