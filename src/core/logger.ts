/**
 * Line-oriented logging to stderr. Under systemd (JOURNAL_STREAM is set) each
 * line starts with a syslog priority prefix so the journal records levels.
 */
import * as fs from 'node:fs';
import type { Logger } from '../plugin-api.js';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
const LEVEL_TAGS: Record<LogLevel, string> = { error: 'error ', warn: 'warn  ', info: 'info  ', debug: 'debug ' };
const PRIORITY_TAGS: Record<LogLevel, string> = { error: '<3>', warn: '<4>', info: '<6>', debug: '<7>' };

export interface LogSink {
  /** `urgent`: an error or a warning, written without delay. */
  write(line: string, urgent?: boolean): void;
  /** Resolves once every line written so far has reached the file (see `stderrSink`). */
  drain?(): Promise<void>;
}

/**
 * A sink that also takes a line in pieces (`begin`, `put`..., `end`),
 * each copied straight into the bytes it will write: the line is never
 * one string. `write(line)` is the same as one piece.
 */
export interface PieceSink extends LogSink {
  begin(): void;
  put(text: string): void;
  end(urgent: boolean): void;
}

const FLUSH_INTERVAL_MS = 10;
/** Bytes held for a file that is not taking them (journald stalled) before lines are dropped. */
const MAX_HELD_BYTES = 4 * 1024 * 1024;
const INITIAL_BUFFER_BYTES = 64 * 1024;
/** Pieces up to this length are copied by a loop rather than by Buffer#write. */
const SHORT_PIECE = 256;
/** How long the exit waits for a full pipe to take the last lines. */
const EXIT_WAIT_MS = 1000;

/**
 * The daemon's log on file descriptor 2 (stderr), until it breaks: when
 * whoever reads it goes away (EPIPE), logging stops instead of raising
 * errors that would themselves be logged.
 *
 * Lines are written at most every 10 ms, together, by libuv's thread pool
 * (`fs.write`), not by the main thread: under load every request logs a
 * line, and Node's `process.stderr` writes on the calling thread (a file
 * always, a pipe or the journal's socket whenever it has room), so that
 * write held up whichever call was in flight (bench/README.md, "Where the
 * tail comes from"). One write is in flight at a time, so lines keep
 * their order. Errors and warnings, when no write is in flight, are
 * written at once, synchronously, with what was held before them; what
 * is left at exit is too.
 *
 * Each line is encoded when it is logged, piece by piece, into the bytes
 * that will be written (two buffers, in turn: the one being written and
 * the one taking lines). Formatted as one string, each of the two lines
 * of a request cost about a kilobyte of short-lived strings, a tenth of
 * what a request allocated: more young collections on the path of calls
 * (the same section of bench/README.md).
 *
 * A file that takes nothing for long (a journal that stopped reading) does
 * not make the daemon hold ever more: past 4 MiB held, lines are dropped,
 * and a line then says how many.
 */
