/** Runs the real `bin/vmdevd` as a child process, as an operator would. */
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startProcess, type ManagedProcess } from './process.js';
import { makeTempDir, type TempDir } from './temp-dir.js';

export const VMDEVD_BIN = fileURLToPath(new URL('../../../bin/vmdevd', import.meta.url));

/** The first line of bin/vmdevd: `#!/usr/bin/env -S [NAME=VALUE …] node [OPTION …]`. */
const SHEBANG = /^#!\/usr\/bin\/env -S ((?:\S+=\S* )*)node((?: \S+)*)$/.exec(
  readFileSync(VMDEVD_BIN, 'utf8').split('\n')[0]!,
);
if (SHEBANG === null)
  throw new Error(`${VMDEVD_BIN}: the first line is not "#!/usr/bin/env -S [NAME=VALUE ...] node [OPTION ...]"`);

/** The node options the daemon runs with: those on the first line of bin/vmdevd. */
export const DAEMON_NODE_ARGS: readonly string[] = SHEBANG[2]!.split(' ').filter(Boolean);

/** The environment the daemon runs with: the assignments on the first line of bin/vmdevd. */
export const DAEMON_ENV: Readonly<Record<string, string>> = Object.fromEntries(
  SHEBANG[1]!
    .split(' ')
    .filter(Boolean)
    .map((a) => [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)]),
);

export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export interface VmdevdProcess extends ManagedProcess {
  readonly configFile: string;
  readonly dir: TempDir;
}

export interface VmdevdOptions {
  /** The bus address; passed as --address unless `args` says otherwise. */
  readonly address?: string;
  /** The config, written to a file and passed with --config (omitted when undefined). */
  readonly config?: Record<string, unknown>;
  /** Extra arguments. */
  readonly args?: readonly string[];
  /** Wait for the "ready" log line (default true). */
  readonly waitReady?: boolean;
  readonly env?: NodeJS.ProcessEnv;
  readonly readyTimeoutMs?: number;
  /** Write the config file here (relative plugin paths and package names resolve from it). */
  readonly configDir?: string;
  /** The vmdevd script to run (default: the checkout's `bin/vmdevd`), e.g. an installed copy. */
  readonly bin?: string;
  /** Options for node itself, before the script (`--jitless`). */
  readonly nodeArgs?: readonly string[];
  /**
   * A command that runs node, e.g. `['setpriv', '--reuid=…', …]` to run the
   * daemon as another user; the config is then readable by everyone.
   */
  readonly wrapper?: readonly string[];
}

export async function startVmdevd(options: VmdevdOptions): Promise<VmdevdProcess> {
  const dir = makeTempDir('vmdevd-daemon-');
  const configFile =
    options.configDir !== undefined ? join(options.configDir, 'vmdevd-config.json') : dir.file('config.json');
  const args = [...(options.nodeArgs ?? DAEMON_NODE_ARGS), options.bin ?? VMDEVD_BIN];
  if (options.address !== undefined) args.push('--address', options.address);
  if (options.config !== undefined) {
    writeFileSync(configFile, JSON.stringify(options.config, null, 2));
    args.push('--config', configFile);
    if (options.wrapper !== undefined) {
      chmodSync(dir.path, 0o755);
      chmodSync(configFile, 0o644);
    }
  }
  args.push(...(options.args ?? []));
  const [command, ...prefix] = options.wrapper ?? [];
  const proc =
    command === undefined
      ? startProcess(process.execPath, args, { env: { ...process.env, ...DAEMON_ENV, ...options.env } })
      : startProcess(command, [...prefix, process.execPath, ...args], {
          env: { ...process.env, ...DAEMON_ENV, ...options.env },
        });
  const handle: VmdevdProcess = {
    ...proc,
    configFile,
    dir,
    async stop(graceMs?: number) {
      const code = await proc.stop(graceMs);
      dir.remove();
      return code;
    },
  };
  if (options.waitReady !== false) {
    try {
      await proc.waitForOutput(/vmdevd: ready/, options.readyTimeoutMs ?? 20_000);
    } catch (err) {
      await handle.stop();
      throw err;
    }
  }
  return handle;
}
