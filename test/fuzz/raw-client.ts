/**
 * A D-Bus client for the fuzzer that sends messages exactly as generated:
 * any signature (dict keys of any basic type included), flags, no
 * interface, bodies in dbus-next's low-level marshaller form. It borrows a
 * dbus-next connection for the handshake and reading, and writes its own
 * marshalled messages with serials of its own.
 */
import { createRequire } from 'node:module';
import type { EventEmitter } from 'node:events';
import type { Writable } from 'node:stream';
import dbus from 'dbus-next';

const require = createRequire(import.meta.url);
// dbus-next's marshaller of whole messages (header and body, low-level form).
const { marshall } = require('dbus-next/lib/message.js') as {
  marshall: (message: Record<string, unknown>) => [Buffer, unknown[]];
};

export const NO_REPLY_EXPECTED = 0x1;
const METHOD_CALL = 1;

export interface RawCall {
  destination: string;
  path: string;
  interface?: string | undefined;
  member: string;
  signature: string;
  /** Values in the marshaller's low-level form. */
  body: unknown[];
  flags?: number;
}

export type Reply =
  | { kind: 'return'; body: unknown[]; signature: string }
  | { kind: 'error'; name: string; text: string }
  | { kind: 'timeout' }
  | { kind: 'closed' };

export function marshallCall(call: RawCall, serial: number): Buffer {
  const message: Record<string, unknown> = {
    type: METHOD_CALL,
    serial,
    flags: call.flags ?? 0,
    destination: call.destination,
    path: call.path,
    member: call.member,
    signature: call.signature || undefined,
    body: call.signature ? call.body : undefined,
  };
  if (call.interface !== undefined) message['interface'] = call.interface;
  return marshall(message)[0];
}

interface Connection extends EventEmitter {
  stream: Writable;
}

export class RawClient {
  /** Far from dbus-next's own serials (Hello, AddMatch), so replies cannot be confused. */
  private serial = 0x40000000;
  private readonly pending = new Map<number, (reply: Reply) => void>();
  private closedBy: string | undefined;
  private readonly connection: Connection;

  private constructor(readonly bus: dbus.MessageBus) {
    this.connection = (bus as unknown as { _connection: Connection })._connection;
    this.connection.on('message', (msg: dbus.Message) => {
      if (msg.type !== dbus.MessageType.METHOD_RETURN && msg.type !== dbus.MessageType.ERROR) return;
      const serial = Number(msg.replySerial);
      const resolve = this.pending.get(serial);
      if (resolve === undefined) return;
      this.pending.delete(serial);
      if (msg.type === dbus.MessageType.ERROR)
        resolve({ kind: 'error', name: msg.errorName, text: typeof msg.body[0] === 'string' ? msg.body[0] : '' });
      else resolve({ kind: 'return', body: msg.body, signature: msg.signature });
    });
    const close = (why: string) => {
      this.closedBy ??= why;
      for (const [serial, resolve] of this.pending) {
        this.pending.delete(serial);
        resolve({ kind: 'closed' });
      }
    };
    this.connection.on('end', () => close('the bus closed the connection'));
    this.connection.on('error', (err: Error) => close(`connection error: ${err.message}`));
  }

  static connect(address: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const bus = dbus.sessionBus({ busAddress: address });
      bus.once('connect', () => resolve(new RawClient(bus)));
      bus.once('error', reject);
    });
  }

  /** Why the connection is gone, or undefined while it is open. */
  get closed(): string | undefined {
    return this.closedBy;
  }

  get uniqueName(): string {
    return (this.bus as unknown as { name: string }).name;
  }

  /** Writes an already marshalled message as it is (bytes that break the rules included). */
  writeRaw(data: Buffer): void {
    this.connection.stream.write(data);
  }

  nextSerial(): number {
    return this.serial++;
  }

  /** Sends and does not wait (for NO_REPLY_EXPECTED). */
  send(call: RawCall): void {
    this.writeRaw(marshallCall(call, this.nextSerial()));
  }

  /** Sends and resolves with the reply, or `timeout` after `timeoutMs`. */
  call(call: RawCall, timeoutMs: number): Promise<Reply> {
    const serial = this.nextSerial();
    const data = marshallCall(call, serial);
    return this.await(serial, timeoutMs, () => this.writeRaw(data));
  }

  /** Resolves with the reply to `serial` (sent by `write`). */
  await(serial: number, timeoutMs: number, write: () => void): Promise<Reply> {
    if (this.closedBy !== undefined) return Promise.resolve({ kind: 'closed' });
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(serial);
        resolve({ kind: 'timeout' });
      }, timeoutMs);
      this.pending.set(serial, (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      write();
    });
  }

  close(): void {
    this.bus.disconnect();
  }
}
