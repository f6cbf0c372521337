import type { Disposable } from './disposable.js';

/** Subscribe with a listener; dispose the result to unsubscribe. */
export type Event<T> = (listener: (value: T) => void) => Disposable;

/**
 * A minimal typed event source. Listeners run synchronously in order of
 * subscription; a listener that throws is reported to `onListenerError`
 * and does not stop the others.
 */
export class Emitter<T> implements Disposable {
  private listeners: Array<(value: T) => void> = [];

  constructor(
    private readonly onListenerError: (err: unknown) => void = (err) =>
      queueMicrotask(() => {
        throw err;
      }),
  ) {}

  readonly event: Event<T> = (listener) => {
    this.listeners.push(listener);
    return {
      dispose: () => {
        this.listeners = this.listeners.filter((l) => l !== listener);
      },
    };
  };

  fire(value: T): void {
    for (const listener of this.listeners) {
      try {
        listener(value);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }

  dispose(): void {
    this.listeners = [];
  }
}
