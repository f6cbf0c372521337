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
 * `detach` and `attach` subscribe to the outcome signals before they call
 * `TestMethod` or `AttachDevices`, so no outcome can be missed, and resolve
 * once every device has one. `move` reads devices from one VM, detaches
 * them, attaches them to another, and puts back on the first any device
 * the second refused.
 */
import dbus from 'dbus-next';
import { DBUS_ERRORS, DEFAULT_BUS_NAME, INTERFACE_NAME, OBJECT_PATH, vmdevErrorName } from '../protocol.js';
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

/** Which way a device went: `DeviceDetached`/`DeviceDetachFailed`, or `DeviceAttached`/`DeviceAttachFailed`. */
export type DeviceAction = 'detach' | 'attach';

/** The outcome of one device, from one of the four outcome signals. */
export type DeviceOutcome =
  | { readonly action: DeviceAction; readonly vm: string; readonly device: string; readonly ok: true }
  | {
      readonly action: DeviceAction;
      readonly vm: string;
      readonly device: string;
      readonly ok: false;
      readonly error: string;
      readonly message: string;
    };

/** What `detach` and `attach` resolve with. */
export interface RequestResult {
  /** False when no VM matched the selector: nothing was started. */
  readonly accepted: boolean;
  /** One outcome per device that got one, in the order they arrived. */
  readonly outcomes: readonly DeviceOutcome[];
  /** Labels without an outcome when `timeoutMs` ran out (empty otherwise). */
  readonly pending: readonly string[];
}
export type DetachResult = RequestResult;
export type AttachResult = RequestResult;

export interface RequestOptions {
  /** Stop waiting after this long; devices still without an outcome are listed in `pending`. */
  readonly timeoutMs?: number;
  /** Called for each outcome as it arrives. */
  readonly onOutcome?: (outcome: DeviceOutcome) => void;
}
export type DetachOptions = RequestOptions;
export type AttachOptions = RequestOptions;

/**
 * What became of one device of a `move`:
 * - `moved`: detached from the first VM and attached to the second;
 * - `not-detached`: its detach failed, so nothing more was tried (it is
 *   still on the first VM, unless the failure says otherwise);
 * - `put-back`: the second VM refused it, and it was attached back to the
 *   first;
 * - `stranded`: the second VM refused it and the first did not take it
 *   back: it is on neither;
 * - `pending`: an outcome did not arrive within `timeoutMs`.
 */
export type MoveStatus = 'moved' | 'not-detached' | 'put-back' | 'stranded' | 'pending';

export interface MovedDevice {
  /** The device's label on the first VM (as `devices` lists it); also its label in every request of the move. */
  readonly label: string;
  readonly status: MoveStatus;
  /** The detach from the first VM (absent if it had no outcome in time). */
  readonly detach?: DeviceOutcome;
  /** The attach to the second VM, once the device was detached. */
  readonly attach?: DeviceOutcome;
  /** The attach back to the first VM, when the second refused the device. */
  readonly putBack?: DeviceOutcome;
}

export interface MoveResult {
  /** One entry per label, in the order given. */
  readonly devices: readonly MovedDevice[];
}

export interface MoveOptions {
  /** Stop waiting for each step's outcomes after this long (the detach, the attach, the put back). */
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

  /** Follows every device outcome (detaches and attaches), of every client's requests. */
  onOutcome(listener: (outcome: DeviceOutcome) => void): Promise<Subscription> {
    return this.subscribe(undefined, (msg) => {
      const outcome = toOutcome(msg);
      if (outcome) listener(outcome);
    });
  }

  /**
   * The disks, interfaces and host devices of the VM the selector names:
   * label → tokens (`GetDevices`). The map can be given to `detach` and then
   * to `attach` as it is. Rejects with `…Error.VmNotFound` when no VM matches.
   */
  async devices(selector: string): Promise<Record<string, string[]>> {
    const [devices] = (await this.call({ member: 'GetDevices', signature: 's', body: [selector] })) as [
      Record<string, string[]>,
    ];
    return devices;
  }

  /**
   * Detaches devices and resolves with every device's outcome. Outcomes are
   * matched by label; give devices labels that no concurrent request uses
   * for the same VM.
   */
  detach(selector: string, devices: DeviceMap, options: DetachOptions = {}): Promise<DetachResult> {
    return this.request('detach', selector, devices, options);
  }

  /** Attaches devices (`AttachDevices`) and resolves with every device's outcome, as `detach` does. */
  attach(selector: string, devices: DeviceMap, options: AttachOptions = {}): Promise<AttachResult> {
    return this.request('attach', selector, devices, options);
  }

