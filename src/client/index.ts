/**
 * A typed client of vmdevd for Node programs (`vmdevd/client`).
 *
 * ```ts
 * const client = await VmdevClient.connect({ bus: 'system' });
 * const result = await client.detach('vm1', { d1: ['type=disk', 'target=vdb'] });
 * for (const o of result.outcomes) console.log(o.device, o.ok ? 'detached' : o.error);
 * client.close();
 * ```
 *
 * `detach` subscribes to the outcome signals before it calls `TestMethod`,
 * so no outcome can be missed, and resolves once every device has one.
 */
import dbus from 'dbus-next';
import { DBUS_ERRORS, DEFAULT_BUS_NAME, INTERFACE_NAME, OBJECT_PATH } from '../protocol.js';
import { openBus, type MessageBus } from '../dbus/bus-connection.js';

type Message = dbus.Message;
const { Message: MessageClass, MessageType, Variant } = dbus;

export { DEFAULT_BUS_NAME, ERROR_PREFIX, OBJECT_PATH, vmdevErrorName } from '../protocol.js';
/** The interface name (`org.example.dbustest.Module`). */
export const INTERFACE = INTERFACE_NAME;
export const INVALID_ARGS = DBUS_ERRORS.InvalidArgs;

export interface ClientOptions {
  /** `session` (default), `system`, or a D-Bus address. */
  readonly bus?: string;
  /** The daemon's bus name (default `org.example.dbustest`). */
  readonly busName?: string;
}

/** A D-Bus error from the daemon (or the bus), by name. */
export class VmdevClientError extends Error {
  override readonly name = 'VmdevClientError';
  constructor(
    /** The D-Bus error name, e.g. `org.example.dbustest.Error.AmbiguousSelector`. */
    readonly errorName: string,
    message: string,
  ) {
    super(message);
  }
}

/** One VM with what the daemon knows about it. */
export interface VmDetails {
  readonly key: string;
  readonly name: string;
  readonly state: string;
  readonly backend: string;
  readonly uuid?: string | undefined;
  readonly type?: string | undefined;
}

/** The outcome of one device, from `DeviceDetached` or `DeviceDetachFailed`. */
export type DeviceOutcome =
  | { readonly vm: string; readonly device: string; readonly ok: true }
  | {
      readonly vm: string;
      readonly device: string;
      readonly ok: false;
      readonly error: string;
      readonly message: string;
    };

export interface DetachResult {
  /** False when no VM matched the selector: nothing was started. */
  readonly accepted: boolean;
  /** One outcome per device that got one, in the order they arrived. */
  readonly outcomes: readonly DeviceOutcome[];
  /** Labels without an outcome when `timeoutMs` ran out (empty otherwise). */
  readonly pending: readonly string[];
}

export interface DetachOptions {
  /** Stop waiting after this long; devices still without an outcome are listed in `pending`. */
  readonly timeoutMs?: number;
  /** Called for each outcome as it arrives. */
  readonly onOutcome?: (outcome: DeviceOutcome) => void;
}

export interface Subscription {
  dispose(): Promise<void>;
}

/** Devices as the daemon takes them: label → `name=value` tokens. */
export type DeviceMap = Readonly<Record<string, readonly string[]>>;

export class VmdevClient {
  private readonly listeners = new Set<(msg: Message) => void>();

  private constructor(
    private readonly bus: MessageBus,
    readonly busName: string,
  ) {
    bus.on('message', (msg: Message) => {
      if (msg.type !== MessageType.SIGNAL) return;
      for (const l of this.listeners) l(msg);
    });
  }

  static async connect(options: ClientOptions = {}): Promise<VmdevClient> {
    return new VmdevClient(await openBus(options.bus ?? 'session'), options.busName ?? DEFAULT_BUS_NAME);
  }

  /** VM key → state (`TestProperty`). */
  async states(): Promise<Record<string, string>> {
    return (await this.getProperty('TestProperty')) as Record<string, string>;
  }

  /** Backend id → `connected` or `disconnected: <reason>`. */
  async backends(): Promise<Record<string, string>> {
    return (await this.getProperty('Backends')) as Record<string, string>;
  }

  /** Every VM with its backend, and its UUID and type where known, sorted by key. */
  async vms(): Promise<VmDetails[]> {
    const raw = (await this.getProperty('Vms')) as Record<string, Record<string, string>>;
    return Object.entries(raw).map(([key, d]) => ({
      key,
      name: d['name']!,
      state: d['state']!,
      backend: d['backend']!,
      uuid: d['uuid'],
      type: d['type'],
    }));
  }

