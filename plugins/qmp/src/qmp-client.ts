/**
 * A client for one QEMU QMP monitor on a unix socket.
 *
 * Built on what QEMU 7.2 does on the wire:
 * - it sends a greeting (`{"QMP": …}`), then waits for `qmp_capabilities`;
 *   events may come before the greeting is read, and are delivered;
 * - every command carries an `id` of ours and its reply is matched by it:
 *   events interleave with replies in any order (a `DEVICE_DELETED` can come
 *   before the reply of the command that caused it);
 * - a message is one line ending in CRLF, and one can be large
 *   (`query-qmp-schema` is a single line of about 200 KB): lines up to
 *   `maxLineBytes` are accepted, a longer one closes the connection with a
 *   `QmpProtocolError`;
 * - a monitor serves one client at a time: a second one gets no greeting
 *   until the first leaves, which `connect` reports after `connectTimeoutMs`;
 * - it keeps no events for a client that is not connected.
 *
 * Every command has a timeout; when the connection ends, every command
 * still waiting fails at once with a `QmpClosedError`.
 */
import { createConnection, type Socket } from 'node:net';

export const DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024;
export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;

/** An asynchronous event from QEMU. */
export interface QmpEvent {
  readonly event: string;
  readonly data: Readonly<Record<string, unknown>>;
  /** Where the event came on the connection: events and replies share one count. */
  readonly seq: number;
}

/** A successful reply. */
export interface QmpReply {
  readonly value: unknown;
  /** Where the reply came on the connection (compare with {@link QmpEvent.seq}). */
  readonly seq: number;
}

export interface QmpGreeting {
  /** QEMU's version, e.g. `7.2.22`. */
  readonly version: string;
  /** The packager's version string, e.g. `Debian 1:7.2+dfsg-7`. */
  readonly package: string;
}

export interface QmpClientOptions {
  /** Every event, in the order QEMU sent it (also those before the greeting). Must not throw. */
  readonly onEvent?: (event: QmpEvent) => void;
  /** Called once when a connected client's connection ends, whatever ended it. Must not throw. */
  readonly onClose?: (reason: QmpClosedError) => void;
  /** How long a command may wait for its reply (default 10 s). */
  readonly commandTimeoutMs?: number;
  /** How long `connect` waits for the socket, the greeting and the capabilities reply (default 5 s). */
  readonly connectTimeoutMs?: number;
  /** The longest line accepted (default 16 MiB). */
  readonly maxLineBytes?: number;
}

export class QmpError extends Error {
  override name = 'QmpError';
}

/** `connect` failed. `code` is the errno name (`ENOENT`, `ECONNREFUSED`, `EACCES`, …) or one of ours. */
export class QmpConnectError extends QmpError {
  override name = 'QmpConnectError';
  constructor(
    message: string,
    readonly path: string,
    /** errno name, `NO_GREETING` (nothing within the connect timeout) or `CLOSED` (closed during the handshake). */
    readonly code: string,
  ) {
    super(message);
  }
}

/** QEMU answered a command with an error. */
export class QmpCommandError extends QmpError {
  override name = 'QmpCommandError';
  constructor(
    readonly command: string,
    /** QMP's error class: `GenericError`, `DeviceNotFound`, `CommandNotFound`, … */
    readonly errorClass: string,
    /** QEMU's own description. */
    readonly desc: string,
  ) {
    super(`${command}: ${desc}`);
  }
}

/** No reply within the command's timeout. The connection stays open. */
export class QmpTimeoutError extends QmpError {
  override name = 'QmpTimeoutError';
  constructor(
    readonly command: string,
    readonly timeoutMs: number,
  ) {
    super(`${command}: no reply from QEMU within ${timeoutMs / 1000} s`);
  }
}

/** The connection ended: before a command's reply, or as reported to `onClose`. */
export class QmpClosedError extends QmpError {
  override name = 'QmpClosedError';
}

/** QEMU sent something the client does not accept; the client closed the connection. */
export class QmpProtocolError extends QmpClosedError {
  override name = 'QmpProtocolError';
}

export interface RequestOptions {
  /** Overrides the client's command timeout. */
  readonly timeoutMs?: number;
  /**
   * Called with the reply as soon as it is read, before any later event is
   * delivered: for a reply that must be applied in order with the events
   * (a state read). Must not throw.
   */
  readonly onReply?: (reply: QmpReply) => void;
}

