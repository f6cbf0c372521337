/**
 * Line-oriented logging to stderr. Under systemd (JOURNAL_STREAM is set) each
 * line starts with a syslog priority prefix so the journal records levels.
 */
import type { Logger } from '../plugin-api.js';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };
const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
const LEVEL_TAGS: Record<LogLevel, string> = { error: 'error ', warn: 'warn  ', info: 'info  ', debug: 'debug ' };

export interface LogSink {
  /** `urgent`: an error or a warning, written without delay. */
  write(line: string, urgent?: boolean): void;
}

const FLUSH_INTERVAL_MS = 10;

/**
 * stderr, until it breaks: when whoever reads it goes away (EPIPE), logging
 * stops instead of raising errors that would themselves be logged.
 */
function stderrSink(): LogSink {
  let broken = false;
  let pending = '';
  process.stderr.on('error', () => {
    broken = true;
  });
  // Lines are written at most every 10 ms, together: under load every
  // request logs a line, and a write each would cost a system call per
  // request. Errors and warnings, and whatever waits at exit, go out at once.
  // Each line is formatted when it is logged, not at the write: formatting
  // 10 ms of lines at once held up whichever call arrived meanwhile (bench/
  // README.md, "Where the tail comes from").
  let timer: NodeJS.Timeout | undefined;
  const flush = () => {
    clearTimeout(timer);
    timer = undefined;
    if (pending === '') return;
    const text = pending;
    pending = '';
    if (!broken) process.stderr.write(text);
  };
  process.on('exit', flush);
  return {
    write(line: string, urgent?: boolean) {
      pending += line;
      if (urgent) flush();
      else timer ??= setTimeout(flush, FLUSH_INTERVAL_MS).unref();
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

  constructor(
    level: LogLevel = 'info',
    private readonly sink: LogSink = stderrSink(),
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.level = level;
    this.journal = Boolean(env['JOURNAL_STREAM']);
  }

  setLevel(level: LogLevel): void {
    this.level = level;
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