export function stderrSink(
  fd = 2,
  droppedLine: (count: number) => string = (count) => `log: ${count} lines dropped\n`,
): PieceSink {
  let broken = false;
  /** The bytes taking lines, and how many of them hold lines. */
  let buf: Buffer = Buffer.allocUnsafe(INITIAL_BUFFER_BYTES);
  let used = 0;
  /** A buffer written and free again, for the next turn. */
  let spare: Buffer | undefined;
  /** Where the line being put starts; whether it is being dropped. */
  let lineStart = 0;
  let open = false;
  let dropping = false;
  let dropped = 0;
  /** The bytes of the write in flight (part of `buffer`), and how many of them were written. */
  let inFlight: { readonly buffer: Buffer; readonly bytes: Buffer; written: number } | undefined;
  let timer: NodeJS.Timeout | undefined;
  let drained: Array<() => void> = [];

  /** Room for `bytes` more; the lines held so far are kept. */
  const reserve = (bytes: number) => {
    if (used + bytes <= buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(2 * buf.length, used + bytes));
    buf.copy(bigger, 0, 0, used);
    buf = bigger;
  };
  /** Appends `text`, past any bound (the line that counts dropped lines). */
  const append = (text: string) => {
    // At most 3 bytes per UTF-16 unit (a lone surrogate becomes U+FFFD).
    reserve(3 * text.length);
    const n = text.length;
    // The short pieces of a line are mostly ASCII, copied here: a call
    // into Buffer#write for each cost more than formatting the line.
    if (n <= SHORT_PIECE) {
      for (let i = 0; i < n; i++) {
        const c = text.charCodeAt(i);
        if (c >= 0x80) {
          used += buf.write(text.slice(i), used);
          return;
        }
        buf[used++] = c;
      }
      return;
    }
    used += buf.write(text, used);
  };
  /** What is held, as bytes to write (with the count of dropped lines if any); the spare buffer takes the next lines. */
  const takeHeld = (): { buffer: Buffer; bytes: Buffer } => {
    if (dropped > 0) {
      append(droppedLine(dropped));
      dropped = 0;
    }
    const taken = { buffer: buf, bytes: buf.subarray(0, used) };
    buf = spare ?? Buffer.allocUnsafe(INITIAL_BUFFER_BYTES);
    spare = undefined;
    used = 0;
    return taken;
  };
  const release = (buffer: Buffer) => {
    if (buffer.length <= MAX_HELD_BYTES) spare = buffer;
  };
  const settle = () => {
    if (inFlight !== undefined || (used > 0 && !broken)) return;
    const waiting = drained;
    drained = [];
    for (const resolve of waiting) resolve();
  };
  const fail = () => {
    broken = true;
    inFlight = undefined;
    used = 0;
    settle();
  };
  const next = () => {
    const w = inFlight!;
    fs.write(fd, w.bytes, w.written, w.bytes.length - w.written, null, (err, n) => {
      if (err) {
        // A pipe another part of the process made non-blocking: try again shortly.
        if (err.code === 'EAGAIN') setTimeout(next, FLUSH_INTERVAL_MS).unref();
        else fail();
        return;
      }
      w.written += n;
      if (w.written < w.bytes.length) return next();
      inFlight = undefined;
      release(w.buffer);
      // What was logged meanwhile goes out at once.
      if (used > 0) start();
      else settle();
    });
  };
  const start = () => {
    clearTimeout(timer);
    timer = undefined;
    if (inFlight !== undefined || broken) return;
    if (used === 0) return settle();
    inFlight = { ...takeHeld(), written: 0 };
    next();
  };
  /**
   * Writes the bytes held on this thread; false when the file is gone. A
   * file that is full (a non-blocking pipe) gets the rest from the thread
   * pool, or, at exit, when there is no later, is waited for (a second at
   * most).
   */
  const writeNow = (atExit: boolean, before?: Buffer): boolean => {
    const held = takeHeld();
    const bytes = before === undefined ? held.bytes : Buffer.concat([before, held.bytes]);
    const giveUp = Date.now() + EXIT_WAIT_MS;
    for (let off = 0; off < bytes.length;) {
      try {
        off += fs.writeSync(fd, bytes, off);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return false;
        if (atExit) {
          if (Date.now() > giveUp) return false;
          continue;
        }
        inFlight = { buffer: held.buffer, bytes, written: off };
        next();
        return true;
      }
    }
    release(held.buffer);
    return true;
  };
  process.on('exit', () => {
    clearTimeout(timer);
    if (broken) return;
    if (open) used = lineStart;
    // A write still in flight may or may not have happened: its text is
    // written again rather than risk losing it.
    const rest = inFlight === undefined ? undefined : inFlight.bytes.subarray(inFlight.written);
    inFlight = undefined;
    writeNow(true, rest);
  });

  const sink: PieceSink = {
    begin() {
      // A line left open (its formatting threw) is taken back.
      if (open) used = lineStart;
      lineStart = used;
      open = true;
      dropping = false;
    },
    put(text: string) {
      if (broken || dropping) return;
      // Bytes are at least as many as UTF-16 units: a line that cannot fit is not copied at all.
      if (used + text.length > MAX_HELD_BYTES) {
        dropping = true;
        return;
      }
      append(text);
    },
    end(urgent: boolean) {
      open = false;
      if (broken) return;
      if (dropping || used > MAX_HELD_BYTES) {
        used = lineStart;
        dropping = false;
        dropped++;
        return;
      }
      if (urgent && inFlight === undefined) {
        clearTimeout(timer);
        timer = undefined;
        if (!writeNow(false)) fail();
      } else timer ??= setTimeout(start, FLUSH_INTERVAL_MS).unref();
    },
    write(line: string, urgent?: boolean) {
      sink.begin();
      sink.put(line);
      sink.end(urgent === true);
    },
    drain() {
      start();
      return new Promise((resolve) => {
        drained.push(resolve);
        settle();
      });
    },
  };
  return sink;
}

