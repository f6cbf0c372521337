/**
 * What vmdevd relies on inside dbus-next beyond its public API (see
 * src/dbus/README.md), pinned: an update of dbus-next that changes any of
 * it fails here, not in the daemon.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import dbus from 'dbus-next';
import MessageBusClass from 'dbus-next/lib/bus.js';
import { decodeMessage, messageLength } from '../../src/dbus/wire/decoder.js';
import { encodeMessage } from '../../src/dbus/wire/encoder.js';

const { Message, MessageType } = dbus;

/** A connection as MessageBus uses one: message(), the events, and a stream. */
class FakeConnection extends EventEmitter {
  readonly sent: Array<Record<string, unknown>> = [];
  ended = false;
  readonly stream = {
    writable: true,
    end: () => {
      this.ended = true;
    },
  };
  message(msg: Record<string, unknown>): void {
    this.sent.push(msg);
  }
}

/** A message as our decoder makes it from the bytes of `fields`. */
function decoded(fields: Record<string, unknown>): dbus.Message {
  const bytes = encodeMessage(fields);
  return decodeMessage(bytes, 0, messageLength(bytes, 0))!;
}

function busWithSerials(conn: FakeConnection, first: number): dbus.MessageBus {
  let next = first;
  class Counting extends MessageBusClass {
    override newSerial(): number {
      return next++;
    }
  }
  return new Counting(conn);
}

describe('dbus-next internals vmdevd relies on', () => {
  it("'dbus-next/lib/bus.js' exports the class of the buses its public API makes", () => {
    const bus = dbus.sessionBus({ busAddress: 'unix:path=/nonexistent/vmdevd-pin' });
    bus.on('error', () => {});
    assert.ok(bus instanceof MessageBusClass);
    bus.disconnect();
  });

  it('the constructor says Hello through conn.message, with a serial from newSerial(), and takes its name from the reply', async () => {
    const conn = new FakeConnection();
    const bus = busWithSerials(conn, 77);
    const hello = conn.sent[0]!;
    assert.equal(hello['serial'], 77);
    assert.equal(hello['member'], 'Hello');
    assert.equal(hello['destination'], 'org.freedesktop.DBus');
    const connected = new Promise<void>((resolve) => bus.once('connect', resolve));
    conn.emit(
      'message',
      decoded({ type: MessageType.METHOD_RETURN, serial: 1, replySerial: 77, signature: 's', body: [':1.5'] }),
    );
    await connected;
    assert.equal((bus as unknown as { name: string }).name, ':1.5');
  });

  it('call() and send() take their serials from newSerial(); replies and errors are matched by replySerial', async () => {
    const conn = new FakeConnection();
    const bus = busWithSerials(conn, 10);
    const ok = bus.call(new Message({ destination: ':1.9', path: '/', interface: 'a.b', member: 'M' }));
    const failing = bus.call(new Message({ destination: ':1.9', path: '/', interface: 'a.b', member: 'N' }));
    bus.send(new Message({ type: MessageType.SIGNAL, path: '/', interface: 'a.b', member: 'S' }));
    assert.deepEqual(
      conn.sent.map((m) => m['serial']),
      [10, 11, 12, 13],
    );
    conn.emit(
      'message',
      decoded({
        type: MessageType.ERROR,
        serial: 2,
        replySerial: 12,
        errorName: 'a.b.E',
        signature: 's',
        body: ['no'],
      }),
    );
    conn.emit(
      'message',
      decoded({ type: MessageType.METHOD_RETURN, serial: 3, replySerial: 11, signature: 'u', body: [5] }),
    );
    assert.deepEqual((await ok)!.body, [5]);
    await assert.rejects(failing, (err: { type: string; text: string }) => err.type === 'a.b.E' && err.text === 'no');
  });

  it('method handlers see every method call first; one that returns true leaves the bus silent', () => {
    const conn = new FakeConnection();
    const bus = busWithSerials(conn, 1);
    const seen: string[] = [];
    bus.addMethodHandler((msg: dbus.Message) => {
      seen.push(msg.member);
      return true;
    });
    conn.sent.length = 0;
    for (const [member, path] of [
      ['Ping', '/'],
      ['Introspect', '/anywhere'],
      ['Anything', '/org/example/dbustest'],
    ] as const) {
      conn.emit('message', decoded({ type: MessageType.METHOD_CALL, serial: 9, sender: ':1.3', path, member }));
    }
    assert.deepEqual(seen, ['Ping', 'Introspect', 'Anything']);
    assert.deepEqual(conn.sent, []);
  });

  it('disconnect() ends conn.stream', () => {
    const conn = new FakeConnection();
    const bus = busWithSerials(conn, 1);
    bus.disconnect();
    assert.equal(conn.ended, true);
  });

  it('a Message our decoder makes has the own properties of new Message(), in order, and serial reads _serial', () => {
    const fields = {
      type: MessageType.METHOD_CALL,
      serial: 42,
      flags: 1,
      path: '/a',
      interface: 'a.b',
      member: 'M',
      destination: ':1.2',
      sender: ':1.3',
      signature: 's',
      body: ['x'],
    };
    const ours = decoded(fields);
    const theirs = new Message(fields);
    assert.deepEqual(Object.keys(ours), Object.keys(theirs));
    assert.ok(ours instanceof Message);
    assert.equal(ours.serial, 42);
    assert.equal((ours as unknown as { _serial: number })._serial, 42);
  });
});
