#!/usr/bin/env node
// Runs the compiled tests: every *.test.js under dist/test and plugins/*/dist/test.
// Arguments filter the files by substring (e.g. `npm test -- unit/`).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const roots = [join(root, 'dist/test')];
const pluginDir = join(root, 'plugins');
for (const plugin of existsSync(pluginDir) ? readdirSync(pluginDir, { withFileTypes: true }) : []) {
  if (plugin.isDirectory()) roots.push(join(pluginDir, plugin.name, 'dist/test'));
}

function walk(dir, out) {
  let entries;
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of entries.sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path, out);
    else if (name.endsWith('.test.js')) out.push(path);
  }
  return out;
}

const filters = process.argv.slice(2);
const files = roots
  .flatMap((r) => walk(r, []))
  .filter((f) => filters.length === 0 || filters.some((x) => relative(root, f).includes(x)));
if (files.length === 0) {
  console.error('no test files match');
  process.exit(1);
}
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files], {
  stdio: 'inherit',
});
process.exit(result.status ?? 1);
