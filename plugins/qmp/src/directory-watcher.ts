/**
 * Watches directories (inotify, through `fs.watch`) and reports the names
 * that change in them: the socket directory, and the directories of the
 * configured sockets, whose files QEMU replaces when it starts again.
 */
import { watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';

export interface DirectoryChange {
  readonly dir: string;
  /** The changed entry's path, or undefined when the system did not say which. */
  readonly path: string | undefined;
}

export class DirectoryWatcher {
  private readonly watchers = new Map<string, FSWatcher>();
  private closed = false;

  constructor(
    private readonly onChange: (change: DirectoryChange) => void,
    /** A watched directory can no longer be watched (removed, or an error): it is no longer in the set. */
    private readonly onLost: (dir: string, err: Error) => void,
  ) {}

  /** Starts watching `dir` (once). Throws what `fs.watch` throws (ENOENT, EACCES). */
  add(dir: string): void {
    if (this.closed || this.watchers.has(dir)) return;
    const watcher = watch(dir, { persistent: false }, (_event, filename) => {
      this.onChange({ dir, path: filename === null ? undefined : join(dir, filename.toString()) });
    });
    watcher.on('error', (err) => {
      this.drop(dir);
      this.onLost(dir, err);
    });
    this.watchers.set(dir, watcher);
  }

  has(dir: string): boolean {
    return this.watchers.has(dir);
  }

  drop(dir: string): void {
    this.watchers.get(dir)?.close();
    this.watchers.delete(dir);
  }

  close(): void {
    this.closed = true;
    for (const dir of [...this.watchers.keys()]) this.drop(dir);
  }
}
