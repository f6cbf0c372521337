/**
 * Modules inside dbus-next that its index does not export and that the
 * wire layer uses. They are imported (not required at run time) so that a
 * bundle holds one dbus-next: a second copy would have classes of its own,
 * and `instanceof` checks between the two would fail.
 */
declare module 'dbus-next/lib/bus.js' {
  import type dbus from 'dbus-next';
  const MessageBus: new (connection: unknown) => dbus.MessageBus;
  export default MessageBus;
}
