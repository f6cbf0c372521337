/** `vmdevd`: the daemon's command line entry. */
import 'reflect-metadata';
import { loadConfig, type Config, type ConfigOverrides } from '../core/config.js';
import { ConfigError, errorMessage } from '../core/errors.js';
import { RootLogger } from '../core/logger.js';
import { VERSION } from '../paths.js';
import { parseDaemonArgs, USAGE } from './args.js';
import { Daemon } from './daemon.js';

/** sysexits.h: a config error, and a service that cannot be reached. */
const EX_CONFIG = 78;
const EX_UNAVAILABLE = 69;

/**
 * Makes "__proto__" an ordinary key. dbus-next decodes every D-Bus dict into
 * a plain object by assignment, and vmdevd builds its maps the same way;
 * through Object.prototype's `__proto__` accessor the key "__proto__" would
 * set the prototype (or vanish) instead of becoming an entry: a write of
 * TestProperty naming it was applied in part and answered as a success, and
 * a VM of that name was missing from TestProperty. This is what node's
 * `--disable-proto=delete` does; it also closes the usual path for prototype
 * pollution. Object literals, `Object.getPrototypeOf` and `setPrototypeOf`
 * are unaffected.
 */
function disableProtoAccessor(): void {
  delete (Object.prototype as { __proto__?: unknown }).__proto__;
}

/** `--check-config`: the whole config, plugin options included; 0 or 78. */
async function checkConfig(config: Config): Promise<number> {
  // Quiet: the answer is the one line below.
  const daemon = new Daemon(config, new RootLogger('error', { write: () => {} }));
  const problems = await daemon.checkBackends();
  if (problems.length > 0) {
    for (const p of problems) process.stderr.write(`vmdevd: ${config.source}: ${p}\n`);
    return EX_CONFIG;
  }
  const backends = config.backends.map((b) => `${b.id} (${b.plugin})`).join(', ');
  process.stdout.write(`vmdevd: ${config.source}: valid; backends: ${backends}\n`);
  return 0;
}

export async function main(argv: readonly string[]): Promise<number> {
  disableProtoAccessor();
  let config;
  let configFile: string | undefined;
  let overrides: ConfigOverrides;
  try {
    const args = parseDaemonArgs(argv);
    if (args.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    if (args.version) {
      process.stdout.write(`vmdevd ${VERSION}\n`);
      return 0;
    }
    configFile = args.config;
    overrides = { bus: args.bus };
    config = loadConfig(configFile, overrides);
    if (args.checkConfig) return await checkConfig(config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`vmdevd: ${err.message}\n`);
      return EX_CONFIG;
    }
    throw err;
  }

  const logger = new RootLogger(config.logLevel);
  const log = logger.child('vmdevd');
  const daemon = new Daemon(config, logger, {}, { file: configFile, overrides });

  // A plugin's stray exception must not take the daemon down: log it and
  // mark the backend it came from.
  process.on('uncaughtException', (err) => {
    const blamed = daemon.registry.attributeCrash(err);
    log.error(blamed ? 'a plugin threw an uncaught exception' : 'uncaught exception', {
      error: errorMessage(err),
      stack: err.stack,
    });
  });
  process.on('unhandledRejection', (err) => {
    const blamed = daemon.registry.attributeCrash(err);
    log.error(blamed ? 'a plugin left a promise rejection unhandled' : 'unhandled promise rejection', {
      error: errorMessage(err),
      stack: (err as Error | undefined)?.stack,
    });
  });

  const exit = new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      void daemon.stop(`received ${signal}`).then(() => resolve(0));
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    // SIGHUP (systemctl reload): read the config again; a bad file is refused and logged.
    process.on('SIGHUP', () => void daemon.reload());
    daemon.onBusLost((err) => {
      void daemon.stop(`bus connection lost: ${err.message}`).then(() => resolve(EX_UNAVAILABLE));
    });
  });

  log.info('starting', {
    version: VERSION,
    pid: process.pid,
    bus: config.bus,
    config: configFile ?? 'built-in default',
  });
  try {
    await daemon.start();
  } catch (err) {
    const code = err instanceof ConfigError ? EX_CONFIG : EX_UNAVAILABLE;
    // A config error is one line on stderr (the journal under systemd), naming the file.
    if (err instanceof ConfigError) process.stderr.write(`vmdevd: ${err.message}\n`);
    else log.error('start failed', { error: errorMessage(err) });
    await daemon.stop('start failed');
    await logger.drain();
    return code;
  }
  const code = await exit;
  // The log is written off the main thread: what is in flight is let finish.
  await logger.drain();
  return code;
}