  /**
   * Moves devices from the VM `from` names to the one `to` names: reads
   * their tokens from `from` (`GetDevices`), detaches them, attaches those
   * that were detached to `to`, and attaches back to `from` any device that
   * `to` refused (for example because it already has a disk with that
   * target). Nothing starts unless both VMs exist and `from` has every
   * label: a missing one rejects with `…Error.DeviceNotFound`.
   */
  async move(from: string, to: string, labels: readonly string[], options: MoveOptions = {}): Promise<MoveResult> {
    const listed = await this.devices(from);
    // Resolves the target as the daemon does (VmNotFound, AmbiguousSelector) before anything is detached.
    await this.devices(to);
    const missing = labels.filter((l) => !Object.hasOwn(listed, l));
    if (missing.length > 0) {
      throw new VmdevClientError(
        vmdevErrorName('DeviceNotFound'),
        `VM ${JSON.stringify(from)} has no device labelled ${missing.map((l) => JSON.stringify(l)).join(', ')} (it has ${Object.keys(listed).join(', ') || 'none'})`,
      );
    }
    const pick = (wanted: readonly string[]) => Object.fromEntries(wanted.map((l) => [l, listed[l]!]));
    const step = { timeoutMs: options.timeoutMs, onOutcome: options.onOutcome };

    const out = await this.detach(from, pick(labels), step);
    if (!out.accepted)
      throw new VmdevClientError(vmdevErrorName('VmNotFound'), `no VM matches ${JSON.stringify(from)}`);
    const detached = byLabel(out.outcomes);
    const moving = labels.filter((l) => detached.get(l)?.ok === true);
    const attached =
      moving.length > 0 ? await this.attachOrFail(to, pick(moving), step) : new Map<string, DeviceOutcome>();
    // Whatever the second VM did not take is put back, whether it refused a device or the whole call.
    const refused = moving.filter((l) => attached.get(l)?.ok === false);
    const putBack =
      refused.length > 0 ? await this.attachOrFail(from, pick(refused), step) : new Map<string, DeviceOutcome>();

    return {
      devices: labels.map((label): MovedDevice => {
        const d = detached.get(label);
        const a = attached.get(label);
        const p = putBack.get(label);
        let status: MoveStatus = 'pending';
        if (d !== undefined && !d.ok) status = 'not-detached';
        else if (a?.ok === true) status = 'moved';
        else if (p !== undefined) status = p.ok ? 'put-back' : 'stranded';
        return { label, status, detach: d, attach: a, putBack: p };
      }),
    };
  }

  /**
   * Attaches, and gives each device an outcome even when the call itself
   * fails (no such VM, a backend that cannot attach): the outcome is then
   * that error, so that `move` puts the device back.
   */
  private async attachOrFail(
    selector: string,
    devices: DeviceMap,
    options: RequestOptions,
  ): Promise<Map<string, DeviceOutcome>> {
    const failAll = (error: string, message: string) =>
      new Map(
        Object.keys(devices).map((device): [string, DeviceOutcome] => {
          const o: DeviceOutcome = { action: 'attach', vm: selector, device, ok: false, error, message };
          options.onOutcome?.(o);
          return [device, o];
        }),
      );
    let result: RequestResult;
    try {
      result = await this.attach(selector, devices, options);
    } catch (err) {
      if (err instanceof VmdevClientError) return failAll(err.errorName, err.message);
      throw err;
    }
    if (!result.accepted) return failAll(vmdevErrorName('VmNotFound'), `no VM matches ${JSON.stringify(selector)}`);
    return byLabel(result.outcomes);
  }

  private async request(
    action: DeviceAction,
    selector: string,
    devices: DeviceMap,
    options: RequestOptions,
  ): Promise<RequestResult> {
    const waiting = new Set(Object.keys(devices));
    const outcomes: DeviceOutcome[] = [];
    let called = false;
    let vm: string | undefined;
    let finish: () => void = () => {};
    const done = new Promise<void>((resolve) => (finish = resolve));
    const early: DeviceOutcome[] = [];
    const take = (o: DeviceOutcome) => {
      if (o.action !== action || !waiting.has(o.device) || (vm !== undefined && o.vm !== vm)) return;
      vm ??= o.vm;
      waiting.delete(o.device);
      outcomes.push(o);
      options.onOutcome?.(o);
      if (waiting.size === 0) finish();
    };
    const sub = await this.onOutcome((o) => (called ? take(o) : early.push(o)));
    try {
      const [accepted] = (await this.call({
        member: action === 'detach' ? 'TestMethod' : 'AttachDevices',
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

function byLabel(outcomes: readonly DeviceOutcome[]): Map<string, DeviceOutcome> {
  return new Map(outcomes.map((o) => [o.device, o]));
}

const OUTCOME_SIGNALS: Readonly<Record<string, { action: DeviceAction; ok: boolean }>> = {
  DeviceDetached: { action: 'detach', ok: true },
  DeviceDetachFailed: { action: 'detach', ok: false },
  DeviceAttached: { action: 'attach', ok: true },
  DeviceAttachFailed: { action: 'attach', ok: false },
};

function toOutcome(msg: Message): DeviceOutcome | undefined {
  const kind = Object.hasOwn(OUTCOME_SIGNALS, msg.member) ? OUTCOME_SIGNALS[msg.member] : undefined;
  if (kind === undefined) return undefined;
  const [vm, device, error, message] = msg.body as string[];
  return kind.ok
    ? { action: kind.action, vm: vm!, device: device!, ok: true }
    : { action: kind.action, vm: vm!, device: device!, ok: false, error: error!, message: message! };
}
