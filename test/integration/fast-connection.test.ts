/**
 * The fast connection under dbus-next's MessageBus: on a real private
 * dbus-daemon (calls, services, order of many messages sent at once), and on
 * a fake bus for what a real one never does (garbage, a bus that stops
 * reading, closing during authentication), plus the address forms.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import dbus from 'dbus-next';
import {
  onConnectionEnd,
  openBus,
  sendSignalNow,
  sendTrusted,
  setNextSerial,
  whenWritten,
  type MessageBus,
} from '../../src/dbus/bus-connection.js';
import { MessageFramer } from '../../src/dbus/wire/decoder.js';
import { encodeBody, encodeMessage, SignalTemplate } from '../../src/dbus/wire/encoder.js';
import { BusAddressError, busTargets, createFastConnection } from '../../src/dbus/wire/fast-connection.js';
import { startPrivateBus, tcpBusConfig, type PrivateBus } from '../harness/dbus-daemon.js';
import { makeTempDir } from '../harness/temp-dir.js';

const { Message, MessageType } = dbus;
const MessageBusClass = createRequire(import.meta.url)('dbus-next/lib/bus.js') as new (conn: unknown) => MessageBus;

const uniqueName = (bus: MessageBus) => (bus as unknown as { name: string }).name;

function ping(bus: MessageBus, destination: string, path = '/'): Promise<dbus.Message | null> {
  return bus.call(new Message({ destination, path, interface: 'org.freedesktop.DBus.Peer', member: 'Ping' }));
}

function addMatch(bus: MessageBus, rule: string): Promise<dbus.Message | null> {
  return bus.call(
    new Message({
      destination: 'org.freedesktop.DBus',
      path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus',
      member: 'AddMatch',
      signature: 's',
      body: [rule],
    }),
  );
}

describe('fast connection on a private dbus-daemon', () => {
  let bus: PrivateBus;
  before(async () => {
    bus = await startPrivateBus();
  });
  after(async () => {
    await bus?.stop();
  });

  it('openBus talks to the bus on a unix socket', async () => {
    const client = await openBus(bus.address);
    try {
      assert.match(uniqueName(client), /^:1\.\d+$/);
      const reply = await client.call(
        new Message({
          destination: 'org.freedesktop.DBus',
          path: '/org/freedesktop/DBus',
          interface: 'org.freedesktop.DBus',
          member: 'ListNames',
        }),
      );
      assert.ok((reply!.body[0] as string[]).includes(uniqueName(client)));
    } finally {
      client.disconnect();
    }
  });

  it('serials wrap after 2^32 - 1 to 1, and calls go on', async () => {
    const client = await openBus(bus.address);
    try {
      setNextSerial(client, 0xfffffffe);
      const serials: number[] = [];
      for (let i = 0; i < 3; i++) {
        const msg = new Message({
          destination: 'org.freedesktop.DBus',
          path: '/org/freedesktop/DBus',
          interface: 'org.freedesktop.DBus',
          member: 'GetId',
        });
        const reply = await client.call(msg);
        serials.push(msg.serial!);
        assert.equal(reply!.type, MessageType.METHOD_RETURN);
      }
      assert.deepEqual(serials, [0xfffffffe, 0xffffffff, 1]);
    } finally {
      client.disconnect();
    }
  });

  it('the same connection and codec serve a bus on TCP', async () => {
    const tcp = await startPrivateBus(tcpBusConfig);
    try {
      assert.match(tcp.address, /^tcp:host=127\.0\.0\.1,port=\d+/);
      const server = await openBus(tcp.address);
      const client = await openBus(tcp.address);
      try {
        server.addMethodHandler((msg: dbus.Message) => {
          if (msg.member !== 'Echo') return false;
          server.send(Message.newMethodReturn(msg, 's', [msg.body[0]]));
          return true;
        });
        const reply = await client.call(
          new Message({
            destination: uniqueName(server),
            path: '/',
            interface: 'org.example.Echo',
            member: 'Echo',
            signature: 's',
            body: ['over tcp'],
          }),
        );
        assert.deepEqual(reply!.body, ['over tcp']);
      } finally {
        client.disconnect();
        server.disconnect();
      }
    } finally {
      await tcp.stop();
    }
  });

  it('refuses, with the reason, an address it cannot open', async () => {
    await assert.rejects(
      openBus('unixexec:path=/bin/true'),
      /transport "unixexec"; vmdevd connects to unix: and tcp: addresses only/,
    );
    await assert.rejects(openBus('launchd:env=X'), /transport "launchd"/);
    await assert.rejects(openBus('unix:tmpdir=/tmp'), /names no path= or abstract=/);
    await assert.rejects(openBus('tcp:host=localhost'), /no valid port=/);
  });

  it('serves an interface to a dbus-next client, and answers Peer.Ping (a plain-object reply)', async () => {
    const server = await openBus(bus.address);
    // dbus-next's own connection and codec, through its public API: another implementation.
    const client = dbus.sessionBus({ busAddress: bus.address });
    try {
      class Echo extends dbus.interface.Interface {
        Echo(what: unknown): unknown {
          return what;
        }
      }
      Echo.configureMembers({ methods: { Echo: { inSignature: 'v', outSignature: 'v' } } });
      server.export('/test/echo', new Echo('org.example.Echo'));
      await server.requestName('org.example.Echo', 0);
      const proxy = await client.getProxyObject('org.example.Echo', '/test/echo');
      const value = new dbus.Variant('a{sv}', {
        n: new dbus.Variant('x', -5n),
        b: new dbus.Variant('ay', Buffer.from([1, 2])),
      });
      const echo = proxy.getInterface('org.example.Echo')['Echo'] as (v: unknown) => Promise<unknown>;
      assert.deepStrictEqual(await echo(value), value);
      assert.equal((await ping(client, 'org.example.Echo'))!.type, MessageType.METHOD_RETURN);
    } finally {
      client.disconnect();
      server.disconnect();
    }
  });

  it('many messages sent in one tick arrive complete and in order', async () => {
    const server = await openBus(bus.address);
    const client = await openBus(bus.address);
    try {
      // Calls (the bus allows 128 pending replies per connection) and signals.
      server.addMethodHandler((msg: dbus.Message) => {
        if (msg.member !== 'Count') return false;
        server.send(Message.newMethodReturn(msg, 'u', [msg.body[0]]));
        return true;
      });
      const calls = Array.from({ length: 100 }, (_, i) =>
        client.call(
          new Message({
            destination: uniqueName(server),
            path: '/x',
            interface: 'org.example.Count',
            member: 'Count',
            signature: 'u',
            body: [i],
          }),
        ),
      );
      assert.deepEqual(
        (await Promise.all(calls)).map((r) => r!.body[0] as number),
        Array.from({ length: 100 }, (_, i) => i),
      );

      const seen: number[] = [];
      const all = new Promise<void>((resolve) =>
        server.on('message', (msg: dbus.Message) => {
          if (msg.member !== 'Tick') return;
          seen.push(msg.body[0] as number);
          if (seen.length === 3000) resolve();
        }),
      );
      await addMatch(server, "type='signal',interface='org.example.Count'");
      for (let i = 0; i < 3000; i++)
        client.send(Message.newSignal('/x', 'org.example.Count', 'Tick', 'us', [i, 'x'.repeat(i % 50)]));
      await all;
      assert.deepEqual(
        seen,
        Array.from({ length: 3000 }, (_, i) => i),
      );
    } finally {
      client.disconnect();
      server.disconnect();
    }
  });

  it('large encoded bodies, written from their own buffers, arrive in order among small messages', async () => {
    const server = await openBus(bus.address);
    const client = await openBus(bus.address);
    try {
      const seen: Array<[number, number]> = [];
      const all = new Promise<void>((resolve) =>
        server.on('message', (msg: dbus.Message) => {
          if (msg.member !== 'Map') return;
          const map = msg.body[1] as Record<string, string>;
          seen.push([msg.body[0] as number, Object.keys(map).length]);
          if (seen.length === 60) resolve();
        }),
      );
      await addMatch(server, "type='signal',interface='org.example.Maps'");
      const mapOf = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`vm-${i}`, 'running']));
      // Every third map is large (its body over 16 KiB); all sent in one tick.
      for (let i = 0; i < 60; i++) {
        const map = mapOf(i % 3 === 0 ? 2000 : i);
        sendTrusted(client, {
          type: MessageType.SIGNAL,
          path: '/x',
          interface: 'org.example.Maps',
          member: 'Map',
          signature: 'ua{ss}',
          body: [i, map],
          rawBody: encodeBody('ua{ss}', [i, map]),
        });
      }
      await all;
      assert.deepEqual(
        seen,
        Array.from({ length: 60 }, (_, i) => [i, i % 3 === 0 ? 2000 : i]),
      );
    } finally {
      client.disconnect();
      server.disconnect();
    }
  });

  it('a signal sent now is written before the tick ends, after what was sent before it, small or large', async () => {
    const server = await openBus(bus.address);
    const client = await openBus(bus.address);
    try {
      const seen: Array<[string, number]> = [];
      const all = new Promise<void>((resolve) =>
        server.on('message', (msg: dbus.Message) => {
          if (msg.interface !== 'org.example.Now') return;
          seen.push([msg.member, Object.keys(msg.body[msg.body.length - 1] as object).length]);
          if (seen.length === 4) resolve();
        }),
      );
      await addMatch(server, "type='signal',interface='org.example.Now'");
      const template = new SignalTemplate({
        path: '/x',
        interface: 'org.example.Now',
        member: 'Now',
        signature: 'a{ss}',
      });
      const mapOf = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`vm-${i}`, 'running']));
      const written: string[] = [];
      // In one tick: a message left for the end of the tick, then two sent now
      // (the second's body over 16 KiB, written from its own buffer), then one more.
      client.send(Message.newSignal('/x', 'org.example.Now', 'Before', 'a{ss}', [mapOf(1)]));
      sendSignalNow(client, template, encodeBody('a{ss}', [mapOf(2)]));
      whenWritten(client, () => written.push('first now'));
      sendSignalNow(client, template, encodeBody('a{ss}', [mapOf(2000)]));
      whenWritten(client, () => written.push('second now'));
      client.send(Message.newSignal('/x', 'org.example.Now', 'After', 'a{ss}', [mapOf(3)]));
      // Node's socket asks to wait after a write over 16 KiB: the second is
      // written in this tick too, and the connection waits for 'drain'.
      assert.deepEqual(written, ['first now'], 'handed to the socket before the tick ended');
      await all;
      assert.deepEqual(written, ['first now', 'second now']);
      assert.deepEqual(seen, [
        ['Before', 1],
        ['Now', 2],
        ['Now', 2000],
        ['After', 3],
      ]);
    } finally {
      client.disconnect();
      server.disconnect();
    }
  });

  it('a body that does not fit its signature throws to the caller and sends nothing', async () => {
    const client = await openBus(bus.address);
    try {
      assert.throws(
        () =>
          client.send(
            new Message({
              type: MessageType.SIGNAL,
              path: '/x',
              interface: 'org.example.X',
              member: 'S',
              signature: 'u',
              body: ['no'],
            }),
          ),
        /integer/,
      );
      await assert.rejects(
        client.call(
          new Message({ destination: 'org.freedesktop.DBus', path: '/', member: 'Ping', signature: 's', body: [] }),
        ),
        /body elements/,
      );
      assert.equal((await ping(client, 'org.freedesktop.DBus'))!.type, MessageType.METHOD_RETURN);
    } finally {
      client.disconnect();
    }
  });

  it('reports the end of the bus', async () => {
    const own = await startPrivateBus();
    const client = await openBus(own.address);
    const ended = new Promise<void>((resolve) => onConnectionEnd(client, resolve));
    const errors: unknown[] = [];
    client.on('error', (e) => errors.push(e));
    await own.stop();
    await ended;
  });
});

// ---- a fake bus ----------------------------------------------------------------

interface FakeBus {
  readonly address: string;
  /** Called with each connection once it has sent BEGIN and its Hello was answered. */
  onClient?: (socket: net.Socket, framer: MessageFramer) => void;
  /** Instead of answering AUTH. */
  onAuth?: (socket: net.Socket) => void;
  close(): Promise<void>;
}

