/** Command-line arguments of `vmdevd`. */
import { parseArgs } from 'node:util';
import { ConfigError } from '../core/errors.js';

export const USAGE = `Usage: vmdevd [--system | --session | --address ADDR] [--config FILE]
       vmdevd --check-config [FILE]

Device-management agent for hypervisor hosts, on D-Bus.

Options:
  --system          use the system bus
  --session         use the session bus (the default without a config)
  --address ADDR    use the bus at this D-Bus address (unix:path=...)
  --config FILE     read the JSON config FILE (without it: the session bus and
                    one libvirt backend on test:///default)
  --check-config [FILE]
                    check the config (FILE, or --config's), plugin options
                    included, and exit: 0 when it is valid, 78 when it is not;
                    touches no bus and starts no backend
  --help            print this help
  --version         print the version
`;

export interface DaemonArgs {
  readonly help: boolean;
  readonly version: boolean;
  readonly bus: string | undefined;
  readonly config: string | undefined;
  /** --check-config: check the config and exit. */
  readonly checkConfig: boolean;
}

export function parseDaemonArgs(argv: readonly string[]): DaemonArgs {
  let values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: true,
      options: {
        system: { type: 'boolean' },
        session: { type: 'boolean' },
        address: { type: 'string' },
        config: { type: 'string' },
        'check-config': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
    }));
  } catch (err) {
    throw new ConfigError(`${(err as Error).message}\n\n${USAGE}`);
  }
  const chosen = [
    values.system && 'system',
    values.session && 'session',
    values.address !== undefined && values.address,
  ].filter((v): v is string => typeof v === 'string');
  if (chosen.length > 1) throw new ConfigError('give only one of --system, --session and --address');
  if (values.address === '') throw new ConfigError('--address needs a D-Bus address such as unix:path=/run/vmdevd-bus');
  const checkConfig = values['check-config'] === true;
  if (positionals.length > (checkConfig ? 1 : 0)) {
    throw new ConfigError(`unexpected argument ${JSON.stringify(positionals.at(-1))}\n\n${USAGE}`);
  }
  if (checkConfig && positionals.length === 1 && values.config !== undefined) {
    throw new ConfigError('give the file to check either after --check-config or with --config, not both');
  }
  return {
    help: values.help === true,
    version: values.version === true,
    bus: chosen[0],
    config: positionals[0] ?? values.config,
    checkConfig,
  };
}
