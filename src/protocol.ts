/**
 * The names of vmdevd's D-Bus contract, in one place: the daemon, the
 * typed client and vmdevctl import them from here. The members themselves
 * are in `dbus/org.example.dbustest.xml`.
 */
import type { FailureKind } from './plugin-api.js';

/** The well-known name the daemon owns by default (the config's `busName`). */
export const DEFAULT_BUS_NAME = 'org.example.dbustest';
export const OBJECT_PATH = '/org/example/dbustest';
export const INTERFACE_NAME = 'org.example.dbustest.Module';

/** vmdevd's own error names are `ERROR_PREFIX` + an error kind, e.g. `…Error.Timeout`. */
export const ERROR_PREFIX = 'org.example.dbustest.Error.';

/** The kinds of vmdevd's own errors (each `ERROR_PREFIX` + kind). */
export type ErrorKind = FailureKind | 'AmbiguousSelector' | 'AccessDenied' | 'VmNotFound';

/** The standard error names vmdevd answers with. */
export const DBUS_ERRORS = {
  InvalidArgs: 'org.freedesktop.DBus.Error.InvalidArgs',
  UnknownMethod: 'org.freedesktop.DBus.Error.UnknownMethod',
  UnknownInterface: 'org.freedesktop.DBus.Error.UnknownInterface',
  UnknownObject: 'org.freedesktop.DBus.Error.UnknownObject',
  PropertyReadOnly: 'org.freedesktop.DBus.Error.PropertyReadOnly',
  LimitsExceeded: 'org.freedesktop.DBus.Error.LimitsExceeded',
  InconsistentMessage: 'org.freedesktop.DBus.Error.InconsistentMessage',
} as const;

/** The D-Bus name of one of vmdevd's error kinds. */
export function vmdevErrorName(kind: ErrorKind): string {
  return `${ERROR_PREFIX}${kind}`;
}
