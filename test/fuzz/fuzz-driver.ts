/**
 * Drives the fuzz calls against the daemon and keeps count of what came
 * back: shared by the fuzz test (test/fuzz/bus-fuzz.test.ts), which checks
 * the answers, and the memory benchmark (bench/fuzz-memory.ts), which runs
 * the same phases and measures the daemon's resident size.
 */
import type { StackOptions } from '../harness/stack.js';
import { HUGE_KINDS, MAX_HUGE_BYTES, generate, hugeCall, type FuzzCall } from './fuzz-calls.js';
import { NO_REPLY_EXPECTED, type RawClient, type Reply } from './raw-client.js';
import type { Random } from './random-dbus.js';

/** The stack the fuzzer runs against: the daemon with the node options of the unit, logging at info. */
export const FUZZ_STACK: StackOptions = { config: { logLevel: 'info', detachTimeoutSeconds: 1 } };
/** Calls kept outstanding at once. */
export const IN_FLIGHT = 16;
/** Only a guard against a hang: a reply that does not come at all. */
export const REPLY_TIMEOUT_MS = 60_000;

function showBody(body: unknown[]): string {
  const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

/** What a stack trace in an error text looks like. */
export const STACK_TRACE = /\n\s*at |\bat .*\.(js|ts):\d+|\.js:\d+:\d+/;

/** What the calls of a phase got back, and every answer that broke the contract. */
export class Tally {
  calls = 0;
  returns = 0;
  errors = new Map<string, number>();
  noReplyExpected = 0;
  readonly failures: string[] = [];
  readonly byCategory = new Map<string, number>();
  /** label → what the calls that used it got back. */
  readonly labelOutcomes = new Map<string, string[]>();

  record(call: FuzzCall, reply: Reply): void {
    this.calls++;
    this.byCategory.set(call.category, (this.byCategory.get(call.category) ?? 0) + 1);
    const what = `call ${call.id} (${call.category}: ${call.interface ?? '(no interface)'}.${call.member}(${call.signature}) on ${call.path}, ${showBody(call.body)})`;
    let outcome: string;
    if (reply.kind === 'return') {
      this.returns++;
      outcome =
        call.member === 'TestMethod' || call.member === 'AttachDevices' ? `return ${String(reply.body[0])}` : 'return';
      if (call.expect === 'error')
        this.failures.push(
          `${what}: expected an error${call.errors ? ` (${call.errors.join(' or ')})` : ''}, got a reply`,
        );
      if (call.accepted !== undefined && reply.body[0] !== call.accepted)
        this.failures.push(`${what}: expected ${String(call.accepted)}, got ${String(reply.body[0])}`);
    } else if (reply.kind === 'error') {
      this.errors.set(reply.name, (this.errors.get(reply.name) ?? 0) + 1);
      outcome = `error ${reply.name}`;
      if (call.expect === 'return') this.failures.push(`${what}: expected a reply, got ${reply.name}: ${reply.text}`);
      else if (call.errors !== undefined && !call.errors.includes(reply.name))
        this.failures.push(`${what}: expected ${call.errors.join(' or ')}, got ${reply.name}: ${reply.text}`);
      if (STACK_TRACE.test(reply.text))
        this.failures.push(`${what}: a stack trace in ${reply.name}: ${reply.text.slice(0, 500)}`);
      if (reply.name.startsWith('com.github.dbus_next.'))
        this.failures.push(`${what}: dbus-next answered instead of vmdevd: ${reply.name}: ${reply.text.slice(0, 300)}`);
      if (reply.name === 'org.example.dbustest.Error.Failed')
        this.failures.push(`${what}: Failed, the daemon did not expect this: ${reply.text.slice(0, 300)}`);
    } else {
      outcome = reply.kind;
      this.failures.push(`${what}: no reply (${reply.kind})`);
    }
    for (const label of call.labels ?? []) {
      const list = this.labelOutcomes.get(label) ?? [];
      list.push(call.invalid ? `${outcome} (invalid request)` : outcome);
      this.labelOutcomes.set(label, list);
    }
  }

  recordNoReply(call: FuzzCall): void {
    this.noReplyExpected++;
    this.byCategory.set(call.category, (this.byCategory.get(call.category) ?? 0) + 1);
    for (const label of call.labels ?? []) {
      const list = this.labelOutcomes.get(label) ?? [];
      list.push(call.invalid ? 'no reply expected (invalid request)' : 'no reply expected');
      this.labelOutcomes.set(label, list);
    }
  }

  summary(title: string): string {
    const errors = [...this.errors].sort((a, b) => b[1] - a[1]).map(([n, c]) => `    ${n}: ${c}`);
    const categories = [...this.byCategory].sort().map(([n, c]) => `    ${n}: ${c}`);
    return [
      `${title}: ${this.calls} calls answered (${this.returns} replies, ${this.calls - this.returns} errors), ${this.noReplyExpected} sent with NO_REPLY_EXPECTED, ${this.failures.length} failures`,
      '  errors by name:',
      ...errors,
      '  calls by kind:',
      ...categories,
    ].join('\n');
  }
}

export class FuzzDriver {
  /**
   * @param seed printed in errors, to repeat a run
   * @param diagnose what to add to an error that ends the run (the bus's log, say)
   */
  constructor(
    private readonly client: RawClient,
    private readonly r: Random,
    private readonly seed: number,
    private readonly diagnose: () => string = () => '',
  ) {}

  /** One call of each huge kind, at the largest size the fuzzer sends. */
  async sendLargest(tally: Tally): Promise<void> {
    for (const [i, kind] of HUGE_KINDS.entries()) {
      const call = hugeCall(this.r, -1 - i, kind, MAX_HUGE_BYTES);
      tally.record(call, await this.client.call(call, REPLY_TIMEOUT_MS));
    }
  }

  /** Sends `count` generated calls (ids from `firstId`) with `IN_FLIGHT` outstanding; every answer goes to `tally`. */
  async run(firstId: number, count: number, tally: Tally): Promise<void> {
    let next = 0;
    let stop = false;
    const worker = async () => {
      while (!stop && next < count) {
        const call = generate(this.r, firstId + next++);
        if (((call.flags ?? 0) & NO_REPLY_EXPECTED) !== 0) {
          this.client.send(call);
          tally.recordNoReply(call);
          continue;
        }
        let reply: Reply;
        try {
          reply = await this.client.call(call, REPLY_TIMEOUT_MS);
        } catch (err) {
          stop = true;
          throw new Error(
            `call ${call.id} (${call.category}, ${call.member}(${call.signature})) could not be sent (seed ${this.seed}): ${(err as Error).message}`,
            { cause: err },
          );
        }
        if (reply.kind === 'closed') {
          stop = true;
          throw new Error(
            `the bus closed the fuzzer's connection after call ${call.id} (${call.category}, ${call.member}(${call.signature})): ${this.client.closed}. Seed ${this.seed}.\n${this.diagnose()}`,
          );
        }
        tally.record(call, reply);
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  }
}