  /** Asks for state changes (a write of `TestProperty`); resolves when the backends accepted them. */
  async setStates(states: Readonly<Record<string, string>>): Promise<void> {
    await this.call({
      interface: 'org.freedesktop.DBus.Properties',
      member: 'Set',
      signature: 'ssv',
      body: [INTERFACE, 'TestProperty', new Variant('a{ss}', states)],
    });
  }

  /** Follows `TestSignal`: the whole map, on every change. */
  onStates(listener: (states: Record<string, string>) => void): Promise<Subscription> {
    return this.subscribe('TestSignal', (msg) => listener(msg.body[0] as Record<string, string>));
  }

  /** Follows every device outcome, of every client's requests. */
  onOutcome(listener: (outcome: DeviceOutcome) => void): Promise<Subscription> {
    return this.subscribe(undefined, (msg) => {
      const outcome = toOutcome(msg);
      if (outcome) listener(outcome);
    });
  }

  /**
   * Detaches devices and resolves with every device's outcome. Outcomes are
   * matched by label; give devices labels that no concurrent request uses
   * for the same VM.
   */
  async detach(selector: string, devices: DeviceMap, options: DetachOptions = {}): Promise<DetachResult> {
    const waiting = new Set(Object.keys(devices));
    const outcomes: DeviceOutcome[] = [];
    let called = false;
    let vm: string | undefined;
    let finish: () => void = () => {};
    const done = new Promise<void>((resolve) => (finish = resolve));
    const early: DeviceOutcome[] = [];
    const take = (o: DeviceOutcome) => {
      if (!waiting.has(o.device) || (vm !== undefined && o.vm !== vm)) return;
      vm ??= o.vm;
      waiting.delete(o.device);
      outcomes.push(o);
      options.onOutcome?.(o);
      if (waiting.size === 0) finish();
    };
    const sub = await this.onOutcome((o) => (called ? take(o) : early.push(o)));
    try {
      const [accepted] = (await this.call({
        member: 'TestMethod',
        signature: 'sa{sas}',
        body: [selector, devices],
      })) as [boolean];
      called = true;
      if (!accepted) return { accepted: false, outcomes: [], pending: [] };
      // Outcomes that arrived before the reply (a fast backend) belong to this call.
      for (const o of early) take(o);
      if (waiting.size > 0) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          done,
          new Promise<void>(
            (resolve) => options.timeoutMs !== undefined && (timer = setTimeout(resolve, options.timeoutMs)),
          ),
        ]);
        clearTimeout(timer);
      }
      return { accepted: true, outcomes, pending: [...waiting] };
    } finally {
      await sub.dispose();
    }
  }

  close(): void {
    this.bus.disconnect();
  }

  private async subscribe(member: string | undefined, handler: (msg: Message) => void): Promise<Subscription> {
    const rule = `type='signal',sender='${this.busName}',path='${OBJECT_PATH}',interface='${INTERFACE}'${member ? `,member='${member}'` : ''}`;
    await this.busCall('AddMatch', rule);
    const listener = (msg: Message) => {
      if (msg.path === OBJECT_PATH && msg.interface === INTERFACE && (member === undefined || msg.member === member))
        handler(msg);
    };
    this.listeners.add(listener);
    return {
      dispose: async () => {
        if (!this.listeners.delete(listener)) return;
        await this.busCall('RemoveMatch', rule).catch(() => undefined);
      },
    };
  }

  private async getProperty(name: string): Promise<unknown> {
    const [variant] = (await this.call({
      interface: 'org.freedesktop.DBus.Properties',
      member: 'Get',
      signature: 'ss',
      body: [INTERFACE, name],
    })) as [{ value: unknown }];
    return variant.value;
  }

  private busCall(member: string, arg: string): Promise<unknown[]> {
    return this.call({
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus',
      member,
      signature: 's',
      body: [arg],
    });
  }

  private async call(m: {
    member: string;
    signature: string;
    body: unknown[];
    interface?: string;
    destination?: string;
    path?: string;
  }): Promise<unknown[]> {
    const msg = new MessageClass({
      destination: m.destination ?? this.busName,
      path: m.path ?? OBJECT_PATH,
      interface: m.interface ?? INTERFACE,
      member: m.member,
      signature: m.signature,
      body: m.body,
    });
    try {
      const reply = await this.bus.call(msg);
      return (reply?.body ?? []) as unknown[];
    } catch (err) {
      const e = err as { type?: string; text?: string; message?: string };
      if (typeof e.type === 'string') throw new VmdevClientError(e.type, e.text ?? '');
      throw err;
    }
  }
}

function toOutcome(msg: Message): DeviceOutcome | undefined {
  const [vm, device, error, message] = msg.body as string[];
  if (msg.member === 'DeviceDetached') return { vm: vm!, device: device!, ok: true };
  if (msg.member === 'DeviceDetachFailed')
    return { vm: vm!, device: device!, ok: false, error: error!, message: message! };
  return undefined;
}
