/**
 * A scripted QMP server on a unix socket, for the protocol corner cases
 * that real QEMU cannot be made to produce on demand (events before the
 * greeting, replies out of order, a line over the limit, a socket that dies
 * mid-command). Everything QEMU can show is tested on QEMU.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { makeTempDir, type TempDir } from 'vmdevd/testing/temp-dir';

export const GREETING = {
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: ['oob'] },
};

/** What the fake says to one command. */
export interface Answer {
  readonly before?: readonly object[];
  readonly return?: unknown;
  readonly error?: { readonly class: string; readonly desc: string };
  /** No reply at all. */
  readonly silent?: boolean;
  readonly after?: readonly object[];
}

/** One client of the fake server. */
export class FakeConnection {
  private buffer = '';
  private readonly waiters: Array<() => void> = [];
  readonly received: Array<Record<string, unknown>> = [];

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString();
      let i;
      while ((i = this.buffer.indexOf('\n')) >= 0) {
        this.received.push(JSON.parse(this.buffer.slice(0, i)) as Record<string, unknown>);
        this.buffer = this.buffer.slice(i + 1);
      }
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('error', () => {});
  }

  /** Sends one message (an object, as JSON with CRLF) or raw text. */
  send(message: object | string): void {
    this.socket.write(typeof message === 'string' ? message : `${JSON.stringify(message)}\r\n`);
  }

  /** Resolves with the `n`th command received (from 0). */
  async command(n: number): Promise<{ execute: string; id: unknown; arguments?: unknown }> {
    while (this.received.length <= n) await new Promise<void>((r) => this.waiters.push(r));
    return this.received[n] as { execute: string; id: unknown };
  }

  /** Answers the `n`th command with `value`. */
  async reply(n: number, value: unknown = {}): Promise<void> {
    const c = await this.command(n);
    this.send({ return: value, id: c.id });
  }

  /** Greets, answers qmp_capabilities: what QEMU does for a new client. */
  async handshake(): Promise<void> {
    this.send(GREETING);
    const c = await this.command(0);
    if (c.execute !== 'qmp_capabilities') throw new Error(`expected qmp_capabilities, got ${c.execute}`);
    this.send({ return: {}, id: c.id });
  }

  /**
   * Answers every command from the `from`th on with what `answer` says, in
   * the order they come: events to send before the reply, the reply (a
   * `return` value or an `error`), events after it. Runs until the
   * connection ends.
   */
  serve(answer: (command: { execute: string; arguments?: Record<string, unknown> }) => Answer, from = 1): void {
    void (async () => {
      for (let n = from; !this.socket.destroyed; n++) {
        const c = (await this.command(n)) as { execute: string; id: unknown; arguments?: Record<string, unknown> };
        const a = answer(c);
        for (const e of a.before ?? []) this.send(e);
        if (a.error !== undefined) this.send({ error: a.error, id: c.id });
        else if (!a.silent) this.send({ return: a.return ?? {}, id: c.id });
        for (const e of a.after ?? []) this.send(e);
      }
    })();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export interface FakeQmpServer {
  readonly path: string;
  /** The next client that connects (or one that already did and was not taken yet). */
  nextConnection(): Promise<FakeConnection>;
  close(): Promise<void>;
}

export async function startFakeQmpServer(): Promise<FakeQmpServer> {
  const dir: TempDir = makeTempDir('vmdevd-fake-qmp-');
  const path = dir.file('fake.qmp');
  const queue: FakeConnection[] = [];
  const waiting: Array<(c: FakeConnection) => void> = [];
  const all: FakeConnection[] = [];
  const server: Server = createServer((socket) => {
    const c = new FakeConnection(socket);
    all.push(c);
    const w = waiting.shift();
    if (w) w(c);
    else queue.push(c);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, resolve);
  });
  return {
    path,
    nextConnection: () =>
      new Promise((resolve) => {
        const c = queue.shift();
        if (c) resolve(c);
        else waiting.push(resolve);
      }),
    async close() {
      for (const c of all) c.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      dir.remove();
    },
  };
}
