/**
 * A proxy between libvirt clients and libvirtd's Unix socket that can hold
 * back messages of libvirt's RPC protocol: the events libvirtd sends, and
 * the calls of a chosen procedure a client sends, or libvirtd's replies to
 * them. With it a test makes a
 * real libvirtd's messages arrive late, or in another order than they
 * would, at the moment it chooses: the races a client must survive, staged
 * without timing.
 *
 * Clients reach it as `qemu+unix:///system?socket=PATH` (libvirt's remote
 * driver on a socket of our choosing). libvirt's RPC (virnetprotocol.x):
 * each packet is a 4-byte big-endian length, the whole packet's with
 * itself, then a header of six 4-byte fields (program, version,
 * procedure, type, serial, status) and the body. Only packets of the remote
 * program are held; keepalives always pass.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** libvirt's remote program (REMOTE_PROGRAM in remote_protocol.x). */
export const REMOTE_PROGRAM = 0x20008086;
/** Message types (virNetMessageType). */
export const RPC_CALL = 0;
export const RPC_REPLY = 1;
export const RPC_MESSAGE = 2;

export interface RpcHeader {
  readonly program: number;
  readonly version: number;
  readonly procedure: number;
  readonly type: number;
  readonly serial: number;
  readonly status: number;
}

type Direction = 'call' | 'answer';

interface Held {
  readonly to: Socket;
  readonly packet: Buffer;
}

