/**
 * Opening a dbus-next connection to the session bus, the system bus, or any
 * address, and waiting until it is usable.
 */
import dbus from 'dbus-next';

export type MessageBus = dbus.MessageBus;

/** `session`, `system`, or a D-Bus address such as `unix:path=/run/bus`. */
export type BusSpec = string;

export function describeBus(spec: BusSpec): string {
  if (spec === 'session') return `the session bus (${process.env['DBUS_SESSION_BUS_ADDRESS'] ?? 'address unknown'})`;
  if (spec === 'system') return `the system bus (${process.env['DBUS_SYSTEM_BUS_ADDRESS'] ?? 'unix:path=/var/run/dbus/system_bus_socket'})`;
  return spec;
}

/** Connects and resolves once the bus has answered Hello. */
export function openBus(spec: BusSpec, timeoutMs = 10_000): Promise<MessageBus> {
  return new Promise((resolve, reject) => {
    let bus: MessageBus;
    try {
      bus = spec === 'system' ? dbus.systemBus() : spec === 'session' ? dbus.sessionBus() : dbus.sessionBus({ busAddress: spec });
    } catch (err) {
      reject(new Error(`cannot connect to ${describeBus(spec)}: ${(err as Error).message}`));
      return;
    }
    const timer = setTimeout(() => {
      cleanup();
      try {
        bus.disconnect();
      } catch {
        // already gone
      }
      reject(new Error(`cannot connect to ${describeBus(spec)}: no answer within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const onConnect = () => {
      cleanup();
      resolve(bus);
    };
    const onError = (err: unknown) => {
      cleanup();
      try {
        bus.disconnect();
      } catch {
        // already gone
      }
      reject(new Error(`cannot connect to ${describeBus(spec)}: ${(err as Error)?.message ?? String(err)}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      bus.removeListener('connect', onConnect);
      bus.removeListener('error', onError);
    };
    bus.on('connect', onConnect);
    bus.on('error', onError);
  });
}
