/**
 * Gives memory back after a burst. V8 collects large objects (a call of a
 * few megabytes decodes into strings that size) only in a full collection,
 * which an idle daemon never reaches: the memory a burst used would stay
 * taken for good. So once the daemon has been busy and is idle again, and
 * its resident size (what the operator sees) is a good margin above the
 * lowest it has been while idle, it runs one full collection. V8 hands the
 * freed pages back to the system a few seconds later (its memory reducer),
 * so the size right after the collection is not a new low: the low is only
 * ever taken from idle samples. One collection per busy period at most: a
 * daemon whose working set grew for good is not collected again and again.
 * Needs node's --expose-gc (on the first line of bin/vmdevd); without it,
 * it does nothing.
 */
import { performance } from 'node:perf_hooks';
import type { Disposable } from '../core/disposable.js';
import type { Logger } from '../plugin-api.js';

const CHECK_EVERY_MS = 2000;
/** Busy below this share of the event loop's time is idle (40 ms of work in 2 s). */
const IDLE_UTILIZATION = 0.02;
const GROWTH_BYTES = 4 * 1024 * 1024;

/** The resident memory of the process: what the operator sees. */
function footprint(): number {
  return process.memoryUsage.rss();
}

const mib = (bytes: number) => (bytes / 1048576).toFixed(1);

export class MemoryReclaimer implements Disposable {
  readonly name = 'memory reclaimer';
  private timer: NodeJS.Timeout | undefined;
  /** The lowest resident size seen while idle. */
  private low = footprint();
  /** Busy since the last collection: start-up counts as busy. */
  private busy = true;
  private lastElu = performance.eventLoopUtilization();
  /** Full collections run, for tests and logs. */
  collections = 0;

  constructor(
    private readonly log: Logger,
    private readonly gc: (() => void) | undefined = (globalThis as { gc?: () => void }).gc,
  ) {}

  /** Starts watching (nothing without --expose-gc). */
  start(): void {
    if (this.gc === undefined || this.timer !== undefined) return;
    this.low = footprint();
    this.timer = setInterval(() => this.check(), CHECK_EVERY_MS).unref();
  }

  stop(): void {
    this.dispose();
  }

  private check(): void {
    const elu = performance.eventLoopUtilization(this.lastElu);
    this.lastElu = performance.eventLoopUtilization();
    if (elu.utilization > IDLE_UTILIZATION) {
      this.busy = true;
      return;
    }
    const rss = footprint();
    if (this.busy && rss - this.low >= GROWTH_BYTES) {
      const heap = process.memoryUsage().heapUsed;
      // No options: node 20's gc({ type: 'major' }) runs a scavenge.
      this.gc!();
      this.collections++;
      this.log.debug('collected garbage after a burst', {
        rssMiB: mib(rss),
        lowMiB: mib(this.low),
        heapUsedMiB: `${mib(heap)}->${mib(process.memoryUsage().heapUsed)}`,
      });
    }
    this.busy = false;
    this.low = Math.min(this.low, rss);
  }

  dispose(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
