/**
 * Gives memory back after a burst. V8 collects large objects (a call of a
 * few megabytes decodes into strings that size) only in a full collection,
 * which an idle daemon never reaches: the memory a burst used would stay
 * taken for good. So once the daemon has been busy and then idle for
 * `IDLE_BEFORE_COLLECTING_MS`, and its resident size (what the operator
 * sees) is a good margin above the lowest it has been while idle, it runs
 * one full collection: the only one that gives memory back, as V8's own
 * memory reducer is off (bin/vmdevd). V8 hands the freed pages back to the
 * system some seconds later, so the size right after the collection is not
 * a new low: the low is only ever taken from idle samples. One collection per busy period at most: a daemon whose working
 * set grew for good is not collected again and again.
 *
 * Why it waits that long: a full collection while nothing is in flight
 * also frees the shapes (maps) of the requests' objects, and V8 throws
 * away the optimized code built on them ("weak objects": some forty
 * functions of the call path). The next burst runs that path unoptimized
 * until V8 has compiled it again, about a thousand calls. Collecting two
 * seconds into every pause made each burst of a workload that pauses
 * start that way (`TestMethod` p99 over such bursts, in `bench/README.md`);
 * a pause of half a minute is the end of a burst, not a gap inside one.
 *
 * Needs node's --expose-gc (on the first line of bin/vmdevd); without it,
 * it does nothing.
 */
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import type { Disposable } from '../core/disposable.js';
import type { Logger } from '../plugin-api.js';

export const CHECK_EVERY_MS = 2000;
/** How long the daemon must have been idle before a collection. */
export const IDLE_BEFORE_COLLECTING_MS = 30_000;
/** Busy above this share of the event loop's time since the last check (40 ms of work in 2 s). */
export const IDLE_UTILIZATION = 0.02;
/** How far above its idle low the resident size must be for a collection. */
export const GROWTH_BYTES = 4 * 1024 * 1024;

/** What the reclaimer reads of the process at each check. */
export interface ProcessProbe {
  /** The resident size in bytes: what the operator sees. */
  rss(): number;
  /** The share of the time since the last call that the event loop was busy (0 to 1). */
  utilization(): number;
  /** The heap's used bytes, for the log line. */
  heapUsed(): number;
}

/** The probe of this process. */
export function processProbe(): ProcessProbe {
  let last: EventLoopUtilization = performance.eventLoopUtilization();
  return {
    rss: () => process.memoryUsage.rss(),
    utilization: () => {
      const since = performance.eventLoopUtilization(last);
      last = performance.eventLoopUtilization();
      return since.utilization;
    },
    heapUsed: () => process.memoryUsage().heapUsed,
  };
}

const mib = (bytes: number) => (bytes / 1048576).toFixed(1);

export class MemoryReclaimer implements Disposable {
  readonly name = 'memory reclaimer';
  private timer: NodeJS.Timeout | undefined;
  /** The lowest resident size seen while idle. */
  private low: number;
  /** Busy since the last collection (or the decision not to collect): start-up counts as busy. */
  private busy = true;
  /** Checks in a row that found the event loop idle. */
  private idleChecks = 0;
  /** Full collections run, for tests and logs. */
  collections = 0;

  constructor(
    private readonly log: Logger,
    private readonly gc: (() => void) | undefined = (globalThis as { gc?: () => void }).gc,
    private readonly probe: ProcessProbe = processProbe(),
  ) {
    this.low = probe.rss();
  }

  /** Starts watching (nothing without --expose-gc). */
  start(): void {
    if (this.gc === undefined || this.timer !== undefined) return;
    this.low = this.probe.rss();
    this.probe.utilization();
    this.timer = setInterval(() => this.check(), CHECK_EVERY_MS).unref();
  }

  stop(): void {
    this.dispose();
  }

  /** One look at the process: what the timer runs every `CHECK_EVERY_MS`. */
  check(): void {
    if (this.probe.utilization() > IDLE_UTILIZATION) {
      this.busy = true;
      this.idleChecks = 0;
      return;
    }
    this.idleChecks++;
    const rss = this.probe.rss();
    if (this.busy && this.idleChecks * CHECK_EVERY_MS >= IDLE_BEFORE_COLLECTING_MS) {
      this.busy = false;
      if (rss - this.low >= GROWTH_BYTES) this.collect(rss);
    }
    this.low = Math.min(this.low, rss);
  }

  private collect(rss: number): void {
    const heap = this.probe.heapUsed();
    // No options: node 20's gc({ type: 'major' }) runs a scavenge.
    this.gc!();
    this.collections++;
    this.log.debug('collected garbage after a burst', {
      rssMiB: mib(rss),
      lowMiB: mib(this.low),
      heapUsedMiB: `${mib(heap)}->${mib(this.probe.heapUsed())}`,
    });
  }

  dispose(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
