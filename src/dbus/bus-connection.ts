/**
 * Opening a dbus-next `MessageBus` to the session bus, the system bus, or any
 * address, over the connection of `./wire/` (our own framing and codec, on
 * unix sockets and TCP), and waiting until it is usable.
 *
 * Everything here that reaches below dbus-next's public API is listed in
 * `./README.md` and pinned by `test/unit/dbus-next-internals.test.ts`.
 */
import type dbus from 'dbus-next';
import { DBUS_ERRORS } from '../protocol.js';
import MessageBusClass from 'dbus-next/lib/bus.js';
import {
  BusAddressError,
  busTargets,
  createFastConnection,
  type FastConnection,
  type OversizedMessage,
  type UndecodableMessage,
} from './wire/fast-connection.js';
import type { SignalTemplate } from './wire/encoder.js';

export type MessageBus = dbus.MessageBus;

/** `session`, `system`, or a D-Bus address such as `unix:path=/run/bus`. */
export type BusSpec = string;

const SYSTEM_BUS_DEFAULT = 'unix:path=/var/run/dbus/system_bus_socket';
const INVALID_ARGS = DBUS_ERRORS.InvalidArgs;
const METHOD_CALL = 1;
const ERROR = 3;
const NO_REPLY_EXPECTED = 0x1;
/** Serials are u32 and never 0: after 2^32 - 1 comes 1. */
const MAX_SERIAL = 0xffffffff;

export function describeBus(spec: BusSpec): string {
  if (spec === 'session') return `the session bus (${process.env['DBUS_SESSION_BUS_ADDRESS'] ?? 'address unknown'})`;
  if (spec === 'system') return `the system bus (${process.env['DBUS_SYSTEM_BUS_ADDRESS'] ?? SYSTEM_BUS_DEFAULT})`;
  return spec;
}

/**
 * The address of a bus spec. The session bus is `DBUS_SESSION_BUS_ADDRESS`,
 * else `$XDG_RUNTIME_DIR/bus` (as sd-bus and GDBus look for it); there is
 * no X11 autolaunch. Throws BusAddressError when there is none.
 */
export function busAddress(spec: BusSpec): string {
  if (spec === 'system') return process.env['DBUS_SYSTEM_BUS_ADDRESS'] || SYSTEM_BUS_DEFAULT;
  if (spec !== 'session') return spec;
  const env = process.env['DBUS_SESSION_BUS_ADDRESS'];
  if (env) return env;
  const runtime = process.env['XDG_RUNTIME_DIR'];
  if (runtime) return `unix:path=${runtime}/bus`;
  throw new BusAddressError(
    'there is no session bus here (DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR are not set); use --system, or --address ADDRESS',
  );
}

/** Throws BusAddressError when vmdevd cannot connect to this spec's address at all. */
export function checkBusSpec(spec: BusSpec): void {
  busTargets(busAddress(spec));
}

export interface OpenOptions {
  readonly timeoutMs?: number;
  /** The longest message to accept (see `FastConnectionOptions.maxIncomingLength`). */
  readonly maxIncomingLength?: number;
  /** Told of every message that could not be read; calls among them are answered InvalidArgs here. */
  readonly onUndecodable?: (message: UndecodableMessage) => void;
}

const connections = new WeakMap<MessageBus, FastConnection>();

function connectionOf(bus: MessageBus): FastConnection {
  const conn = connections.get(bus);
  if (conn === undefined) throw new Error('this MessageBus was not opened by openBus');
  return conn;
}

