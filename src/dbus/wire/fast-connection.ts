/**
 * The bus connection under dbus-next's `MessageBus` (`new MessageBus(conn)`),
 * with this directory's encoder and decoder: the only codec vmdevd uses, on
 * every address it accepts (unix sockets and TCP; see `busTargets`).
 *
 * It is what dbus-next's `connection.js` is to `MessageBus`: an EventEmitter
 * with `message(msg)` to send, the events 'connect', 'message', 'error' and
 * 'end', and a `stream` with `end()` and `writable` (used by
 * `MessageBus.disconnect` and its match-rule removal). Authentication is
 * `./sasl-client.ts` (EXTERNAL, DBUS_COOKIE_SHA1, ANONYMOUS).
 *
 * Receiving: a message that does not decode (a unix fd 'h' in its body,
 * which vmdevd never takes; a wrong boolean; a bad string) is that message's
 * problem, never the connection's: it is skipped and reported as
 * 'undecodable' with its header when that can be read, and a reply that
 * cannot be read is handed on as an error reply, so the call waiting for it
 * ends. Only bytes that cannot frame a message (see MessageFramer) end the
 * connection, since nothing after them can be trusted.
 *
 * Sending: every message is marshalled at once (a bad body throws to the
 * caller, before anything is queued) into one buffer, and what was sent
 * during one turn of the event loop goes out in one write, in order, from a
 * process.nextTick callback (a body already encoded and large, a state map
 * of thousands of VMs, is written from its own buffer rather than copied): the reply to a call is written as soon as the
 * handler that sent it returns. Flushing in setImmediate instead batched no
 * better here (calls/s at 16 in flight within noise, p50 the same), so the
 * earlier write wins; `flush: 'immediate'` is kept for measuring. A signal
 * whose latency is the point (the state map) is written at once instead,
 * with what was sent before it (`signalNow`). When the
 * socket says to wait (`write()` returned false) messages keep accumulating
 * in that buffer until 'drain'; more than `maxQueuedBytes` waiting (64 MiB by
 * default: a bus that reads nothing for that long is stuck) fails the
 * connection rather than letting memory grow without bound. The socket
 * itself then holds at most one more batch. `whenWritten` tells a sender
 * when what it sent has left that buffer and the socket is not asking to
 * wait: a sender of state can hold back further changes until then (the bus
 * is not keeping up) and send the last one, instead of queueing each.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { DBUS_ERRORS } from '../../protocol.js';
import { authenticate, type AuthMechanism } from './sasl-client.js';
import {
  encodeHeaderInto,
  encodeMessageInto,
  WireWriter,
  type OutgoingMessage,
  type SignalTemplate,
} from './encoder.js';
import { type DecodeError, MessageFramer, type MessageHeader } from './decoder.js';
import { MAX_MESSAGE_LENGTH } from './encoder.js';
import dbus from 'dbus-next';

const METHOD_RETURN = 2;
const ERROR = 3;
/** The error a reply that cannot be read is handed on as (libdbus's name for a malformed message). */
const INCONSISTENT_MESSAGE = DBUS_ERRORS.InconsistentMessage;

export interface FastConnectionOptions {
  /** One or more `;`-separated unix addresses, tried in order. */
  readonly busAddress: string;
  /** The authentication mechanisms to try, in order (default EXTERNAL, DBUS_COOKIE_SHA1, ANONYMOUS). */
  readonly authMethods?: readonly AuthMechanism[];
  /** Bytes that may wait for a stuck socket before the connection fails (default 64 MiB). */
  readonly maxQueuedBytes?: number;
  /** When a batch of writes goes out: after the current tick (default) or in the event loop's check phase (for measuring). */
  readonly flush?: 'tick' | 'immediate';
  /**
   * The longest message to accept (default: the spec's 128 MiB). A longer
   * one is dropped as it arrives, without holding it in memory, and the
   * connection emits 'oversized' (the owner of the bus answers a call).
   */
  readonly maxIncomingLength?: number;
}

/** What 'undecodable' reports. */
export interface UndecodableMessage {
  /** The message's header, when it could be read (its body could not). */
  readonly header: MessageHeader | undefined;
  readonly reason: string;
}

/** What 'oversized' reports. */
export interface OversizedMessage {
  readonly header: MessageHeader;
  readonly length: number;
  readonly limit: number;
}