export class LibvirtProxy {
  /**
   * Every remote-program packet seen, in order, each direction, with the
   * client connection it was on (numbered from 1 in the order they came).
   */
  readonly seen: Array<{ readonly direction: Direction; readonly header: RpcHeader; readonly connection: number }> = [];
  #connections = 0;
  /** How to close each client connection still open, by its number. */
  readonly #open = new Map<number, () => void>();
  #holdEvents = false;
  #holdProcedure: number | undefined;
  #holdReplyProcedure: number | undefined;
  #heldEvents: Held[] = [];
  #heldCalls: Held[] = [];
  #heldReplies: Held[] = [];
  #waiters = new Set<() => void>();
  readonly #sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    private readonly dir: string,
    /** The proxy's socket. */
    readonly socket: string,
  ) {}

  /** Listens on a socket of its own and forwards each connection to `target`. */
  static async start(target = '/run/libvirt/libvirt-sock'): Promise<LibvirtProxy> {
    const dir = mkdtempSync(join(tmpdir(), 'vmdevd-libvirt-proxy-'));
    const path = join(dir, 'libvirt-sock');
    const server = createServer();
    const proxy = new LibvirtProxy(server, dir, path);
    server.on('connection', (client) => proxy.accept(client, target));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    return proxy;
  }

  /** The URI of libvirtd's system driver through the proxy. */
  get uri(): string {
    return `qemu+unix:///system?socket=${this.socket}`;
  }

  /** From now on, events from libvirtd wait in the proxy until `releaseEvents()`. */
  holdEvents(): void {
    this.#holdEvents = true;
  }

  /** Sends the held events on, in order, and holds no more; resolves with how many once written. */
  releaseEvents(): Promise<number> {
    this.#holdEvents = false;
    return this.flush(this.#heldEvents.splice(0));
  }

  /** From now on, calls of `procedure` wait in the proxy until `releaseCalls()`. */
  holdCalls(procedure: number): void {
    this.#holdProcedure = procedure;
  }

  /** Sends the held calls on, in order, and holds no more; resolves with how many once written. */
  releaseCalls(): Promise<number> {
    this.#holdProcedure = undefined;
    return this.flush(this.#heldCalls.splice(0));
  }

  /**
   * From now on, libvirtd's replies to calls of `procedure` (the call
   * itself goes through: libvirtd does the work) wait in the proxy until
   * `releaseReplies()`.
   */
  holdReplies(procedure: number): void {
    this.#holdReplyProcedure = procedure;
  }

  /** Sends the held replies on, in order, and holds no more; resolves with how many once written. */
  releaseReplies(): Promise<number> {
    this.#holdReplyProcedure = undefined;
    return this.flush(this.#heldReplies.splice(0));
  }

  get heldReplies(): number {
    return this.#heldReplies.length;
  }

  get heldEvents(): number {
    return this.#heldEvents.length;
  }

  get heldCalls(): number {
    return this.#heldCalls.length;
  }

  /**
   * Resolves once `check` is true, checked after each packet; rejects after
   * `timeoutMs` (a guard against a hang, not a measure).
   */
  async until(check: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
    if (check()) return;
    await new Promise<void>((resolve, reject) => {
      const waiter = () => {
        if (!check()) return;
        this.#waiters.delete(waiter);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(new Error(`libvirt proxy: timed out waiting for ${what}`));
      }, timeoutMs);
      this.#waiters.add(waiter);
    });
  }

  /** The numbers of the client connections still open, in the order they came. */
  get openConnections(): number[] {
    return [...this.#open.keys()];
  }

  /**
   * Cuts client connection `connection` (its client sees the socket close,
   * as if libvirtd had gone away for it alone); nothing if it is closed.
   */
  drop(connection: number): void {
    this.#open.get(connection)?.();
  }

  /** Closes every connection and the socket; held messages are dropped. Idempotent. */
  async stop(): Promise<void> {
    this.#heldEvents = [];
    this.#heldCalls = [];
    this.#heldReplies = [];
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.dir, { recursive: true, force: true });
  }

  private accept(client: Socket, target: string): void {
    const daemon = createConnection(target);
    this.#sockets.add(client);
    this.#sockets.add(daemon);
    const connection = ++this.#connections;
    const close = () => {
      client.destroy();
      daemon.destroy();
      this.#sockets.delete(client);
      this.#sockets.delete(daemon);
      this.#open.delete(connection);
    };
    this.#open.set(connection, close);
    client.on('error', close).on('close', close);
    daemon.on('error', close).on('close', close);
    // This client's calls whose replies are to be held, by serial.
    const holdReplyTo = new Set<number>();
    client.on(
      'data',
      framer((packet) => this.pass('call', packet, daemon, connection, holdReplyTo)),
    );
    daemon.on(
      'data',
      framer((packet) => this.pass('answer', packet, client, connection, holdReplyTo)),
    );
  }

  private pass(direction: Direction, packet: Buffer, to: Socket, connection: number, holdReplyTo: Set<number>): void {
    const header = packet.length >= 28 ? readHeader(packet) : undefined;
    if (header?.program === REMOTE_PROGRAM) {
      this.seen.push({ direction, header, connection });
      if (direction === 'call' && header.type === RPC_CALL && header.procedure === this.#holdReplyProcedure)
        holdReplyTo.add(header.serial);
      if (direction === 'answer' && header.type === RPC_MESSAGE && this.#holdEvents) {
        this.#heldEvents.push({ to, packet });
      } else if (direction === 'call' && header.type === RPC_CALL && header.procedure === this.#holdProcedure) {
        this.#heldCalls.push({ to, packet });
      } else if (
        direction === 'answer' &&
        header.type === RPC_REPLY &&
        holdReplyTo.delete(header.serial) &&
        this.#holdReplyProcedure !== undefined
      ) {
        this.#heldReplies.push({ to, packet });
      } else {
        to.write(packet);
      }
    } else {
      to.write(packet);
    }
    for (const w of [...this.#waiters]) w();
  }

  /** Writes `held` in order; resolves once the kernel has all of it (or the socket is gone). */
  private async flush(held: Held[]): Promise<number> {
    await Promise.all(
      held.map(
        ({ to, packet }) =>
          new Promise<void>((resolve) => (to.destroyed ? resolve() : to.write(packet, () => resolve()))),
      ),
    );
    return held.length;
  }
}

function readHeader(packet: Buffer): RpcHeader {
  return {
    program: packet.readUInt32BE(4),
    version: packet.readUInt32BE(8),
    procedure: packet.readInt32BE(12),
    type: packet.readInt32BE(16),
    serial: packet.readUInt32BE(20),
    status: packet.readInt32BE(24),
  };
}

/** Cuts a byte stream into whole packets (each starts with its own 4-byte big-endian length). */
function framer(onPacket: (packet: Buffer) => void): (chunk: Buffer) => void {
  let buffered: Buffer = Buffer.alloc(0);
  return (chunk) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    while (buffered.length >= 4) {
      const length = buffered.readUInt32BE(0);
      if (length < 4) throw new Error(`libvirt proxy: a packet of length ${length}`);
      if (buffered.length < length) break;
      onPacket(buffered.subarray(0, length));
      buffered = buffered.subarray(length);
    }
  };
}
