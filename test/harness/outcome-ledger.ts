/**
 * The books of a load test: which devices are owed an outcome signal and
 * which outcome signals arrived. A device is entered before its
 * `TestMethod` call is sent (a fast backend's outcome can reach the
 * observing connection before the reply reaches the calling one), and the
 * reply settles it: owed when the call was accepted, owed nothing when it
 * was not. Signals are counted as they arrive, not kept, so a run of tens
 * of thousands of calls costs little.
 */
import dbus from 'dbus-next';
import { BUS_NAME, INTERFACE, type CallError, type TestClient } from './bus-client.js';

/** One outcome signal, numbered in the order the observer received every signal. */
export interface Outcome {
  readonly result: string;
  /** The failure's message; empty for `detached`. */
  readonly message: string;
  readonly seq: number;
}

/** A signal other than an outcome (e.g. `NameOwnerChanged`), with its place in the order. */
export interface OtherSignal {
  readonly member: string;
  readonly body: unknown[];
  readonly seq: number;
}

interface Device {
  accepted: boolean | undefined;
  readonly outcomes: Outcome[];
}

export interface LedgerSummary {
  /** Devices of accepted calls. */
  readonly accepted: number;
  /** Of those, devices with exactly one outcome. */
  readonly exactlyOne: number;
  /** Devices of accepted calls without an outcome. */
  readonly missing: string[];
  /** Devices with more than one outcome. */
  readonly duplicated: string[];
  /** Devices whose call was refused, yet got an outcome. */
  readonly refusedWithOutcome: string[];
  /** Outcomes for a device no call asked for. */
  readonly strays: string[];
  /** Outcomes by result: `detached` or the error's last name part. */
  readonly results: Readonly<Record<string, number>>;
}

export class OutcomeLedger {
  private seq = 0;
  private readonly devices = new Map<string, Device>();
  private readonly strays: string[] = [];
  private readonly results: Record<string, number> = {};
  /** Calls sent and not answered, plus accepted devices without an outcome. */
  private open = 0;
  private readonly waiters = new Set<() => void>();
  readonly others: OtherSignal[] = [];

  private constructor() {}

  /**
   * Subscribes `client` to vmdevd's outcome signals (and to `extraRules`,
   * whose signals are kept in `others`) and counts them from now on.
   */
  static async attach(client: TestClient, extraRules: readonly string[] = []): Promise<OutcomeLedger> {
    const ledger = new OutcomeLedger();
    client.bus.on('message', (msg: dbus.Message) => {
      if (msg.type === dbus.MessageType.SIGNAL) ledger.received(msg);
    });
    for (const member of ['DeviceDetached', 'DeviceDetachFailed']) {
      await addMatch(client, `type='signal',sender='${BUS_NAME}',interface='${INTERFACE}',member='${member}'`);
    }
    for (const rule of extraRules) await addMatch(client, rule);
    return ledger;
  }

  /**
   * `TestMethod` with the books kept: resolves with the reply (true or
   * false) or the call's error.
   */
  async detach(client: TestClient, vm: string, devices: Record<string, string[]>): Promise<boolean | CallError> {
    const entries = Object.keys(devices).map((label) => {
      const key = deviceKey(vm, label);
      if (this.devices.has(key)) throw new Error(`label ${label} of ${vm} is used twice in this test`);
      const device: Device = { accepted: undefined, outcomes: [] };
      this.devices.set(key, device);
      this.open++;
      return device;
    });
    let reply: boolean | CallError;
    try {
      reply = await client.testMethod(vm, devices);
    } catch (err) {
      reply = err as CallError;
    }
    for (const device of entries) {
      device.accepted = reply === true;
      // Answered: settled now unless it is still owed its outcome.
      if (!device.accepted || device.outcomes.length > 0) this.open--;
    }
    this.wake();
    return reply;
  }

  /** Resolves once every call was answered and every accepted device has an outcome; rejects after `timeoutMs`. */
  settled(timeoutMs: number): Promise<void> {
    return this.until(() => this.open === 0, timeoutMs);
  }

