/**
 * Line-oriented logging to stderr. Under systemd (JOURNAL_STREAM is set) each
 * line starts with a syslog priority prefix so the journal records levels.
 */
import * as fs from 'node:fs';
import type { Logger } from '../plugin-api.js';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };
const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
const LEVEL_TAGS: Record<LogLevel, string> = { error: 'error ', warn: 'warn  ', info: 'info  ', debug: 'debug ' };

export interface LogSink {
  /** `urgent`: an error or a warning, written without delay. */
  write(line: string, urgent?: boolean): void;
  /** Resolves once every line written so far has reached the file (see `stderrSink`). */
  drain?(): Promise<void>;
}

const FLUSH_INTERVAL_MS = 10;
/** Text held for a file that is not taking it (journald stalled) before lines are dropped. */
const MAX_HELD_CHARS = 4 * 1024 * 1024;
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
 * is left at exit is too. Each line is formatted when it is logged, not
 * at the write: formatting 10 ms of lines at once held up whichever call
 * arrived meanwhile (the same section).
 *
 * A file that takes nothing for long (a journal that stopped reading) does
 * not make the daemon hold ever more: past 4 Mi characters held, lines
 * are dropped, and a line then says how many.
 */
export function stderrSink(
  fd = 2,
  droppedLine: (count: number) => string = (count) => `log: ${count} lines dropped\n`,
): LogSink {
  let broken = false;
  let held = '';
  let dropped = 0;
  /** The text of the write in flight, and how much of it was written. */
  let inFlight: { readonly bytes: Buffer; written: number } | undefined;
  let timer: NodeJS.Timeout | undefined;
  let drained: Array<() => void> = [];

  /** What is held, as bytes to write, and the count of dropped lines if any. */
  const takeHeld = (): Buffer => {
    let text = held;
    held = '';
    if (dropped > 0) {
      text += droppedLine(dropped);
      dropped = 0;
    }
    return Buffer.from(text);
  };
  const settle = () => {
    if (inFlight !== undefined || (held !== '' && !broken)) return;
    const waiting = drained;
    drained = [];
    for (const resolve of waiting) resolve();
  };
  const fail = () => {
    broken = true;
    inFlight = undefined;
    held = '';
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
      // What was logged meanwhile goes out at once.
      if (held !== '') start();
      else settle();
    });
  };
  const start = () => {
    clearTimeout(timer);
    timer = undefined;
    if (inFlight !== undefined || broken) return;
    if (held === '') return settle();
    inFlight = { bytes: takeHeld(), written: 0 };
    next();
  };
  /**
   * Writes `bytes` on this thread; false when the file is gone. A file that
   * is full (a non-blocking pipe) gets the rest from the thread pool, or,
   * at exit, when there is no later, is waited for (a second at most).
   */
  const writeNow = (bytes: Buffer, atExit: boolean): boolean => {
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
        inFlight = { bytes, written: off };
        next();
        return true;
      }
    }
    return true;
  };
  process.on('exit', () => {
    clearTimeout(timer);
    if (broken) return;
    // A write still in flight may or may not have happened: its text is
    // written again rather than risk losing it.
    const rest = inFlight === undefined ? [] : [inFlight.bytes.subarray(inFlight.written)];
    inFlight = undefined;
    writeNow(Buffer.concat([...rest, takeHeld()]), true);
  });
  return {
    write(line: string, urgent?: boolean) {
      if (broken) return;
      if (held.length + line.length > MAX_HELD_CHARS) {
        dropped++;
        return;
      }
      held += line;
      if (urgent && inFlight === undefined) {
        clearTimeout(timer);
        timer = undefined;
        if (!writeNow(takeHeld(), false)) fail();
      } else timer ??= setTimeout(start, FLUSH_INTERVAL_MS).unref();
    },
    drain() {
      start();
      return new Promise((resolve) => {
        drained.push(resolve);
        settle();
      });
    },
  };
}

function formatValue(value: unknown): string {
  let text: string;
  if (typeof value === 'string') text = value;
  else if (value instanceof Error) text = value.message;
  else if (value === undefined) text = '';
  else text = JSON.stringify(value) ?? typeof value;
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

export class RootLogger {
  private level: LogLevel;
  private readonly journal: boolean;

  private readonly sink: LogSink;

  constructor(level: LogLevel = 'info', sink?: LogSink, env: NodeJS.ProcessEnv = process.env) {
    this.level = level;
    this.journal = Boolean(env['JOURNAL_STREAM']);
    this.sink =
      sink ??
      stderrSink(2, (count) =>
        this.format(Date.now(), 'warn', 'log', `${count} lines dropped: the log file took nothing for too long`),
      );
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
    this.sink.write(this.format(Date.now(), level, component, message, fields), urgent);
  }

  private format(
    ms: number,
    level: LogLevel,
    component: string,
    message: string,
    fields?: Record<string, unknown>,
  ): string {
    let line = this.journal ? `<${PRIORITY[level]}>` : `${this.time(ms)} ${LEVEL_TAGS[level]}`;
    line += `${component}: ${message}`;
    if (fields) {
      for (const key in fields) {
        const value = fields[key];
        if (value !== undefined) line += ` ${key}=${formatValue(value)}`;
      }
    }
    return (line.includes('\n') ? line.replace(/\n/g, '\\n') : line) + '\n';
  }
}
