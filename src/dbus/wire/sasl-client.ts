/**
 * The client side of D-Bus authentication (the spec's "Authentication
 * Protocol", a line-based SASL exchange before the first message):
 * EXTERNAL (the kernel vouches for our uid on a unix socket), DBUS_COOKIE_SHA1
 * (a secret in `~/.dbus-keyrings`, for TCP), ANONYMOUS (for buses that allow
 * it). Each mechanism is tried in turn; one the server rejects, or that
 * cannot work on this side (no keyring), moves on to the next (sending
 * CANCEL where an exchange was begun). vmdevd takes no unix fds, so it does
 * not ask for them (no NEGOTIATE_UNIX_FD).
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';

export type AuthMechanism = 'EXTERNAL' | 'DBUS_COOKIE_SHA1' | 'ANONYMOUS';

export const DEFAULT_MECHANISMS: readonly AuthMechanism[] = ['EXTERNAL', 'DBUS_COOKIE_SHA1', 'ANONYMOUS'];

/** The longest line the server may send during authentication (its lines are short). */
const MAX_LINE = 16384;

export class AuthError extends Error {
  override readonly name = 'AuthError';
}

export interface AuthResult {
  /** The server's GUID, from its OK. */
  readonly guid: string;
  /** Bytes the server sent after its OK (the start of the message stream, if any). */
  readonly rest: Buffer;
}

const hex = (s: string) => Buffer.from(s, 'utf8').toString('hex');

/**
 * Authenticates on a connected socket and sends BEGIN. Reads the socket with
 * a 'data' listener of its own, removed (and the socket paused) before it
 * resolves; what arrived after the OK line is in `rest`.
 */
export function authenticate(
  socket: Duplex,
  mechanisms: readonly AuthMechanism[] = DEFAULT_MECHANISMS,
): Promise<AuthResult> {
  return new Promise<AuthResult>((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const lines: string[] = [];
    const waiters: Array<(line: string) => void> = [];
    const cleanup = () => {
      socket.removeListener('data', onData);
      socket.removeListener('end', onEnd);
      socket.removeListener('close', onEnd);
      socket.removeListener('error', onError);
    };
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onEnd = () => fail(new AuthError('the bus closed the connection during authentication'));
    const onError = (err: Error) => fail(err);
    const onData = (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      for (;;) {
        const end = buffered.indexOf('\r\n');
        if (end < 0) break;
        const line = buffered.subarray(0, end).toString('latin1');
        buffered = buffered.subarray(end + 2);
        const waiter = waiters.shift();
        if (waiter === undefined) lines.push(line);
        else waiter(line);
      }
      if (buffered.length > MAX_LINE) fail(new AuthError('the bus sent an over-long line during authentication'));
    };
    const readLine = () => {
      const line = lines.shift();
      return line !== undefined ? Promise.resolve(line) : new Promise<string>((res) => waiters.push(res));
    };
    const write = (line: string) => socket.write(`${line}\r\n`);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', onError);

    const run = async (): Promise<void> => {
      socket.write('\0');
      const rejected: string[] = [];
      for (const mechanism of mechanisms) {
        const line = await attempt(mechanism, readLine, write);
        if (line.startsWith('OK ')) {
          write('BEGIN');
          cleanup();
          socket.pause();
          resolve({ guid: line.slice(3).trim(), rest: buffered });
          return;
        }
        rejected.push(`${mechanism}: ${line === '' ? 'not usable here' : line}`);
      }
      fail(new AuthError(`the bus accepted none of vmdevd's ways to authenticate (${rejected.join('; ')})`));
    };
    run().catch((err: unknown) => fail(err instanceof Error ? err : new Error(String(err))));
  });
}

/** One mechanism: resolves with the server's final line (OK …, REJECTED …), or '' when it cannot be used here. */
async function attempt(
  mechanism: AuthMechanism,
  readLine: () => Promise<string>,
  write: (line: string) => void,
): Promise<string> {
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  switch (mechanism) {
    case 'EXTERNAL':
      write(`AUTH EXTERNAL ${hex(String(uid))}`);
      return readLine();
    case 'ANONYMOUS':
      write(`AUTH ANONYMOUS ${hex('vmdevd')}`);
      return readLine();
    case 'DBUS_COOKIE_SHA1': {
      write(`AUTH DBUS_COOKIE_SHA1 ${hex(process.env['USER'] ?? String(uid))}`);
      const line = await readLine();
      if (!line.startsWith('DATA ')) return line;
      const [context, id, serverChallenge] = Buffer.from(line.slice(5).trim(), 'hex').toString('utf8').split(' ');
      const cookie = await keyringCookie(context ?? '', id ?? '', uid);
      if (cookie === undefined || serverChallenge === undefined) {
        write('CANCEL');
        const after = await readLine();
        return after.startsWith('REJECTED') ? '' : after;
      }
      const clientChallenge = randomBytes(16).toString('hex');
      const digest = createHash('sha1').update(`${serverChallenge}:${clientChallenge}:${cookie}`).digest('hex');
      write(`DATA ${hex(`${clientChallenge} ${digest}`)}`);
      return readLine();
    }
  }
}

/** The cookie `id` of `context` from `~/.dbus-keyrings`, when the keyring is there and private. */
async function keyringCookie(context: string, id: string, uid: number): Promise<string | undefined> {
  if (!/^[^/\\ .][^/\\ ]*$/.test(context)) return undefined;
  const dir = join(process.env['HOME'] ?? homedir(), '.dbus-keyrings');
  try {
    const st = await stat(dir);
    if ((st.mode & 0o077) !== 0 || st.uid !== uid) return undefined;
    for (const line of (await readFile(join(dir, context), 'ascii')).split('\n')) {
      const [cookieId, , cookie] = line.split(' ');
      if (cookieId === id && cookie !== undefined) return cookie;
    }
  } catch {
    // no keyring: the mechanism cannot be used here
  }
  return undefined;
}