/** The part of the socket `MessageBus` uses. */
export interface ConnectionStream {
  /** Sends what is queued, then closes the connection. */
  end(): void;
  readonly writable: boolean;
}

export const DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024;
/** An encoded body this long is written from its buffer, not copied into the connection's. */
const SEPARATE_BODY_BYTES = 16 * 1024;

/** A socket to connect to, from one entry of a D-Bus address. */
export type SocketTarget =
  | { readonly kind: 'unix'; readonly path: string; readonly describe: string }
  | {
      readonly kind: 'tcp';
      readonly host: string;
      readonly port: number;
      readonly family: 4 | 6 | undefined;
      readonly describe: string;
    };

/** An address this connection cannot open: the message says which entry and why. */
export class BusAddressError extends Error {
  override readonly name = 'BusAddressError';
}

/**
 * The sockets of a D-Bus address list: `unix:path=`, `unix:abstract=` (and
 * dbus-next's `unix:socket=`), and `tcp:host=,port=[,family=]`. Values are
 * unescaped (`%2f`); other keys such as `guid` are ignored. Throws
 * BusAddressError for any other transport (`unixexec:`, `launchd:`,
 * `nonce-tcp:`, `autolaunch:`), or an entry without what it needs.
 */
export function busTargets(address: string): SocketTarget[] {
  const targets: SocketTarget[] = [];
  for (const entry of address.split(';')) {
    if (entry === '') continue;
    const colon = entry.indexOf(':');
    const transport = colon < 0 ? entry : entry.slice(0, colon).toLowerCase();
    const params = new Map<string, string>();
    for (const kv of colon < 0 ? [] : entry.slice(colon + 1).split(',')) {
      const eq = kv.indexOf('=');
      if (eq < 0) continue;
      try {
        params.set(kv.slice(0, eq), decodeURIComponent(kv.slice(eq + 1)));
      } catch {
        throw new BusAddressError(`the bus address ${JSON.stringify(entry)} has a malformed %-escape`);
      }
    }
    if (transport === 'unix') {
      const path = params.get('path') ?? params.get('socket');
      const abstract = params.get('abstract');
      if (path !== undefined) targets.push({ kind: 'unix', path, describe: `unix:path=${path}` });
      else if (abstract !== undefined)
        targets.push({ kind: 'unix', path: `\0${abstract}`, describe: `unix:abstract=${abstract}` });
      else throw new BusAddressError(`the bus address ${JSON.stringify(entry)} names no path= or abstract=`);
    } else if (transport === 'tcp') {
      const host = params.get('host') ?? 'localhost';
      const port = Number(params.get('port'));
      const family = params.get('family');
      if (!Number.isInteger(port) || port <= 0 || port > 65535)
        throw new BusAddressError(`the bus address ${JSON.stringify(entry)} has no valid port=`);
      if (family !== undefined && family !== 'ipv4' && family !== 'ipv6')
        throw new BusAddressError(`the bus address ${JSON.stringify(entry)} has family=${family} (ipv4 or ipv6)`);
      const fam = family === 'ipv4' ? 4 : family === 'ipv6' ? 6 : undefined;
      targets.push({ kind: 'tcp', host, port, family: fam, describe: `tcp:host=${host},port=${port}` });
    } else {
      throw new BusAddressError(
        `the bus address ${JSON.stringify(entry)} uses the transport "${transport}"; vmdevd connects to unix: and tcp: addresses only`,
      );
    }
  }
  if (targets.length === 0) throw new BusAddressError(`the bus address ${JSON.stringify(address)} is empty`);
  return targets;
}

export function createFastConnection(options: FastConnectionOptions): FastConnection {
  return new FastConnection(options);
}

export class FastConnection extends EventEmitter {
  /** 'connected' once authenticated, as dbus-next's connection says. */
  state: string | undefined;
  /** The server's GUID from the handshake. */
  guid: string | undefined;
  readonly stream: ConnectionStream;

  private socket: net.Socket | undefined;
  private connected = false;
  private ended = false;
  private waitingForDrain = false;
  private flushScheduled = false;
  private writtenListeners: Array<() => void> = [];
  /** Bytes to write before what is in `out`, in order: what was taken from it, and large bodies written from their own buffers. */
  private chunks: Buffer[] = [];
  private chunkBytes = 0;
  private readonly out = new WireWriter();
  private readonly framer: MessageFramer;
  private readonly maxQueuedBytes: number;
  private readonly schedule: (fn: () => void) => void;

