/**
 * Where vmdevd's own files are. Found from this module's location by looking
 * for vmdevd's package.json, so it holds whether the code runs as compiled
 * modules (dist/src/…) or from the bundle (dist/bundle/…).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findPackageRoot(from: string): string {
  let dir = dirname(from);
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'vmdevd')
      return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find vmdevd's package.json above ${from}`);
    dir = parent;
  }
}

/** The directory of vmdevd's package.json. */
export const PACKAGE_ROOT = findPackageRoot(fileURLToPath(import.meta.url));

/** vmdevd's version, from its package.json. */
export const VERSION = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string })
  .version;
