/**
 * Provides the daemon's plugin API to the plugins it loads (see
 * plugin-api-hooks.ts). Called once, before the first plugin is imported.
 */
import { register } from 'node:module';

let registered = false;

export function providePluginApi(): void {
  if (registered) return;
  registered = true;
  // The package resolves its own name: from the bundle and from dist/src
  // alike this is the bundled plugin API, the one the daemon runs with.
  const pluginApiUrl = import.meta.resolve('vmdevd/plugin-api');
  register(new URL('./plugin-api-hooks.js', import.meta.url), { data: { pluginApiUrl } });
}
