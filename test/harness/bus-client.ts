/**
 * A low-level D-Bus client for tests, on dbus-next: raw calls with any
 * signature, properties, and signal recording through match rules.
 */
import dbus from 'dbus-next';

type Message = dbus.Message;
const { Message: MessageClass, MessageType, Variant } = dbus;

export const BUS_NAME = 'org.example.dbustest';
export const OBJECT_PATH = '/org/example/dbustest';
export const INTERFACE = 'org.example.dbustest.Module';

/** What a failed call rejects with. */
export interface CallError extends Error {
  readonly type: string;
  readonly text: string;
}

export interface Signal {
  readonly sender: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly body: unknown[];
  readonly at: number;
}

export class SignalLog {
  readonly signals: Signal[] = [];
  private readonly waiters = new Set<() => void>();

  push(signal: Signal): void {
    this.signals.push(signal);
    for (const w of this.waiters) w();
  }

  named(member: string): Signal[] {
    return this.signals.filter((s) => s.member === member);
  }

  /** Resolves with the first signal (already seen or future) that matches; the timeout only guards against a hang. */
  waitFor(predicate: (s: Signal) => boolean, timeoutMs = 30_000, what = 'signal'): Promise<Signal> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.signals.find(predicate);
        if (found) {
          done();
          resolve(found);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `no ${what} within ${timeoutMs} ms; seen: ${this.signals.map((s) => `${s.member}${JSON.stringify(s.body)}`).join('; ')}`,
          ),
        );
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** Resolves once `count` signals match. */
  async waitForCount(predicate: (s: Signal) => boolean, count: number, timeoutMs = 30_000): Promise<Signal[]> {
    await this.waitFor(
      () => this.signals.filter(predicate).length >= count,
      timeoutMs,
      `${count} matching signals`,
    ).catch((err: Error) => {
      throw err;
    });
    return this.signals.filter(predicate);
  }
}

/** The last TestSignal's map and how many arrived (see `TestClient.followState`). */
export class StateFollower {
  /** The last map: from the last TestSignal, or set by the test (e.g. from a Get). */
  last: Record<string, string> | undefined;
  /** TestSignals received. */
  count = 0;
  readonly #waiters = new Set<() => void>();

  receive(map: Record<string, string>): void {
    this.last = map;
    this.count++;
    for (const w of [...this.#waiters]) w();
  }

  /** Resolves once the last map satisfies `test`, now or at a later TestSignal; the deadline only guards against a hang. */
  until(test: (map: Record<string, string>) => boolean, timeoutMs = 30_000, what = 'such a TestSignal'): Promise<void> {
    return this.#wait(test, true, timeoutMs, what);
  }

  /** Resolves at a later TestSignal whose map satisfies `test`; the deadline only guards against a hang. */
  next(test: (map: Record<string, string>) => boolean, timeoutMs = 30_000, what = 'such a TestSignal'): Promise<void> {
    return this.#wait(test, false, timeoutMs, what);
  }

  #wait(test: (map: Record<string, string>) => boolean, now: boolean, timeoutMs: number, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.last === undefined || !test(this.last)) return;
        done();
        resolve();
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      if (now) check();
    });
  }
}

export class TestClient {
  private constructor(readonly bus: dbus.MessageBus) {}

  static connect(address: string): Promise<TestClient> {
    return new Promise((resolve, reject) => {
      const bus = dbus.sessionBus({ busAddress: address });
      bus.once('connect', () => resolve(new TestClient(bus)));
      bus.once('error', reject);
    });
  }

  get uniqueName(): string {
    return (this.bus as unknown as { name: string }).name;
  }

  /** A raw method call; rejects with a `CallError` for an error reply. */
  async call(options: {
    member: string;
    signature?: string;
    body?: unknown[];
    interface?: string | undefined;
    path?: string;
    destination?: string;
  }): Promise<unknown[]> {
    const msg = new MessageClass({
      destination: options.destination ?? BUS_NAME,
      path: options.path ?? OBJECT_PATH,
      interface: 'interface' in options ? options.interface : INTERFACE,
      member: options.member,
      signature: options.signature ?? '',
      body: options.body ?? [],
    });
    const reply = (await this.bus.call(msg)) as Message;
    return reply.body as unknown[];
  }

  async testMethod(selector: string, devices: Record<string, string[]>): Promise<boolean> {
    const [accepted] = await this.call({ member: 'TestMethod', signature: 'sa{sas}', body: [selector, devices] });
    return accepted as boolean;
  }

  async getProperty<T = unknown>(name: string, iface = INTERFACE): Promise<T> {
    const [variant] = await this.call({
      interface: 'org.freedesktop.DBus.Properties',
      member: 'Get',
      signature: 'ss',
      body: [iface, name],
    });
    return (variant as { value: T }).value;
  }

  async setProperty(name: string, signature: string, value: unknown): Promise<void> {
    await this.call({
      interface: 'org.freedesktop.DBus.Properties',
      member: 'Set',
      signature: 'ssv',
      body: [INTERFACE, name, new Variant(signature, value)],
    });
  }

  async nameOwner(name = BUS_NAME): Promise<string | undefined> {
    try {
      const [owner] = await this.call({
        destination: 'org.freedesktop.DBus',
        path: '/org/freedesktop/DBus',
        interface: 'org.freedesktop.DBus',
        member: 'GetNameOwner',
        signature: 's',
        body: [name],
      });
      return owner as string;
    } catch {
      return undefined;
    }
  }

  /** Adds a match rule and records every signal it lets through. */
  async subscribe(rule: string): Promise<SignalLog> {
    const log = new SignalLog();
    await this.addMatch(rule);
    this.bus.on('message', (msg: Message) => {
      if (msg.type !== MessageType.SIGNAL) return;
      log.push({
        sender: msg.sender,
        path: msg.path,
        interface: msg.interface,
        member: msg.member,
        body: msg.body,
        at: performance.now(),
      });
    });
    return log;
  }

  /** Follows the daemon's TestSignal, keeping only the last map (a storm sends thousands of large ones). */
  async followState(sender = BUS_NAME): Promise<StateFollower> {
    const follower = new StateFollower();
    this.bus.on('message', (msg: Message) => {
      if (msg.type === MessageType.SIGNAL && msg.member === 'TestSignal' && msg.interface === INTERFACE)
        follower.receive(msg.body[0] as Record<string, string>);
    });
    await this.addMatch(`type='signal',sender='${sender}',interface='${INTERFACE}',member='TestSignal'`);
    return follower;
  }

  /** Asks the bus to route the signals `rule` matches to this connection. */
  private async addMatch(rule: string): Promise<void> {
    await this.call({
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus',
      member: 'AddMatch',
      signature: 's',
      body: [rule],
    });
  }

  /** Subscribes, by well-known name, to every signal of the daemon's object. */
  subscribeAll(sender = BUS_NAME): Promise<SignalLog> {
    return this.subscribe(`type='signal',sender='${sender}',path='${OBJECT_PATH}'`);
  }

  close(): void {
    this.bus.disconnect();
  }
}