/** Connects and resolves once the bus has answered Hello. */
export function openBus(spec: BusSpec, options: OpenOptions = {}): Promise<MessageBus> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    let bus: MessageBus;
    let conn: FastConnection;
    try {
      conn = createFastConnection({ busAddress: busAddress(spec), maxIncomingLength: options.maxIncomingLength });
      bus = new WrappingMessageBus(conn);
    } catch (err) {
      reject(new Error(`cannot connect to ${describeBus(spec)}: ${(err as Error).message}`));
      return;
    }
    connections.set(bus, conn);
    conn.on('undecodable', (m: UndecodableMessage) => {
      answerUndecodable(bus, m);
      options.onUndecodable?.(m);
    });
    const timer = setTimeout(() => {
      cleanup();
      disconnect(bus);
      reject(new Error(`cannot connect to ${describeBus(spec)}: no answer within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const onConnect = () => {
      cleanup();
      resolve(bus);
    };
    const onError = (err: unknown) => {
      cleanup();
      disconnect(bus);
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

function disconnect(bus: MessageBus): void {
  try {
    bus.disconnect();
  } catch {
    // already gone
  }
}

/** Serials of each bus: `MessageBus` counts its own up without end, past what fits the header. */
const nextSerials = new WeakMap<MessageBus, number>();

/**
 * dbus-next's `MessageBus` over our connection, with serials that wrap
 * after 2^32 - 1. Every message it sends (Hello in its constructor
 * included) and every one `sendTrusted` sends takes its serial from
 * `newSerial()`.
 */
class WrappingMessageBus extends MessageBusClass {
  override newSerial(): number {
    const serial = nextSerials.get(this) ?? 1;
    nextSerials.set(this, serial >= MAX_SERIAL ? 1 : serial + 1);
    return serial;
  }
}

/** For tests: the serial `bus` sends its next message with (to see the wrap). */
export function setNextSerial(bus: MessageBus, serial: number): void {
  nextSerials.set(bus, serial);
}

/** A call that could not be read gets InvalidArgs, unless it asked for no reply. */
function answerUndecodable(bus: MessageBus, { header, reason }: UndecodableMessage): void {
  if (header === undefined || header.type !== METHOD_CALL || header.sender === undefined) return;
  if ((header.flags & NO_REPLY_EXPECTED) !== 0) return;
  try {
    sendTrusted(bus, {
      type: ERROR,
      errorName: INVALID_ARGS,
      replySerial: header.serial,
      destination: header.sender,
      signature: 's',
      body: [`the call could not be read: ${reason}`],
    });
  } catch {
    // The connection is closing: nothing can be answered any more.
  }
}

/** Calls `listener` once when the connection under `bus` ends (the bus went away or closed it). */
export function onConnectionEnd(bus: MessageBus, listener: () => void): void {
  connectionOf(bus).once('end', listener);
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
  /** The body's values; or none, and `rawBody`. */
  readonly body?: readonly unknown[];
  /** The body already encoded (see `OutgoingMessage.rawBody`); sent as it is. */
  readonly rawBody?: Buffer;
}

/**
 * Sends a message without dbus-next's `Message` (its constructor checks every
 * name with regular expressions; replies, errors and signals of our own need
 * no checking, and on the hot path of a request the checks cost more than
 * the encoding). Throws an EncodeError for a body that does not fit its
 * signature; nothing is sent then.
 */
export function sendTrusted(bus: MessageBus, msg: TrustedMessage): void {
  // The callers build the object just for this: it takes its serial in place.
  (msg as { serial?: number }).serial = bus.newSerial();
  connectionOf(bus).message(msg);
}

/**
 * Calls `fn` once every message sent on `bus` so far has been handed to its
 * socket and the socket is not asking to wait: at once when nothing waits,
 * and also when the connection ends first.
 */
export function whenWritten(bus: MessageBus, fn: () => void): void {
  connectionOf(bus).whenWritten(fn);
}

/** Sends a signal of `template` with an encoded `body` and writes it now (see `FastConnection.signalNow`). */
export function sendSignalNow(bus: MessageBus, template: SignalTemplate, body: Buffer): void {
  connectionOf(bus).signalNow(template, bus.newSerial(), body);
}

/** Calls `listener` for each message the connection dropped for its length. */
export function onOversized(bus: MessageBus, listener: (m: OversizedMessage) => void): void {
  connectionOf(bus).on('oversized', listener);
}
