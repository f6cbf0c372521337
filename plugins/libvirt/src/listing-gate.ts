/**
 * Orders the two halves of connecting the backends of one daemon. Each
 * backend first lists its domains' names and states (a few calls), then
 * reads their types (a call per domain). With many backends starting at
 * once, on hosts that share the daemon's CPUs or libvirtd's, one backend's
 * type reads would slow the others' listings, and with them the first
 * complete map. So type reads wait until no backend is listing, or for at
 * most `maxWaitMs` (a libvirtd that takes long to answer, such as a remote
 * host that is down, holds nobody's types for longer than that).
 */
export class ListingGate {
  private listing = 0;
  private waiters: Array<() => void> = [];

  constructor(private readonly maxWaitMs: number) {}

  /** Marks a listing begun; the returned function marks it ended (calls after the first do nothing). */
  begin(): () => void {
    this.listing++;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      if (--this.listing > 0) return;
      const waiters = this.waiters;
      this.waiters = [];
      for (const wake of waiters) wake();
    };
  }

  /** Resolves when no listing is under way, or after `maxWaitMs`. */
  idle(): Promise<void> {
    if (this.listing === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(wake, this.maxWaitMs);
      function wake(): void {
        clearTimeout(timer);
        resolve();
      }
      this.waiters.push(wake);
    });
  }
}
