/**
 * Provides the daemon's plugin API to the plugins it loads (see
 * plugin-api-hooks.ts), called with each plugin's entry file before it is
 * imported.
 *
 * A plugin whose `vmdevd/plugin-api` already resolves to the daemon's own
 * file (a plugin in this package's tree, or one beside a `node_modules/vmdevd`
 * that is this package) needs nothing. Any other plugin gets the resolution
 * hooks, registered once: they run on a loader thread of their own, whose
 * start costs about a tenth of a second, and every later import goes
 * through it, so they are registered only when a plugin needs them.
 */
import { realpathSync } from 'node:fs';
import { createRequire, register } from 'node:module';
import { fileURLToPath } from 'node:url';

let registered = false;
let ours: string | undefined;

export function providePluginApi(entry: string): void {
  if (registered) return;
  // The package resolves its own name: from the bundle and from dist/src
  // alike this is the bundled plugin API, the one the daemon runs with.
  const pluginApiUrl = import.meta.resolve('vmdevd/plugin-api');
  ours ??= realpath(fileURLToPath(pluginApiUrl));
  if (ours !== undefined && theirs(entry) === ours) return;
  registered = true;
  register(new URL('./plugin-api-hooks.js', import.meta.url), { data: { pluginApiUrl } });
}

/** The file the plugin's own `vmdevd/plugin-api` resolves to (its exports have one target for every condition). */
function theirs(entry: string): string | undefined {
  try {
    return realpath(createRequire(entry).resolve('vmdevd/plugin-api'));
  } catch {
    return undefined; // not resolvable from there: the hooks provide it
  }
}

function realpath(path: string): string | undefined {
  try {
    return realpathSync(path);
  } catch {
    return undefined;
  }
}
