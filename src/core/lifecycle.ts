/**
 * Start and stop in one place. The composition root declares the daemon's
 * stages once, in start order; `start()` runs them in that order (the
 * services of one stage side by side) and `stop()` runs the stops of the
 * stages that started, in reverse. A stop that fails or hangs is logged and
 * the next one runs anyway: shutdown always reaches its end.
 */
import type { Logger } from '../plugin-api.js';
import { errorMessage } from './errors.js';

/** One thing the daemon starts and stops. */
export interface LifecycleService {
  /** For logs: what it is. */
  readonly name: string;
  start?(): Promise<void> | void;
  /** Undoes `start`. Called once, only after `start` was called (even if it failed). */
  stop?(reason: string): Promise<void> | void;
}

/** Services started together; the next stage starts once all of them have. */
export type LifecycleStage = readonly LifecycleService[];

export const LifecycleStages = Symbol('LifecycleStages');

/** How long one stop may take before the next one runs. */
const STOP_TIMEOUT_MS = 10_000;

export class Lifecycle {
  private started: LifecycleService[] = [];
  private stopping: Promise<void> | undefined;

  constructor(
    private readonly stages: readonly LifecycleStage[],
    private readonly log: Logger,
  ) {}

  /** Starts every stage in order. Throws the first failure; what started is stopped by `stop()`. */
  async start(): Promise<void> {
    for (const stage of this.stages) {
      if (this.stopping !== undefined) return;
      this.started.push(...stage);
      await Promise.all(stage.map((s) => Promise.resolve(s.start?.())));
    }
  }

  /** Stops what started, in reverse order. Safe to call more than once. */
  stop(reason: string): Promise<void> {
    this.stopping ??= this.stopAll(reason);
    return this.stopping;
  }

  private async stopAll(reason: string): Promise<void> {
    for (const service of [...this.started].reverse()) {
      if (service.stop === undefined) continue;
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          Promise.resolve(service.stop(reason)),
          new Promise<void>((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`did not stop within ${STOP_TIMEOUT_MS / 1000} s`)),
              STOP_TIMEOUT_MS,
            );
          }),
        ]);
      } catch (err) {
        this.log.warn('stopping failed; going on with the rest', { service: service.name, error: errorMessage(err) });
      } finally {
        clearTimeout(timer);
      }
    }
    this.started = [];
  }
}
