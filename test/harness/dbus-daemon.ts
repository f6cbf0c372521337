/**
 * A private dbus-daemon for tests, with a session-style policy by default
 * or with a caller-supplied configuration (for policy tests).
 */
import { existsSync, writeFileSync } from 'node:fs';
import { create } from 'xmlbuilder2';
import { startProcess, type ManagedProcess } from './process.js';
import { makeTempDir, type TempDir } from './temp-dir.js';

export interface PrivateBus {
  readonly address: string;
  readonly socket: string;
  readonly process: ManagedProcess;
  readonly dir: TempDir;
  stop(): Promise<void>;
}

/** A session-style bus configuration that lets everyone do everything. */
export function openBusConfig(socket: string): string {
  return sessionConfig(`unix:path=${socket}`, 'EXTERNAL');
}

/**
 * A session-style bus on TCP (loopback, a port the kernel picks) with
 * anonymous authentication, as a bus reached over the network would be.
 */
export function tcpBusConfig(): string {
  return sessionConfig('tcp:host=127.0.0.1,bind=127.0.0.1,port=0,family=ipv4', 'ANONYMOUS');
}

function sessionConfig(listen: string, auth: 'EXTERNAL' | 'ANONYMOUS'): string {
  const doc = create({ version: '1.0' })
    .dtd({
      pubID: '-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN',
      sysID: 'http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd',
    })
    .ele('busconfig');
  doc.ele('type').txt('session');
  doc.ele('listen').txt(listen);
  doc.ele('auth').txt(auth);
  if (auth === 'ANONYMOUS') doc.ele('allow_anonymous');
  const policy = doc.ele('policy', { context: 'default' });
  policy.ele('allow', { send_destination: '*', eavesdrop: 'true' });
  policy.ele('allow', { eavesdrop: 'true' });
  policy.ele('allow', { own: '*' });
  return doc.end({ prettyPrint: true });
}

/**
 * A system-style bus configuration: the default policy of Debian's
 * /usr/share/dbus-1/system.conf (no one owns names or calls methods unless
 * a policy file allows it; signals and requested replies pass) on a
 * private socket, plus `<include>`s of policy files such as the real one
 * from dbus/. Every local user may connect.
 */
export function systemBusConfig(socket: string, includes: readonly string[]): string {
  const doc = create({ version: '1.0' })
    .dtd({
      pubID: '-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN',
      sysID: 'http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd',
    })
    .ele('busconfig');
  doc.ele('type').txt('system');
  doc.ele('listen').txt(`unix:path=${socket}`);
  doc.ele('auth').txt('EXTERNAL');
  const policy = doc.ele('policy', { context: 'default' });
  policy.ele('allow', { user: '*' });
  policy.ele('deny', { own: '*' });
  policy.ele('deny', { send_type: 'method_call' });
  policy.ele('allow', { send_type: 'signal' });
  policy.ele('allow', { send_requested_reply: 'true', send_type: 'method_return' });
  policy.ele('allow', { send_requested_reply: 'true', send_type: 'error' });
  for (const type of ['method_call', 'method_return', 'error', 'signal']) policy.ele('allow', { receive_type: type });
  for (const iface of [
    'org.freedesktop.DBus',
    'org.freedesktop.DBus.Introspectable',
    'org.freedesktop.DBus.Properties',
  ]) {
    policy.ele('allow', { send_destination: 'org.freedesktop.DBus', send_interface: iface });
  }
  policy.ele('deny', {
    send_destination: 'org.freedesktop.DBus',
    send_interface: 'org.freedesktop.DBus',
    send_member: 'UpdateActivationEnvironment',
  });
  for (const file of includes) doc.ele('include').txt(file);
  return doc.end({ prettyPrint: true });
}

/**
 * Starts a dbus-daemon and resolves once it listens. `config` receives the
 * socket path and returns the configuration text.
 */
export async function startPrivateBus(
  config: (socket: string, dir: TempDir) => string = openBusConfig,
): Promise<PrivateBus> {
  const dir = makeTempDir('vmdevd-bus-');
  const socket = dir.file('bus.socket');
  const configFile = dir.file('bus.conf');
  writeFileSync(configFile, config(socket, dir));
  const proc = startProcess('dbus-daemon', ['--config-file', configFile, '--nofork', '--print-address=1']);
  let address = `unix:path=${socket}`;
  try {
    const [line] = await proc.waitForOutput(/^(unix|tcp):[^\n]+$/m, 10_000);
    if (line.startsWith('tcp:')) address = line.trim();
    else if (!existsSync(socket)) throw new Error(`dbus-daemon printed ${line} but ${socket} does not exist`);
  } catch (err) {
    await proc.stop();
    dir.remove();
    throw err;
  }
  return {
    address,
    socket,
    process: proc,
    dir,
    async stop() {
      await proc.stop(5000);
      dir.remove();
    },
  };
}