async function startFakeBus(listen: string): Promise<FakeBus> {
  const sockets = new Set<net.Socket>();
  const fake: FakeBus = {
    address: '',
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    let text = '';
    let binary = false;
    const framer = new MessageFramer();
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      if (binary) {
        framer.push(chunk, (msg) => {
          if (msg.member === 'Hello') {
            socket.write(
              encodeMessage({
                type: 2,
                serial: 1,
                replySerial: msg.serial!,
                destination: ':1.1',
                sender: 'org.freedesktop.DBus',
                signature: 's',
                body: [':1.1'],
              }),
            );
            fake.onClient?.(socket, framer);
          }
        });
        return;
      }
      text += chunk.toString('latin1');
      for (;;) {
        const nl = text.indexOf('\r\n');
        if (nl < 0) break;
        const line = text.slice(0, nl).replace(/^\0/, '');
        text = text.slice(nl + 2);
        if (line.startsWith('AUTH')) {
          if (fake.onAuth) fake.onAuth(socket);
          else socket.write('OK 0123456789abcdef0123456789abcdef\r\n');
        } else if (line === 'BEGIN') {
          binary = true;
          if (text.length > 0) socket.emit('data', Buffer.from(text, 'latin1'));
          return;
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(listen, resolve));
  return Object.assign(fake, {
    address: listen.startsWith('\0') ? `unix:abstract=${listen.slice(1)}` : `unix:path=${listen}`,
  });
}

describe('fast connection on a fake bus', () => {
  it('tries the addresses in order; abstract sockets, %-escapes and guid= work', async () => {
    const name = `vmdevd-fake-${process.pid}`;
    const fake = await startFakeBus(`\0${name}`);
    try {
      const bus = await openBus(
        `unix:path=/nonexistent/socket,guid=00;unix:abstract=${name.replace('-', '%2d')},guid=0123`,
      );
      assert.equal(uniqueName(bus), ':1.1');
      bus.disconnect();
    } finally {
      await fake.close();
    }
    assert.deepEqual(busTargets('unix:path=/a%20b,guid=1'), [
      { kind: 'unix', path: '/a b', describe: 'unix:path=/a b' },
    ]);
    assert.deepEqual(busTargets('tcp:host=127.0.0.1,port=5,family=ipv4;unix:abstract=x'), [
      { kind: 'tcp', host: '127.0.0.1', port: 5, family: 4, describe: 'tcp:host=127.0.0.1,port=5' },
      { kind: 'unix', path: '\0x', describe: 'unix:abstract=x' },
    ]);
    assert.throws(() => busTargets('nonce-tcp:host=x,port=1'), BusAddressError);
    assert.throws(() => busTargets('unix:path=/a;autolaunch:'), BusAddressError);
    assert.throws(() => busTargets('tcp:host=x,port=1,family=ipx'), /family=ipx/);
    assert.throws(() => busTargets(''), /empty/);
  });

  it('no address answers: one error naming each', async () => {
    await assert.rejects(
      openBus('unix:path=/nonexistent/a;unix:path=/nonexistent/b'),
      /\/nonexistent\/a: .*ENOENT.*\/nonexistent\/b: .*ENOENT/,
    );
  });

  it('malformed input from the bus is an error and ends the connection, no crash', async () => {
    const dir = makeTempDir('vmdevd-fake-');
    const fake = await startFakeBus(dir.file('bus'));
    let client: net.Socket | undefined;
    fake.onClient = (socket) => (client = socket);
    try {
      const bus = await openBus(fake.address);
      const error = new Promise<Error>((resolve) => bus.once('error', resolve));
      const ended = new Promise<void>((resolve) => onConnectionEnd(bus, resolve));
      // Written only now that the test listens: written earlier, it could
      // arrive together with the reply to Hello, before anyone listened.
      client!.write(Buffer.from('this is not a D-Bus message at all'));
      assert.match((await error).message, /malformed message from the bus: not a message/);
      await ended;
    } finally {
      await fake.close();
      dir.remove();
    }
  });

  it('a bus that closes during authentication fails openBus with that, not a timeout', async () => {
    const dir = makeTempDir('vmdevd-fake-');
    const fake = await startFakeBus(dir.file('bus'));
    fake.onAuth = (socket) => socket.end();
    try {
      // A timeout would say "no answer within 10 s".
      await assert.rejects(openBus(fake.address), /the bus closed the connection during authentication/);
    } finally {
      await fake.close();
      dir.remove();
    }
  });

  it('whenWritten: at once when nothing waits, after the write of the tick, and after drain when the bus stops reading', async () => {
    const dir = makeTempDir('vmdevd-fake-');
    const fake = await startFakeBus(dir.file('bus'));
    let client: net.Socket | undefined;
    fake.onClient = (socket) => (client = socket);
    try {
      const bus = await openBus(fake.address);
      const calls: string[] = [];
      whenWritten(bus, () => calls.push('idle'));
      assert.deepEqual(calls, ['idle'], 'nothing waits: at once');
      bus.send(Message.newSignal('/x', 'org.example.X', 'Small', 's', ['x']));
      whenWritten(bus, () => calls.push('small'));
      assert.deepEqual(calls, ['idle'], 'not before the write at the end of the tick');
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(calls, ['idle', 'small']);

      client!.pause();
      // Far more than a socket buffer holds: the write waits for 'drain'.
      const big = 'x'.repeat(1 << 20);
      for (let i = 0; i < 8; i++) bus.send(Message.newSignal('/x', 'org.example.X', 'Big', 's', [big]));
      const written = new Promise<void>((resolve) => whenWritten(bus, resolve));
      whenWritten(bus, () => calls.push('big'));
      for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
      assert.deepEqual(calls, ['idle', 'small'], 'not while the bus reads nothing');
      client!.resume();
      await written;
      assert.deepEqual(calls, ['idle', 'small', 'big']);
      // The fake bus reads no further than Hello: closing it resets the connection.
      bus.on('error', () => {});
      const ended = new Promise<void>((resolve) => onConnectionEnd(bus, resolve));
      bus.disconnect();
      await ended;
    } finally {
      await fake.close();
      dir.remove();
    }
  });

  it('a bus that stops reading: output waits in order up to the bound, then the connection fails', async () => {
    const dir = makeTempDir('vmdevd-fake-');
    const fake = await startFakeBus(dir.file('bus'));
    let stalled: net.Socket | undefined;
    fake.onClient = (socket) => {
      stalled = socket;
      socket.pause();
    };
    try {
      const conn = createFastConnection({ busAddress: fake.address, maxQueuedBytes: 1 << 20 });
      const bus = new MessageBusClass(conn);
      await new Promise((resolve) => bus.once('connect', resolve));
      const errors: Error[] = [];
      const error = new Promise<Error>((resolve) =>
        bus.on('error', (e: Error) => resolve(errors[errors.push(e) - 1]!)),
      );
      const big = 'x'.repeat(60_000);
      let sent = 0;
      // Each tick's batch is written once; keep sending until the bound is hit.
      while (conn.stream.writable && sent < 2000) {
        for (let i = 0; i < 4; i++) bus.send(Message.newSignal('/x', 'org.example.X', 'Big', 's', [big]));
        sent += 4;
        await new Promise((r) => setImmediate(r));
      }
      assert.match((await error).message, /has not read the last \d+ bytes/);
      assert.ok(sent < 2000, `still writable after ${sent} messages of 60 kB`);
      assert.ok(stalled);
    } finally {
      await fake.close();
      dir.remove();
    }
  });
});
