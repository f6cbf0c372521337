#!/usr/bin/python3
"""A client of vmdevd on the system bus, for the system test, as whoever runs it.

Usage:
  system_client.py detach SELECTOR DEVICES_JSON TIMEOUT_S [--until-released]
  system_client.py hostile
  system_client.py oversized

With python3-dbus-next. Prints one JSON object per line.

detach: subscribes to the signals of the name's current owner (by its unique
name, so a signal sent after the name was released is still seen) and to
NameOwnerChanged for the name, then calls TestMethod. Prints {"reply": …}
(or {"error": …}) when the call returns, and then {"events": […], "missing":
[…]}: every outcome signal and NameOwnerChanged in the order they arrived,
once every device has its outcome (and, with --until-released, the name has
been released), or when TIMEOUT_S ran out (the labels still without an
outcome in "missing").

hostile: sends Properties.Get with a body of signature "h" (a unix fd index,
and no fd), then Properties.Get Backends on the same connection: its reply
comes after the first message was handled. Prints both results and the
sender of the second reply.

oversized: calls TestMethod with a body over 4 MiB; prints the reply.
"""
import asyncio
import json
import sys

from dbus_next import BusType, Message, MessageType
from dbus_next.aio import MessageBus

NAME = "org.example.dbustest"
PATH = "/org/example/dbustest"
IFACE = "org.example.dbustest.Module"
PROPS = "org.freedesktop.DBus.Properties"
OUTCOMES = ("DeviceDetached", "DeviceDetachFailed")


def emit(obj):
    print(json.dumps(obj), flush=True)


def bus_call(member, signature="", body=None):
    return Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                   interface="org.freedesktop.DBus", member=member, signature=signature, body=body or [])


def result(reply):
    if reply.message_type == MessageType.METHOD_RETURN:
        return {"ok": True, "body": [str(v) for v in reply.body], "sender": reply.sender}
    return {"ok": False, "error": reply.error_name, "message": (reply.body or [""])[0], "sender": reply.sender}


async def checked(bus, message):
    reply = await bus.call(message)
    if reply.message_type != MessageType.METHOD_RETURN:
        raise RuntimeError(f"{message.member}: {reply.error_name}: {reply.body}")
    return reply.body


async def detach(selector, devices_json, timeout, until_released):
    devices = json.loads(devices_json)
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    # Starts the service if it is not running, so that it has an owner to follow.
    await checked(bus, Message(destination=NAME, path=PATH, interface="org.freedesktop.DBus.Peer", member="Ping"))
    [owner] = await checked(bus, bus_call("GetNameOwner", "s", [NAME]))

    events = []
    missing = set(devices)
    released = asyncio.Event()
    done = asyncio.Event()

    def check_done():
        if not missing and (released.is_set() or not until_released):
            done.set()

    def on_message(msg):
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.sender == owner and msg.interface == IFACE and msg.member in OUTCOMES:
            events.append({"signal": msg.member, "args": msg.body})
            missing.discard(msg.body[1])
        elif msg.member == "NameOwnerChanged" and msg.body[0] == NAME:
            events.append({"signal": "NameOwnerChanged", "args": msg.body})
            if msg.body[2] == "":
                released.set()
        check_done()

    bus.add_message_handler(on_message)
    for rule in (f"type='signal',sender='{owner}',interface='{IFACE}'",
                 f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{NAME}'"):
        await checked(bus, bus_call("AddMatch", "s", [rule]))

    # Subscribed first: an outcome that comes with the reply is not missed.
    reply = await bus.call(Message(destination=NAME, path=PATH, interface=IFACE, member="TestMethod",
                                   signature="sa{sas}", body=[selector, devices]))
    if reply.message_type == MessageType.METHOD_RETURN:
        emit({"reply": reply.body[0], "owner": owner})
    else:
        emit({"error": reply.error_name, "message": (reply.body or [""])[0]})
        missing.clear()
    check_done()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    emit({"events": events, "missing": sorted(missing), "released": released.is_set()})
    bus.disconnect()


async def hostile():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    # A unix fd index with no fd: the bus passes it on, as the policy lets
    # everyone call Properties.Get.
    first = await bus.call(Message(destination=NAME, path=PATH, interface=PROPS, member="Get",
                                   signature="h", body=[0]))
    second = await bus.call(Message(destination=NAME, path=PATH, interface=PROPS, member="Get",
                                    signature="ss", body=[IFACE, "Backends"]))
    emit({"hostile": result(first), "after": result(second)})
    bus.disconnect()


async def oversized():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    token = "x" * (5 * 1024 * 1024)
    reply = await bus.call(Message(destination=NAME, path=PATH, interface=IFACE, member="TestMethod",
                                   signature="sa{sas}", body=["nothing", {"big": ["type=disk", token]}]))
    emit({"oversized": result(reply)})
    bus.disconnect()


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command == "detach" and (len(argv) == 5 or (len(argv) == 6 and argv[5] == "--until-released")):
        asyncio.run(detach(argv[2], argv[3], float(argv[4]), len(argv) == 6))
    elif command == "hostile" and len(argv) == 2:
        asyncio.run(hostile())
    elif command == "oversized" and len(argv) == 2:
        asyncio.run(oversized())
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