interface Pending {
  readonly command: string;
  readonly onReply: ((reply: QmpReply) => void) | undefined;
  readonly resolve: (reply: QmpReply) => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

function sizeText(bytes: number): string {
  if (bytes >= 1024 * 1024 && bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

const ERRNO_TEXT: Record<string, string> = {
  ENOENT: 'no such socket',
  ECONNREFUSED: 'connection refused (no QEMU is listening there)',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOTSOCK: 'not a socket',
};

export class QmpClient {
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  private seq = 0;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ready = false;
  private ended: QmpClosedError | undefined;
  private handshake: { resolve: () => void; reject: (err: QmpConnectError) => void; timer: NodeJS.Timeout };
  private greetingValue: QmpGreeting | undefined;
  private readonly commandTimeoutMs: number;
  private readonly maxLineBytes: number;

  private constructor(
    private readonly socket: Socket,
    /** The socket's path. */
    readonly path: string,
    private readonly options: QmpClientOptions,
    handshake: QmpClient['handshake'],
  ) {
    this.handshake = handshake;
    this.commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => this.onSocketError(err));
    socket.on('close', () => this.end(new QmpClosedError(`QEMU closed the QMP socket ${path}`)));
  }

  /**
   * Connects, reads the greeting and negotiates capabilities. Rejects with a
   * `QmpConnectError` (nothing to close then).
   */
  static connect(path: string, options: QmpClientOptions = {}): Promise<QmpClient> {
    return new Promise((resolve, reject) => {
      const timeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
      const socket = createConnection({ path });
      // Only the greeting and the capabilities reply are awaited here; the
      // connection itself is made by then, so a silent monitor is a busy one.
      const timer = setTimeout(() => {
        client.fail(
          new QmpConnectError(
            `no QMP greeting on ${path} within ${timeoutMs / 1000} s: another client holds this monitor, ` +
              'or QEMU is not responding (QEMU serves one client per -qmp socket)',
            path,
            'NO_GREETING',
          ),
        );
      }, timeoutMs);
      const client: QmpClient = new QmpClient(socket, path, options, {
        resolve: () => resolve(client),
        reject,
        timer,
      });
    });
  }

  /** The greeting QEMU sent. */
  get greeting(): QmpGreeting {
    return this.greetingValue!;
  }

  /** True once the connection has ended. */
  get closed(): boolean {
    return this.ended !== undefined;
  }

  /**
   * Runs a command and resolves with its `return` value. Rejects with
   * `QmpCommandError` (QEMU's error), `QmpTimeoutError` or `QmpClosedError`.
   */
  async execute(command: string, args?: Record<string, unknown>, options?: RequestOptions): Promise<unknown> {
    return (await this.request(command, args, options)).value;
  }

  /** As {@link execute}, with the reply's place on the connection. */
  request(command: string, args?: Record<string, unknown>, options: RequestOptions = {}): Promise<QmpReply> {
    if (this.ended !== undefined) return Promise.reject(this.closedFor(command, this.ended));
    const id = `vmdevd-${this.nextId++}`;
    return new Promise<QmpReply>((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpTimeoutError(command, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, { command, onReply: options.onReply, resolve, reject, timer });
      const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(JSON.stringify(message) + '\n');
    });
  }

  /** Closes the connection; waiting commands fail with `QmpClosedError`. Idempotent. */
  close(): void {
    this.end(new QmpClosedError(`vmdevd closed the QMP connection to ${this.path}`));
  }

  private onSocketError(err: NodeJS.ErrnoException): void {
    if (!this.ready) {
      const code = err.code ?? 'EIO';
      const text = ERRNO_TEXT[code] ?? err.message;
      this.fail(new QmpConnectError(`cannot connect to the QMP socket ${this.path}: ${text}`, this.path, code));
      return;
    }
    this.end(new QmpClosedError(`the QMP socket ${this.path} failed: ${err.message}`));
  }

  private onData(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      if (this.ended !== undefined) return;
      const newline = chunk.indexOf(0x0a, start);
      if (newline < 0) break;
      let line: Buffer;
      if (this.buffered === 0) {
        line = chunk.subarray(start, newline);
      } else {
        this.chunks.push(chunk.subarray(start, newline));
        line = Buffer.concat(this.chunks, this.buffered + newline - start);
        this.chunks = [];
        this.buffered = 0;
      }
      start = newline + 1;
      if (line.length > this.maxLineBytes) return this.tooLong();
      this.onLine(line);
    }
    if (start < chunk.length) {
      this.buffered += chunk.length - start;
      // Refused as soon as it is too long, without waiting for its end.
      if (this.buffered > this.maxLineBytes) return this.tooLong();
      this.chunks.push(start === 0 ? chunk : chunk.subarray(start));
    }
  }

  private tooLong(): void {
    this.protocolError(
      `QEMU sent a line longer than ${sizeText(this.maxLineBytes)} on ${this.path}, more than vmdevd accepts; ` +
        'it closed the connection',
    );
  }

  private protocolError(message: string): void {
    this.chunks = [];
    this.buffered = 0;
    if (!this.ready) this.fail(new QmpConnectError(message, this.path, 'PROTOCOL'));
    else this.end(new QmpProtocolError(message));
  }

  private onLine(line: Buffer): void {
    const text = line.toString('utf8').trim();
    if (text === '') return;
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return this.protocolError(`QEMU sent a line that is not JSON on ${this.path}: ${text.slice(0, 80)}`);
    }
    if (typeof message !== 'object' || message === null || Array.isArray(message)) {
      return this.protocolError(`QEMU sent a message that is not a JSON object on ${this.path}`);
    }
    const seq = ++this.seq;
    if (typeof message['event'] === 'string') {
      const data = message['data'];
      const event: QmpEvent = {
        event: message['event'],
        data: typeof data === 'object' && data !== null ? (data as Record<string, unknown>) : {},
        seq,
      };
      this.options.onEvent?.(event);
      return;
    }
    if ('QMP' in message) {
      if (this.greetingValue !== undefined) return;
      const qmp = message['QMP'] as { version?: { qemu?: Record<string, number>; package?: string } } | undefined;
      const v = qmp?.version?.qemu;
      this.greetingValue = {
        version: v !== undefined ? `${v['major']}.${v['minor']}.${v['micro']}` : 'unknown',
        package: String(qmp?.version?.package ?? '').trim(),
      };
      this.request('qmp_capabilities').then(
        () => this.connected(),
        (err: Error) =>
          this.fail(
            new QmpConnectError(`QEMU refused qmp_capabilities on ${this.path}: ${err.message}`, this.path, 'PROTOCOL'),
          ),
      );
      return;
    }
    if ('return' in message || 'error' in message) {
      const id = typeof message['id'] === 'string' ? message['id'] : undefined;
      const pending = id !== undefined ? this.pending.get(id) : undefined;
      // A reply to a command that timed out, or to no command of ours.
      if (pending === undefined) return;
      this.pending.delete(id!);
      clearTimeout(pending.timer);
      if ('error' in message) {
        const error = (message['error'] ?? {}) as { class?: unknown; desc?: unknown };
        pending.reject(new QmpCommandError(pending.command, String(error.class), String(error.desc)));
      } else {
        const reply = { value: message['return'], seq };
        pending.onReply?.(reply);
        pending.resolve(reply);
      }
    }
    // Anything else is a message of a newer QEMU; nothing waits for it.
  }