  constructor(private readonly options: FastConnectionOptions) {
    super();
    this.maxQueuedBytes = options.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
    const maxIncoming = options.maxIncomingLength ?? MAX_MESSAGE_LENGTH;
    this.framer = new MessageFramer(
      maxIncoming,
      (header, length) => this.emit('oversized', { header, length, limit: maxIncoming } satisfies OversizedMessage),
      (header, error) => this.undecodable(header, error),
    );
    this.schedule = options.flush === 'immediate' ? (fn) => setImmediate(fn) : (fn) => process.nextTick(fn);
    const writable = () => !this.ended && this.socket !== undefined && this.socket.writable;
    this.stream = {
      end: () => this.end(),
      get writable() {
        return writable();
      },
    };
    this.connectTo(busTargets(options.busAddress), 0, []);
  }

  /**
   * Sends a message (MessageBus has set its serial). Throws if the message
   * cannot be marshalled or the connection is closed, as dbus-next does.
   */
  message(msg: OutgoingMessage): void {
    if (!this.mayQueue()) return;
    const rawBody = msg.rawBody;
    if (rawBody !== undefined && rawBody.length >= SEPARATE_BODY_BYTES) {
      encodeHeaderInto(this.out, { ...msg, rawBody });
      this.pushChunk(this.out.take());
      this.pushChunk(rawBody);
    } else {
      encodeMessageInto(this.out, msg);
    }
    if (this.mustWait()) return;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      this.schedule(this.flush);
    }
  }

  /**
   * Calls `fn` once every message sent so far has been handed to the socket
   * and the socket is not asking to wait ('drain'): at once when nothing
   * waits, and when the connection ends first.
   */
  whenWritten(fn: () => void): void {
    if (this.ended || (this.connected && this.out.pos === 0 && this.chunks.length === 0 && !this.waitingForDrain)) {
      fn();
      return;
    }
    this.writtenListeners.push(fn);
  }

  /**
   * Sends a signal of `template` with `body` (MessageBus has given the
   * serial) and writes it, after what was sent before it, now rather than
   * at the end of this tick: for a signal whose latency is the point (the
   * state map, sent from a hypervisor's event with nothing else to wait
   * for). While the socket asks to wait it is queued, as any message is.
   */
  signalNow(template: SignalTemplate, serial: number, body: Buffer): void {
    if (!this.mayQueue()) return;
    if (this.out.pos > 0) this.pushChunk(this.out.take());
    if (body.length >= SEPARATE_BODY_BYTES) {
      this.pushChunk(template.header(serial, body.length));
      this.pushChunk(body);
    } else {
      this.pushChunk(template.message(serial, body));
    }
    if (this.mustWait()) return;
    this.flush();
  }

  /** False, having said so, once the connection has ended; throws, as dbus-next does, when its socket is closed. */
  private mayQueue(): boolean {
    if (this.ended) {
      this.emit('error', new Error('Tried to write a message to a closed stream'));
      return false;
    }
    if (this.connected && !this.socket!.writable) throw new Error('Cannot send message, stream is closed');
    return true;
  }

  /** Bytes written from their own buffer, after what is already queued. */
  private pushChunk(bytes: Buffer): void {
    this.chunks.push(bytes);
    this.chunkBytes += bytes.length;
  }

  /**
   * True while what is sent has to wait (the socket asked to, or the
   * handshake is not over); more than `maxQueuedBytes` waiting fails the
   * connection.
   */
  private mustWait(): boolean {
    if (this.connected && !this.waitingForDrain) return false;
    const queued = this.out.pos + this.chunkBytes;
    if (queued > this.maxQueuedBytes)
      this.fail(new Error(`the bus has not read the last ${queued} bytes sent to it; giving up the connection`));
    return true;
  }

  /** Sends what is queued and closes the connection (dbus-next's `end()`). */
  end(): this {
    const socket = this.socket;
    if (socket === undefined) return this;
    if (!this.connected) {
      // Still connecting or authenticating: nothing worth sending, and the
      // handshake must not write into an ended socket (an error nobody hears).
      socket.destroy();
      return this;
    }
    if (socket.writable) for (const chunk of this.takeChunks()) socket.write(chunk);
    socket.end();
    return this;
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    const socket = this.socket;
    if (!this.connected || this.waitingForDrain || socket === undefined || !socket.writable) return;
    const chunks = this.takeChunks();
    if (chunks.length > 0) {
      let flowing = true;
      // Several buffers: one system call for them all.
      if (chunks.length > 1) socket.cork();
      for (const chunk of chunks) flowing = socket.write(chunk);
      if (chunks.length > 1) socket.uncork();
      if (!flowing) {
        this.waitingForDrain = true;
        return;
      }
    }
    this.written();
  };

  /** Everything queued, in order. */
  private takeChunks(): Buffer[] {
    const chunks = this.chunks;
    if (this.out.pos > 0) chunks.push(this.out.take());
    this.chunks = [];
    this.chunkBytes = 0;
    return chunks;
  }

  /** Everything sent has left: tells those waiting (who may send again). */
  private written(): void {
    if (this.writtenListeners.length === 0) return;
    const listeners = this.writtenListeners;
    this.writtenListeners = [];
    for (const fn of listeners) {
      try {
        fn();
      } catch (err) {
        process.nextTick(() => {
          throw err;
        });
      }
    }
  }

  private connectTo(targets: readonly SocketTarget[], index: number, failures: string[]): void {
    const target = targets[index]!;
    const socket =
      target.kind === 'unix'
        ? net.createConnection({ path: target.path })
        : net.createConnection({ host: target.host, port: target.port, family: target.family });
    this.socket = socket;
    const onConnectError = (err: Error) => {
      failures.push(`${target.describe}: ${err.message}`);
      if (index + 1 < targets.length) this.connectTo(targets, index + 1, failures);
      else this.emit('error', new Error(`cannot connect to the bus (${failures.join('; ')})`));
    };
    socket.once('error', onConnectError);
    socket.once('connect', () => {
      socket.removeListener('error', onConnectError);
      this.attach(socket);
    });
  }

  private attach(socket: net.Socket): void {
    socket.on('close', () => this.close());
    socket.on('drain', () => {
      this.waitingForDrain = false;
      this.flush();
    });
    authenticate(socket, this.options.authMethods).then(
      ({ guid, rest }) => {
        if (this.ended) return;
        socket.on('error', (err) => this.emit('error', err));
        socket.on('end', () => this.close());
        this.guid = guid;
        this.state = 'connected';
        this.connected = true;
        this.emit('connect');
        this.flush();
        socket.on('data', (chunk: Buffer) => this.receive(chunk));
        if (rest.length > 0) this.receive(rest);
        socket.resume();
      },
      (err: unknown) => this.fail(err instanceof Error ? err : new Error(String(err))),
    );
  }

  private receive(chunk: Buffer): void {
    if (this.ended) return;
    try {
      this.framer.push(chunk, this.deliver);
    } catch (err) {
      this.fail(new Error(`malformed message from the bus: ${(err as Error).message}`));
    }
  }

  /** A listener that throws must not desynchronise the framing: its error is rethrown afterwards. */
  private readonly deliver = (msg: dbus.Message): void => {
    try {
      this.emit('message', msg);
    } catch (err) {
      process.nextTick(() => {
        throw err;
      });
    }
  };

  private undecodable(header: MessageHeader | undefined, error: DecodeError): void {
    try {
      this.emit('undecodable', { header, reason: error.message } satisfies UndecodableMessage);
    } catch (err) {
      process.nextTick(() => {
        throw err;
      });
    }
    if (header === undefined || header.replySerial === undefined) return;
    if (header.type !== METHOD_RETURN && header.type !== ERROR) return;
    // The call waiting for this reply must end: with an error saying why.
    this.deliver(
      new dbus.Message({
        type: ERROR,
        errorName: INCONSISTENT_MESSAGE,
        // dbus-next's types say string; its bus matches the number (as every message it decodes carries).
        replySerial: header.replySerial as unknown as string,
        sender: header.sender,
        signature: 's',
        body: [`the reply could not be read: ${error.message}`],
      }),
    );
  }

  private fail(err: Error): void {
    if (this.ended) return;
    this.emit('error', err);
    this.socket?.destroy();
    this.close();
  }

  /** 'end' once, however the stream ended (dbus-next emits it on the stream's end only). */
  private close(): void {
    if (this.ended) return;
    this.ended = true;
    this.connected = false;
    this.out.pos = 0;
    this.chunks = [];
    this.chunkBytes = 0;
    this.emit('end');
    this.written();
  }
}
