import type { DomainEvent } from '../src/binding.js';

/** Collects a connection's events and lets a test wait for one. */
export class EventRecorder {
  readonly events: DomainEvent[] = [];
  readonly closeReasons: number[] = [];
  #waiters: Array<{ match: (event: DomainEvent) => boolean; resolve: (event: DomainEvent) => void }> = [];
  #closeWaiters: Array<(reason: number) => void> = [];

  /** Pass as `onEvent`. */
  readonly onEvent = (event: DomainEvent): void => {
    this.events.push(event);
    this.#waiters = this.#waiters.filter((waiter) => {
      if (!waiter.match(event)) return true;
      waiter.resolve(event);
      return false;
    });
  };

  /** Pass as `onClose`. */
  readonly onClose = (reason: number): void => {
    this.closeReasons.push(reason);
    for (const resolve of this.#closeWaiters.splice(0)) resolve(reason);
  };

  /** The first event (already received or still to come) that matches; `timeoutMs` only guards against a hang. */
  waitFor(what: string, match: (event: DomainEvent) => boolean, timeoutMs = 30_000): Promise<DomainEvent> {
    const seen = this.events.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return withTimeout(
      new Promise((resolve) => this.#waiters.push({ match, resolve })),
      timeoutMs,
      () => `no ${what} event within ${timeoutMs} ms; received: ${JSON.stringify(this.events)}`,
    );
  }

  waitForClose(timeoutMs = 30_000): Promise<number> {
    const seen = this.closeReasons[0];
    if (seen !== undefined) return Promise.resolve(seen);
    return withTimeout(
      new Promise((resolve) => this.#closeWaiters.push(resolve)),
      timeoutMs,
      () => `the close callback did not run within ${timeoutMs} ms`,
    );
  }
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, message: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message())), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
