#!/usr/bin/python3
"""A hostile local client of vmdevd, written with other D-Bus implementations.

For every member vmdevd answers, it sends bodies the bus accepts but vmdevd
must refuse: a unix fd index ('h') with no fd, a variant holding 'h', deep
nesting, wrong signatures, each also with NO_REPLY_EXPECTED; and signals
with 'h' to vmdevd's unique name. Python's dbus_next writes those, little-
endian; GLib's GDBus writes big-endian messages, good and bad. After every
message it pings vmdevd (Peer.Ping) and waits for the answer.

Usage: hostile_client.py BUS_ADDRESS DESTINATION ROUNDS
Prints one JSON object with its counts.
"""
import asyncio
import json
import sys

import gi
from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next.aio import MessageBus

gi.require_version('Gio', '2.0')
from gi.repository import Gio, GLib  # noqa: E402

ADDRESS, DEST, ROUNDS = sys.argv[1], sys.argv[2], int(sys.argv[3])
PATH = '/org/example/dbustest'
IFACE = 'org.example.dbustest.Module'
PROPS = 'org.freedesktop.DBus.Properties'

counts = {
    'sent': 0,
    'no_reply_sent': 0,
    'errors': {},
    'returns': 0,
    'pings': 0,
    'pings_answered': 0,
    'signals_sent': 0,
    'big_endian_sent': 0,
    'big_endian_answered': 0,
}


def nested_variant(depth):
    v = Variant('s', 'bottom')
    for _ in range(depth):
        v = Variant('v', v)
    return v


def nested_array(depth):
    value = ['x']
    for _ in range(depth - 1):
        value = [value]
    return 'a' * depth + 's', [value]


# (interface, member) that vmdevd answers, and bodies it must refuse.
MEMBERS = [
    (IFACE, 'TestMethod'),
    (PROPS, 'Get'),
    (PROPS, 'GetAll'),
    (PROPS, 'Set'),
    ('org.freedesktop.DBus.Introspectable', 'Introspect'),
    ('org.freedesktop.DBus.Peer', 'GetMachineId'),
    ('org.freedesktop.DBus.Peer', 'Ping'),
]
arr_sig, arr_body = nested_array(30)
BODIES = [
    ('h', [0]),
    ('sh', ['x', 3]),
    ('v', [Variant('h', 0)]),
    ('sa{sv}', ['x', {'k': Variant('h', 1)}]),
    ('v', [nested_variant(40)]),
    (arr_sig, arr_body),
    ('i', [1]),
    ('sas', ['x', ['y']]),
    ('ssv', [IFACE, 'TestProperty', Variant('as', ['running'])]),
]


async def ping(bus):
    counts['pings'] += 1
    reply = await asyncio.wait_for(
        bus.call(Message(destination=DEST, path='/', interface='org.freedesktop.DBus.Peer', member='Ping')), 10
    )
    if reply.message_type == MessageType.METHOD_RETURN:
        counts['pings_answered'] += 1


def count_reply(reply):
    if reply is None:
        return
    if reply.message_type == MessageType.ERROR:
        counts['errors'][reply.error_name] = counts['errors'].get(reply.error_name, 0) + 1
    else:
        counts['returns'] += 1


def big_endian(conn, member_iface, member, signature, body):
    msg = Gio.DBusMessage.new_method_call(DEST, PATH, member_iface, member)
    if signature:
        msg.set_body(GLib.Variant('(' + signature + ')', tuple(body)))
    msg.set_byte_order(Gio.DBusMessageByteOrder.BIG_ENDIAN)
    counts['big_endian_sent'] += 1
    reply, _ = conn.send_message_with_reply_sync(msg, Gio.DBusSendMessageFlags.NONE, 10000, None)
    counts['big_endian_answered'] += 1
    if reply.get_message_type() == Gio.DBusMessageType.ERROR:
        name = 'BE ' + reply.get_error_name()
        counts['errors'][name] = counts['errors'].get(name, 0) + 1
        return None
    counts['returns'] += 1
    return reply.get_body()


async def main():
    bus = await MessageBus(bus_address=ADDRESS).connect()
    gio = Gio.DBusConnection.new_for_address_sync(
        ADDRESS,
        Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
        None,
        None,
    )
    big_endian_good = {}
    for _ in range(ROUNDS):
        for iface, member in MEMBERS:
            for signature, body in BODIES:
                for flags in (MessageFlag.NONE, MessageFlag.NO_REPLY_EXPECTED):
                    msg = Message(
                        destination=DEST, path=PATH, interface=iface, member=member,
                        signature=signature, body=body, flags=flags,
                    )
                    counts['sent'] += 1
                    if flags == MessageFlag.NO_REPLY_EXPECTED:
                        counts['no_reply_sent'] += 1
                        await bus.send(msg)
                    else:
                        count_reply(await asyncio.wait_for(bus.call(msg), 10))
                    await ping(bus)
        # Signals with 'h' to vmdevd's unique name (the bus routes unicast signals).
        for signature, body in BODIES[:4]:
            await bus.send(Message(
                destination=DEST, path=PATH, interface=IFACE, member='TestSignal',
                message_type=MessageType.SIGNAL, signature=signature, body=body,
            ))
            counts['signals_sent'] += 1
            await ping(bus)
        # Big-endian messages from GDBus: good ones are answered as usual, bad ones refused.
        states = big_endian(gio, PROPS, 'Get', 'ss', [IFACE, 'TestProperty'])
        if states is not None:
            big_endian_good['TestProperty'] = states.unpack()[0]
        big_endian(gio, IFACE, 'TestMethod', 'sa{sas}', ['no-such-vm', {'d1': ['type=disk', 'target=vdb']}])
        big_endian(gio, IFACE, 'TestMethod', 'sa{sas}', ['vm1', {'d1': ['type=floppy']}])
        big_endian(gio, IFACE, 'TestMethod', 'h', [0])
        big_endian(gio, PROPS, 'Get', 'sh', [IFACE, 0])
        await ping(bus)
    counts['big_endian_get_testproperty'] = big_endian_good.get('TestProperty')
    print(json.dumps(counts, sort_keys=True))
    bus.disconnect()
    gio.close_sync(None)


asyncio.run(main())
