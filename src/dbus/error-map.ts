/**
 * The one place where errors become D-Bus error names. Nothing else in the
 * daemon picks an error name, and no stack trace ever reaches a caller.
 */
import type { Logger } from '../plugin-api.js';
import { DBUS_ERRORS, vmdevErrorName } from '../protocol.js';
import { VmdevError, errorMessage, type ErrorKind } from '../core/errors.js';

export const INVALID_ARGS = DBUS_ERRORS.InvalidArgs;
export const UNKNOWN_METHOD = DBUS_ERRORS.UnknownMethod;
export const UNKNOWN_INTERFACE = DBUS_ERRORS.UnknownInterface;
export const UNKNOWN_OBJECT = DBUS_ERRORS.UnknownObject;
export const PROPERTY_READ_ONLY = DBUS_ERRORS.PropertyReadOnly;

/** The D-Bus error name of an error kind. */
export function errorName(kind: ErrorKind): string {
  return kind === 'InvalidArgs' ? INVALID_ARGS : vmdevErrorName(kind);
}

export interface DBusErrorReply {
  readonly name: string;
  readonly message: string;
}

/**
 * Maps anything thrown while handling a call to a D-Bus error. Typed errors
 * keep their kind and message; anything else is a bug: it is logged with its
 * stack and the caller gets `Failed` with one line.
 */
export function toDBusError(err: unknown, log: Logger, context: string): DBusErrorReply {
  if (err instanceof VmdevError) return { name: errorName(err.kind), message: err.message };
  log.error(`unexpected error in ${context}`, { error: errorMessage(err), stack: (err as Error | undefined)?.stack });
  const first = errorMessage(err).split('\n')[0]!.slice(0, 200);
  return {
    name: errorName('Failed'),
    message: `vmdevd could not handle the call (${first}); the details are in its log`,
  };
}