/** A value as it appears after `key=`: bare when it can be, else quoted as JSON. */
function formatValue(value: unknown): string {
  let text: string;
  if (typeof value === 'string') text = value;
  else if (value instanceof Error) text = value.message;
  else if (value === undefined) text = '';
  else {
    try {
      text = JSON.stringify(value) ?? typeof value;
    } catch {
      // A BigInt, or an object that refers to itself or whose toJSON throws.
      text = typeof value === 'bigint' ? value.toString() : `(unencodable ${typeof value})`;
    }
  }
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

/** One line stays one line: a newline in a message is written as `\n`. */
function oneLine(text: string): string {
  return text.includes('\n') ? text.replace(/\n/g, '\\n') : text;
}

/** The pieces of one line, as one string: for a sink that takes lines whole. */
class LineText {
  text = '';
  put(piece: string): void {
    this.text += piece;
  }
}

export class RootLogger {
  private level: LogLevel;
  private readonly journal: boolean;

  private readonly sink: LogSink;
  /** The sink, when it takes lines in pieces. */
  private readonly pieces: PieceSink | undefined;

  constructor(level: LogLevel = 'info', sink?: LogSink, env: NodeJS.ProcessEnv = process.env) {
    this.level = level;
    this.journal = Boolean(env['JOURNAL_STREAM']);
    this.sink =
      sink ??
      stderrSink(2, (count) => {
        const line = new LineText();
        this.format(line, Date.now(), 'warn', 'log', `${count} lines dropped: the log file took nothing for too long`);
        return line.text;
      });
    this.pieces = typeof (this.sink as Partial<PieceSink>).begin === 'function' ? (this.sink as PieceSink) : undefined;
  }

  setLevel(level: LogLevel): void {
    this.level = level;
  }

  /**
   * Resolves once every line logged so far is written, or after
   * `timeoutMs` (a log file that takes nothing must not keep the daemon
   * from exiting; the exit writes what is left, see `stderrSink`).
   */
  drain(timeoutMs = 5000): Promise<void> {
    const drained = this.sink.drain?.();
    if (drained === undefined) return Promise.resolve();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
    return Promise.race([drained, late]).finally(() => clearTimeout(timer));
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] <= RANK[this.level];
  }

  /** A logger whose lines are tagged with `component`. */
  child(component: string): Logger {
    const log = (level: LogLevel) => (message: string, fields?: Record<string, unknown>) =>
      this.write(level, component, message, fields);
    return { error: log('error'), warn: log('warn'), info: log('info'), debug: log('debug') };
  }

  private stampMs = -1;
  private stamp = '';

  /** The time as ISO 8601, formatted once per millisecond: under load many lines share one. */
  private time(ms: number): string {
    if (ms !== this.stampMs) {
      this.stampMs = ms;
      this.stamp = new Date(ms).toISOString();
    }
    return this.stamp;
  }

  private write(level: LogLevel, component: string, message: string, fields?: Record<string, unknown>): void {
    if (!this.enabled(level)) return;
    const urgent = RANK[level] <= RANK.warn;
    const pieces = this.pieces;
    if (pieces !== undefined) {
      pieces.begin();
      this.format(pieces, Date.now(), level, component, message, fields);
      pieces.end(urgent);
      return;
    }
    const line = new LineText();
    this.format(line, Date.now(), level, component, message, fields);
    this.sink.write(line.text, urgent);
  }

  private format(
    out: { put(text: string): void },
    ms: number,
    level: LogLevel,
    component: string,
    message: string,
    fields?: Record<string, unknown>,
  ): void {
    if (this.journal) out.put(PRIORITY_TAGS[level]);
    else {
      out.put(this.time(ms));
      out.put(' ');
      out.put(LEVEL_TAGS[level]);
    }
    out.put(oneLine(component));
    out.put(': ');
    out.put(oneLine(message));
    if (fields) {
      for (const key in fields) {
        const value = fields[key];
        if (value === undefined) continue;
        out.put(' ');
        out.put(oneLine(key));
        out.put('=');
        out.put(formatValue(value));
      }
    }
    out.put('\n');
  }
}