  private connected(): void {
    if (this.ended !== undefined) return;
    this.ready = true;
    clearTimeout(this.handshake.timer);
    this.handshake.resolve();
  }

  /** Ends a connection that never became ready. */
  private fail(err: QmpConnectError): void {
    if (this.ready || this.ended !== undefined) return;
    this.ended = new QmpClosedError(err.message);
    clearTimeout(this.handshake.timer);
    this.rejectPending(this.ended);
    this.socket.destroy();
    this.handshake.reject(err);
  }

  private end(reason: QmpClosedError): void {
    if (!this.ready) {
      this.fail(
        new QmpConnectError(`QEMU closed the QMP socket ${this.path} before the handshake ended`, this.path, 'CLOSED'),
      );
      return;
    }
    if (this.ended !== undefined) return;
    this.ended = reason;
    this.chunks = [];
    this.buffered = 0;
    this.rejectPending(reason);
    this.socket.destroy();
    this.options.onClose?.(reason);
  }

  private rejectPending(reason: QmpClosedError): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(this.closedFor(p.command, reason));
    }
  }

  private closedFor(command: string, reason: QmpClosedError): QmpClosedError {
    const err = new QmpClosedError(`${command}: no reply, the connection ended: ${reason.message}`, { cause: reason });
    return err;
  }
}
