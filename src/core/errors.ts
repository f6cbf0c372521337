/**
 * Typed errors of the core. Each carries a kind that the D-Bus frontend maps
 * to exactly one error name; the message is one sentence a person can act on.
 */
import type { FailureKind } from '../plugin-api.js';

export type ErrorKind = FailureKind | 'InvalidArgs' | 'AmbiguousSelector' | 'AccessDenied' | 'VmNotFound';

export class VmdevError extends Error {
  override readonly name = 'VmdevError';
  constructor(
    readonly kind: ErrorKind,
    message: string,
  ) {
    // These report a caller's mistake or a state of the world, never a bug:
    // no stack trace (capturing one costs more than validating a request).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
  }
}

/** A config file or command line that cannot work; the daemon stops at start. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export function invalidArgs(message: string): VmdevError {
  return new VmdevError('InvalidArgs', message);
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
