/**
 * Opening a dbus-next `MessageBus` to the session bus, the system bus, or any
 * address, and waiting until it is usable.
 *
 * On a unix socket the bus gets the connection of `./wire/` (our own
 * marshalling, batched writes); other addresses, and every address when
 * `VMDEVD_DBUS_CONNECTION=dbus-next`, get dbus-next's own connection.
 */
import dbus from 'dbus-next';
import MessageBusClass from 'dbus-next/lib/bus.js';
import { createFastConnection, isFastAddress, type OversizedMessage } from './wire/fast-connection.js';

/** Set to `dbus-next` to use dbus-next's own connection everywhere. */
export const CONNECTION_ENV = 'VMDEVD_DBUS_CONNECTION';

export type MessageBus = dbus.MessageBus;

/** `session`, `system`, or a D-Bus address such as `unix:path=/run/bus`. */
export type BusSpec = string;

export function describeBus(spec: BusSpec): string {
  if (spec === 'session') return `the session bus (${process.env['DBUS_SESSION_BUS_ADDRESS'] ?? 'address unknown'})`;
  if (spec === 'system')
    return `the system bus (${process.env['DBUS_SYSTEM_BUS_ADDRESS'] ?? 'unix:path=/var/run/dbus/system_bus_socket'})`;
  return spec;
}

/** Connects and resolves once the bus has answered Hello. */
export interface OpenOptions {
  readonly timeoutMs?: number;
  /** The longest message to accept (see `FastConnectionOptions.maxIncomingLength`). */
  readonly maxIncomingLength?: number;
}

export function openBus(spec: BusSpec, options: OpenOptions = {}): Promise<MessageBus> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    let bus: MessageBus;
    try {
      bus = createBus(spec, options.maxIncomingLength);
    } catch (err) {
      reject(new Error(`cannot connect to ${describeBus(spec)}: ${(err as Error).message}`));
      return;
    }
    const timer = setTimeout(() => {
      cleanup();
      try {
        bus.disconnect();
      } catch {
        // already gone
      }
      reject(new Error(`cannot connect to ${describeBus(spec)}: no answer within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const onConnect = () => {
      cleanup();
      resolve(bus);
    };
    const onError = (err: unknown) => {
      cleanup();
      try {
        bus.disconnect();
      } catch {
        // already gone
      }
      reject(new Error(`cannot connect to ${describeBus(spec)}: ${(err as Error)?.message ?? String(err)}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      bus.removeListener('connect', onConnect);
      bus.removeListener('error', onError);
    };
    bus.on('connect', onConnect);
    bus.on('error', onError);
  });
}

/** The address dbus-next would resolve for a spec (undefined: dbus-next looks it up itself). */
function addressOf(spec: BusSpec): string | undefined {
  if (spec === 'system') return process.env['DBUS_SYSTEM_BUS_ADDRESS'] || 'unix:path=/var/run/dbus/system_bus_socket';
  if (spec === 'session') return process.env['DBUS_SESSION_BUS_ADDRESS'] || undefined;
  return spec;
}

function createBus(spec: BusSpec, maxIncomingLength?: number): MessageBus {
  const address = addressOf(spec);
  if (address !== undefined && process.env[CONNECTION_ENV] !== 'dbus-next' && isFastAddress(address)) {
    return new MessageBusClass(createFastConnection({ busAddress: address, maxIncomingLength }));
  }
  return spec === 'system'
    ? dbus.systemBus()
    : spec === 'session'
      ? dbus.sessionBus()
      : dbus.sessionBus({ busAddress: spec });
}

/**
 * Calls `listener` once when the connection under `bus` ends or closes (the
 * bus went away); `MessageBus` itself reports only errors. Both connections
 * emit 'end' for it.
 */
export function onConnectionEnd(bus: MessageBus, listener: () => void): void {
  (bus as unknown as { _connection: NodeJS.EventEmitter })._connection.once('end', listener);
}

/** A message vmdevd builds itself: every name in it is a constant of ours or came from the bus. */
export interface TrustedMessage {
  readonly type: number;
  readonly flags?: number;
  readonly path?: string;
  readonly interface?: string;
  readonly member?: string;
  readonly errorName?: string;
  readonly replySerial?: number;
  readonly destination?: string;
  readonly signature: string;
  readonly body: readonly unknown[];
  /** See `OutgoingMessage.rawBody`. */
  readonly rawBody?: Buffer;
}

/**
 * Sends a message without dbus-next's `Message` (its constructor checks every
 * name with regular expressions; replies, errors and signals of our own need
 * no checking, and on the hot path of a request the checks cost more than
 * the encoding). Both connections accept a plain object.
 */
export function sendTrusted(bus: MessageBus, msg: TrustedMessage): void {
  const internals = bus as unknown as { newSerial(): number; _connection: { message(m: unknown): void } };
  // The callers build the object just for this: it takes its serial in place.
  (msg as { serial?: number }).serial = internals.newSerial();
  internals._connection.message(msg);
}

/**
 * Calls `listener` for each message the connection dropped for its length
 * (only our own connection limits it).
 */
export function onOversized(bus: MessageBus, listener: (m: OversizedMessage) => void): void {
  (bus as unknown as { _connection: NodeJS.EventEmitter })._connection.on('oversized', listener);
}