  /**
   * Resolves once every call was answered and every accepted device of a
   * VM that `vms` does not name has an outcome (e.g. while one VM's device
   * is meant to stay pending).
   */
  settledExcept(vms: readonly string[], timeoutMs: number): Promise<void> {
    const skipped = vms.map((vm) => `${vm}\u0000`);
    return this.until(
      () =>
        [...this.devices].every(
          ([key, d]) =>
            d.accepted === false ||
            (d.accepted === true && (d.outcomes.length > 0 || skipped.some((p) => key.startsWith(p)))),
        ),
      timeoutMs,
    );
  }

  /**
   * The first of the other signals that `match` accepts, once it has come:
   * a signal that follows the last outcome (the name's release) can still
   * be on its way when the outcomes are all in. Rejects after `timeoutMs`.
   */
  async other(match: (s: OtherSignal) => boolean, timeoutMs: number): Promise<OtherSignal> {
    await this.until(() => this.others.some(match), timeoutMs);
    return this.others.find(match)!;
  }

  private until(condition: () => boolean, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!condition()) return;
        done();
        resolve();
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`after ${timeoutMs} ms still waiting: ${JSON.stringify(this.summary())}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** The outcomes of one device. */
  outcomesOf(vm: string, label: string): readonly Outcome[] {
    return this.devices.get(deviceKey(vm, label))?.outcomes ?? [];
  }

  /** The place in the order of every outcome received. */
  outcomeSeqs(): number[] {
    return [...this.devices.values()].flatMap((d) => d.outcomes.map((o) => o.seq));
  }

  /** The devices whose label starts with `prefix`: whether their call was accepted, and their outcomes. */
  devicesWithPrefix(
    prefix: string,
  ): Array<{ key: string; accepted: boolean | undefined; outcomes: readonly Outcome[] }> {
    return [...this.devices]
      .filter(([key]) => key.slice(key.indexOf('\u0000') + 1).startsWith(prefix))
      .map(([key, d]) => ({ key: key.replace('\u0000', '/'), accepted: d.accepted, outcomes: d.outcomes }));
  }

  summary(): LedgerSummary {
    const missing: string[] = [];
    const duplicated: string[] = [];
    const refusedWithOutcome: string[] = [];
    let accepted = 0;
    let exactlyOne = 0;
    for (const [key, device] of this.devices) {
      const shown = key.replace('\u0000', '/');
      if (device.outcomes.length > 1) duplicated.push(shown);
      if (device.accepted === true) {
        accepted++;
        if (device.outcomes.length === 0) missing.push(shown);
        if (device.outcomes.length === 1) exactlyOne++;
      } else if (device.accepted === false && device.outcomes.length > 0) {
        refusedWithOutcome.push(shown);
      }
    }
    return {
      accepted,
      exactlyOne,
      missing,
      duplicated,
      refusedWithOutcome,
      strays: [...this.strays],
      results: { ...this.results },
    };
  }

  private received(msg: dbus.Message): void {
    const seq = this.seq++;
    if (msg.member !== 'DeviceDetached' && msg.member !== 'DeviceDetachFailed') {
      this.others.push({ member: msg.member, body: msg.body as unknown[], seq });
      this.wake();
      return;
    }
    const [vm, label, error, message] = msg.body as string[];
    const result = msg.member === 'DeviceDetached' ? 'detached' : String(error).replace(/^.*\./, '');
    this.results[result] = (this.results[result] ?? 0) + 1;
    const device = this.devices.get(deviceKey(vm!, label!));
    if (device === undefined) {
      this.strays.push(`${vm}/${label}: ${result}`);
      return;
    }
    device.outcomes.push({ result, message: message ?? '', seq });
    if (device.accepted === true && device.outcomes.length === 1) this.open--;
    this.wake();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }
}

function deviceKey(vm: string, label: string): string {
  return `${vm}\u0000${label}`;
}

async function addMatch(client: TestClient, rule: string): Promise<void> {
  await client.call({
    destination: 'org.freedesktop.DBus',
    path: '/org/freedesktop/DBus',
    interface: 'org.freedesktop.DBus',
    member: 'AddMatch',
    signature: 's',
    body: [rule],
  });
}
