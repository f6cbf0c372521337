/**
 * Finds, imports and checks plugins. The in-repo plugins are found by name
 * under `plugins/`; any other plugin is a package name or a path, resolved
 * the same way, so both kinds go through exactly this code.
 */
import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Container } from 'inversify';
import { BackendFactory, OLDEST_PLUGIN_API_VERSION, PLUGIN_API_VERSION, type VmdevdPlugin } from '../plugin-api.js';
import { PACKAGE_ROOT } from '../paths.js';
import { errorMessage } from './errors.js';

/** Where the in-repo plugins live: `<package root>/plugins`. */
export const BUILTIN_PLUGIN_DIR = join(PACKAGE_ROOT, 'plugins');
const VMDEVD_ROOT = PACKAGE_ROOT;

export class PluginLoadError extends Error {
  override readonly name = 'PluginLoadError';
}

export interface LoadedPlugin {
  readonly spec: string;
  readonly name: string;
  /** The plugin's package directory (real path), used to tell which plugin an uncaught error came from. */
  readonly root: string;
  readonly factory: BackendFactory;
  /** The plugin-API version the plugin was built for (from the oldest supported to this daemon's). */
  readonly apiVersion: number;
}

function packageRoot(file: string): string {
  let dir = dirname(file);
  while (dir !== dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return dirname(file);
}

/** Resolves a plugin spec to the file to import. */
export function resolvePlugin(spec: string, baseDir: string, builtinDir = BUILTIN_PLUGIN_DIR): string {
  const isPath =
    spec.startsWith('/') || spec.startsWith('./') || spec.startsWith('../') || spec === '.' || spec === '..';
  if (isPath) {
    const target = resolve(baseDir, spec);
    if (!existsSync(target)) throw new PluginLoadError(`plugin path ${target} does not exist`);
    if (statSync(target).isDirectory()) {
      try {
        return createRequire(join(target, 'noop.js')).resolve(target);
      } catch (err) {
        throw new PluginLoadError(
          `plugin directory ${target} has no entry point (set "main" in its package.json): ${errorMessage(err)}`,
        );
      }
    }
    return target;
  }
  if (/^[a-z0-9][a-z0-9_-]*$/.test(spec)) {
    const dir = join(builtinDir, spec);
    if (existsSync(join(dir, 'package.json'))) {
      const main = createRequire(join(dir, 'noop.js')).resolve(dir);
      return main;
    }
  }
  const attempts = [join(baseDir, 'noop.js'), fileURLToPath(import.meta.url)];
  for (const from of attempts) {
    try {
      return createRequire(from).resolve(spec);
    } catch {
      // try the next place
    }
  }
  try {
    return fileURLToPath(import.meta.resolve(spec));
  } catch {
    // reported below
  }
  const builtin = /^[a-z0-9][a-z0-9_-]*$/.test(spec) ? `${join(builtinDir, spec)} does not exist and ` : '';
  throw new PluginLoadError(
    `plugin "${spec}" is not installed: ${builtin}no package "${spec}" was found from ${baseDir} or from vmdevd`,
  );
}

/**
 * The plugin-API version a plugin was built for: its own `apiVersion` (a
 * number it writes down, not the daemon's constant it could import), else
 * `vmdevd.apiVersion` in its package.json.
 */
function declaredApiVersion(plugin: Partial<VmdevdPlugin>, entry: string): unknown {
  if (plugin.apiVersion !== undefined) return plugin.apiVersion;
  const root = packageRoot(entry);
  if (root === VMDEVD_ROOT) return undefined;
  try {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { vmdevd?: { apiVersion?: unknown } };
    return pkg.vmdevd?.apiVersion;
  } catch {
    return undefined;
  }
}

function checkPlugin(exported: unknown, spec: string, entry: string): { plugin: VmdevdPlugin; apiVersion: number } {
  if (typeof exported !== 'object' || exported === null) {
    throw new PluginLoadError(
      `plugin "${spec}" exports no plugin (expected a default export or an export named "plugin")`,
    );
  }
  const plugin = exported as Partial<VmdevdPlugin>;
  const apiVersion = declaredApiVersion(plugin, entry);
  if (typeof apiVersion !== 'number' || !Number.isInteger(apiVersion)) {
    throw new PluginLoadError(
      `plugin "${spec}" does not declare the plugin-API version it targets (apiVersion in the plugin, or "vmdevd": { "apiVersion": N } in its package.json)`,
    );
  }
  // The host-version range: every version adds only optional members, so an
  // older plugin fits; a newer one may rely on what this daemon lacks.
  if (apiVersion > PLUGIN_API_VERSION) {
    throw new PluginLoadError(
      `plugin "${spec}" targets plugin API ${apiVersion}; this vmdevd implements plugin API ${PLUGIN_API_VERSION}`,
    );
  }
  if (apiVersion < OLDEST_PLUGIN_API_VERSION) {
    throw new PluginLoadError(
      `plugin "${spec}" targets plugin API ${apiVersion}; this vmdevd loads plugin API ${OLDEST_PLUGIN_API_VERSION} to ${PLUGIN_API_VERSION}`,
    );
  }
  if (
    typeof plugin.module !== 'object' ||
    plugin.module === null ||
    typeof (plugin.module as { load?: unknown }).load !== 'function'
  ) {
    throw new PluginLoadError(`plugin "${spec}" has no ContainerModule ("module")`);
  }
  return { plugin: plugin as VmdevdPlugin, apiVersion };
}

/**
 * Called with a plugin's entry file before it is imported: the daemon makes
 * sure that the plugin's `vmdevd/plugin-api` is the daemon's own.
 */
export type BeforePluginImport = (entry: string) => void;
/** The injection token of the daemon's {@link BeforePluginImport} (optional: without it, nothing is done). */
export const BeforePluginImport = Symbol('BeforePluginImport');

/**
 * Imports a plugin, checks its API version, loads its module into a
 * container of its own and returns the backend factory it binds. The
 * container holds nothing of the core: what a plugin gets from vmdevd is
 * the plugin API, and the BackendContext each backend is created with.
 */
export async function loadPlugin(
  spec: string,
  baseDir: string,
  builtinDir = BUILTIN_PLUGIN_DIR,
  beforeImport: BeforePluginImport = () => {},
): Promise<LoadedPlugin> {
  const entry = resolvePlugin(spec, baseDir, builtinDir);
  let mod: Record<string, unknown>;
  try {
    beforeImport(entry);
    mod = (await import(pathToFileURL(entry).href)) as Record<string, unknown>;
  } catch (err) {
    throw new PluginLoadError(`plugin "${spec}" failed to load from ${entry}: ${errorMessage(err)}`);
  }
  const { plugin, apiVersion } = checkPlugin(mod['default'] ?? mod['plugin'], spec, entry);
  const container = new Container();
  let factory: BackendFactory;
  try {
    await container.loadAsync(plugin.module);
    factory = container.get<BackendFactory>(BackendFactory);
  } catch (err) {
    throw new PluginLoadError(`plugin "${spec}" failed to set up its container: ${errorMessage(err)}`);
  }
  if (typeof factory?.create !== 'function') {
    throw new PluginLoadError(`plugin "${spec}" binds no BackendFactory with a create() method`);
  }
  // A plugin inside vmdevd's own package (a test fixture) is known by its directory.
  let root = packageRoot(entry);
  if (root === VMDEVD_ROOT) root = dirname(entry);
  try {
    root = realpathSync(root);
  } catch {
    // keep the unresolved path
  }
  return {
    spec,
    name: typeof plugin.name === 'string' ? plugin.name : spec,
    root,
    factory,
    apiVersion,
  };
}

/** Reads a package's version, for logs. */
export function packageVersion(root: string): string | undefined {
  try {
    return (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version?: string }).version;
  } catch {
    return undefined;
  }
}
