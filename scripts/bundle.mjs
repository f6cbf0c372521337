#!/usr/bin/env node
// Bundles the compiled daemon, vmdevctl, the plugin API and the client (and
// each in-repo plugin) into a few ES modules. Loading inversify 8 alone
// from its ~370 separate modules takes ~100 ms; from a bundle, ~9 ms. The
// entries share chunks, so a plugin that imports vmdevd/plugin-api gets
// the very same inversify instance as the daemon.
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const common = {
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning',
  // CommonJS dependencies (dbus-next) call require() for Node's modules.
  banner: {
    js: "import { createRequire as __vmdevdCreateRequire } from 'node:module'; const require = __vmdevdCreateRequire(import.meta.url);",
  },
  // dbus-next's optional transports, which vmdevd does not use.
  external: ['x11', 'usocket'],
};

// Chunks are named by content: start from an empty directory, or old ones pile up.
rmSync(join(root, 'dist/bundle'), { recursive: true, force: true });
await build({
  ...common,
  entryPoints: {
    vmdevd: join(root, 'dist/src/daemon/main.js'),
    vmdevctl: join(root, 'dist/src/cli/vmdevctl.js'),
    'plugin-api': join(root, 'dist/src/plugin-api.js'),
    client: join(root, 'dist/src/client/index.js'),
    // Module hooks run on Node's loader thread, from a file of their own.
    'plugin-api-hooks': join(root, 'dist/src/daemon/plugin-api-hooks.js'),
  },
  splitting: true,
  outdir: join(root, 'dist/bundle'),
});

const plugins = join(root, 'plugins');
for (const name of existsSync(plugins) ? readdirSync(plugins) : []) {
  const entry = join(plugins, name, 'dist/src/index.js');
  if (!existsSync(entry)) continue;
  rmSync(join(plugins, name, 'dist/bundle'), { recursive: true, force: true });
  await build({
    ...common,
    entryPoints: { index: entry },
    // The host's plugin API, shared with the daemon.
    external: [...common.external, 'vmdevd', 'vmdevd/*'],
    outdir: join(plugins, name, 'dist/bundle'),
  });
}
