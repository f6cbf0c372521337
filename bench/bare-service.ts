/**
 * The memory yardstick: a bare dbus-next service that holds the same
 * VM → state map as vmdevd and serves it as TestProperty, with nothing else
 * (no backends, no libvirt). Started with the bus address, the bus name and
 * a JSON file with the map; prints READY once it owns the name.
 */
import dbus from 'dbus-next';
import { readFileSync } from 'node:fs';

const [address, name, mapFile] = process.argv.slice(2) as [string, string, string];
const map = JSON.parse(readFileSync(mapFile, 'utf8')) as Record<string, string>;

class Module extends dbus.interface.Interface {
  get TestProperty(): Record<string, string> {
    return map;
  }
}
Module.configureMembers({ properties: { TestProperty: { signature: 'a{ss}', access: 'read' } } });

const bus = dbus.sessionBus({ busAddress: address });
bus.export('/org/example/dbustest', new Module('org.example.dbustest.Module'));
bus.on('connect', () => {
  void bus.requestName(name, dbus.NameFlag.DO_NOT_QUEUE).then(() => console.log('READY'));
});
process.on('SIGTERM', () => {
  bus.disconnect();
  process.exit(0);
});
