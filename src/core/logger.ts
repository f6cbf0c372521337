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
  write(line: string): void;
}

/**
 * stderr, until it breaks: when whoever reads it goes away (EPIPE), logging
 * stops instead of raising errors that would themselves be logged.
 */
function stderrSink(): LogSink {
  let broken = false;
  let pending: string[] = [];
  process.stderr.on('error', () => {
    broken = true;
  });
  // Lines of one turn of the event loop go out in one write: under load a
  // request and its outcomes log several lines, and a write per line would
  // cost a system call each.
  const flush = () => {
    if (pending.length === 0) return;
    const text = pending.join('');
    pending = [];
    if (!broken) process.stderr.write(text);
  };
  process.on('exit', flush);
  return {
    write: (line) => {
      if (pending.push(line) === 1) setImmediate(flush);
    },
  };
}

function formatValue(value: unknown): string {
  let text: string;
  if (typeof value === 'string') text = value;
  else if (value instanceof Error) text = value.message;
  else if (value === undefined) text = '';
  else text = JSON.stringify(value) ?? String(value);
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

export class RootLogger {
  private level: LogLevel;
  private readonly journal: boolean;

  constructor(level: LogLevel = 'info', private readonly sink: LogSink = stderrSink(), env: NodeJS.ProcessEnv = process.env) {
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
  private now(): string {
    const ms = Date.now();
    if (ms !== this.stampMs) {
      this.stampMs = ms;
      this.stamp = new Date(ms).toISOString();
    }
    return this.stamp;
  }

  private write(level: LogLevel, component: string, message: string, fields?: Record<string, unknown>): void {
    if (!this.enabled(level)) return;
    let line = this.journal ? `<${PRIORITY[level]}>` : `${this.now()} ${LEVEL_TAGS[level]}`;
    line += `${component}: ${message}`;
    if (fields) {
      for (const [key, value] of Object.entries(fields)) {
        if (value !== undefined) line += ` ${key}=${formatValue(value)}`;
      }
    }
    this.sink.write((line.includes('\n') ? line.replace(/\n/g, '\\n') : line) + '\n');
  }
}
