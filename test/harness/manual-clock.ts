/**
 * A clock for unit tests of the core: time moves only when the test says,
 * so timeouts are tested exactly, without sleeping.
 */
import type { Clock, Timer } from '../../src/core/clock.js';

interface Scheduled {
  at: number;
  readonly every: number | undefined;
  readonly fn: () => void;
  cancelled: boolean;
  readonly seq: number;
}

export class ManualClock implements Clock {
  private time = 0;
  private seq = 0;
  private scheduled: Scheduled[] = [];

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    return this.add(fn, ms, undefined);
  }

  setInterval(fn: () => void, ms: number): Timer {
    return this.add(fn, ms, Math.max(1, ms));
  }

  /** Timers not yet run or cancelled. */
  get pending(): number {
    return this.scheduled.filter((s) => !s.cancelled).length;
  }

  /**
   * Moves time forward by `ms`, running every timer that falls due, in
   * order of time, with microtasks (promise callbacks) drained after each
   * one, as Node's event loop would.
   */
  async advance(ms: number): Promise<void> {
    const end = this.time + ms;
    await drainMicrotasks();
    for (;;) {
      const next = this.scheduled
        .filter((s) => !s.cancelled && s.at <= end)
        .sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (next === undefined) break;
      this.time = next.at;
      if (next.every === undefined) next.cancelled = true;
      else next.at += next.every;
      next.fn();
      await drainMicrotasks();
      this.scheduled = this.scheduled.filter((s) => !s.cancelled);
    }
    this.time = end;
    await drainMicrotasks();
  }

  private add(fn: () => void, ms: number, every: number | undefined): Timer {
    const s: Scheduled = { at: this.time + Math.max(0, ms), every, fn, cancelled: false, seq: this.seq++ };
    this.scheduled.push(s);
    return {
      cancel: () => {
        s.cancelled = true;
      },
    };
  }
}

/** Lets every pending promise callback run (a few rounds, for chains). */
export async function drainMicrotasks(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
  await new Promise<void>((resolve) => setImmediate(resolve));
}
