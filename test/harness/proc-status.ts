/**
 * What the kernel says about a process's memory and files, for tests that
 * print figures: read from /proc/PID, never asserted against a threshold.
 */
import { readdirSync, readFileSync } from 'node:fs';

export interface ProcessFigures {
  /** Resident set size, MiB. */
  readonly rssMiB: number;
  /** The highest resident set size so far (VmHWM), MiB. */
  readonly peakRssMiB: number;
  /** Open file descriptors. */
  readonly fds: number;
}

export function processFigures(pid: number): ProcessFigures {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return {
    rssMiB: kib('VmRSS') / 1024,
    peakRssMiB: kib('VmHWM') / 1024,
    fds: readdirSync(`/proc/${pid}/fd`).length,
  };
}

/** One line for a test's output: `rss 61.2 MiB (peak 70.1 MiB), 23 fds`. */
export function describeFigures(f: ProcessFigures): string {
  return `rss ${f.rssMiB.toFixed(1)} MiB (peak ${f.peakRssMiB.toFixed(1)} MiB), ${f.fds} fds`;
}
