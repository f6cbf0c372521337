/**
 * A proxy between one D-Bus client (vmdevd) and a real dbus-daemon, for
 * tests that need the bus to be slow or gone at a chosen moment: it passes
 * the authentication through as it is, then frames the messages the client
 * sends and can hold chosen ones until the test releases them, or cut the
 * connection as a dying bus would. The bus still authenticates the client
 * (the proxy runs as the same user) and routes everything.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { decodeHeader, headerLength, messageLength, type MessageHeader } from '../../src/dbus/wire/decoder.js';
import { makeTempDir, type TempDir } from './temp-dir.js';

export interface HeldMessage {
  readonly header: MessageHeader;
  /** Sends the message on to the bus. */
  release(): void;
}

export interface BusProxy {
  /** The address to give the client. */
  readonly address: string;
  /**
   * Holds every message from the client that `predicate` picks (until
   * released); resolves with the first one held.
   */
  hold(predicate: (header: MessageHeader) => boolean): Promise<HeldMessage>;
  /** Ends every connection, both ways, as a bus that went away. */
  cut(): void;
  close(): Promise<void>;
}

export async function startBusProxy(busSocket: string): Promise<BusProxy> {
  const dir: TempDir = makeTempDir('vmdevd-proxy-');
  const path = dir.file('proxy.socket');
  const sockets = new Set<Socket>();
  const holds: Array<{ predicate: (h: MessageHeader) => boolean; onHeld: (m: HeldMessage) => void }> = [];

  const server: Server = createServer((client) => {
    const bus = connect(busSocket);
    sockets.add(client);
    sockets.add(bus);
    const end = () => {
      client.destroy();
      bus.destroy();
      sockets.delete(client);
      sockets.delete(bus);
    };
    client.on('error', end);
    bus.on('error', end);
    client.on('close', end);
    bus.on('close', end);
    bus.on('data', (chunk) => client.write(chunk));

    // Client → bus: lines until BEGIN, then messages.
    let authenticated = false;
    let pending = Buffer.alloc(0);
    /** Messages wait in order: one held keeps the ones behind it, as a slow bus would. */
    const queue: Array<{ bytes: Buffer; held: boolean }> = [];
    const drain = () => {
      while (queue.length > 0 && !queue[0]!.held) bus.write(queue.shift()!.bytes);
    };
    client.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      if (!authenticated) {
        const begin = pending.indexOf('BEGIN\r\n');
        if (begin < 0) {
          bus.write(pending);
          pending = Buffer.alloc(0);
          return;
        }
        bus.write(pending.subarray(0, begin + 7));
        pending = pending.subarray(begin + 7);
        authenticated = true;
      }
      while (pending.length >= 16) {
        const length = messageLength(pending, 0);
        if (pending.length < length || pending.length < headerLength(pending, 0)) break;
        const bytes = pending.subarray(0, length);
        pending = pending.subarray(length);
        const header = decodeHeader(bytes, 0);
        const entry = { bytes: Buffer.from(bytes), held: false };
        const hold = holds.find((h) => h.predicate(header));
        if (hold !== undefined) {
          entry.held = true;
          hold.onHeld({
            header,
            release: () => {
              entry.held = false;
              drain();
            },
          });
        }
        queue.push(entry);
        drain();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));

  const cut = () => {
    for (const s of [...sockets]) s.destroy();
    sockets.clear();
  };
  return {
    address: `unix:path=${path}`,
    hold(predicate) {
      return new Promise((resolve) => {
        let first = true;
        holds.push({
          predicate,
          onHeld: (m) => {
            if (first) resolve(m);
            first = false;
          },
        });
      });
    },
    cut,
    async close() {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      dir.remove();
    },
  };
}
