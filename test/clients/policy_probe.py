#!/usr/bin/python3
"""Tries every kind of call to vmdevd's bus name, as whoever runs it.

Usage: policy_probe.py BUS_ADDRESS LABEL [SIGNAL_TIMEOUT_S [SELECTOR VM=STATE]]

With python3-dbus-next: subscribes to TestSignal, makes each call below and
records "ok" or the error name of the reply, then prints "READY" and waits
for one TestSignal (the test changes a VM's state when it sees READY).
Finally prints one JSON object: {"uid", "calls": {name: result}, "signals": n}.
LABEL names the device in the TestMethod call (LABEL-attach in the
AttachDevices call), so the test can find it in the backend's journal.
TestMethod, GetDevices and AttachDevices ask for SELECTOR (default vm1),
Set writes {VM: STATE} (default vm2=paused).
"""
import asyncio
import json
import os
import sys

from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

NAME = "org.example.dbustest"
PATH = "/org/example/dbustest"
IFACE = "org.example.dbustest.Module"
PROPS = "org.freedesktop.DBus.Properties"


def bus_call(member, signature="", body=None):
    return Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                   interface="org.freedesktop.DBus", member=member,
                   signature=signature, body=body or [])


async def main(address, label, timeout, selector, vm, state):
    bus = await MessageBus(bus_address=address).connect()
    signals = []
    got = asyncio.Event()

    def on_message(msg):
        if msg.message_type == MessageType.SIGNAL and msg.member == "TestSignal":
            signals.append(msg.body[0])
            got.set()

    bus.add_message_handler(on_message)
    reply = await bus.call(bus_call(
        "AddMatch", "s",
        [f"type='signal',sender='{NAME}',interface='{IFACE}',member='TestSignal'"]))
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body

    calls = {
        "Get": dict(interface=PROPS, member="Get", signature="ss", body=[IFACE, "TestProperty"]),
        "GetAll": dict(interface=PROPS, member="GetAll", signature="s", body=[IFACE]),
        "GetDevices": dict(interface=IFACE, member="GetDevices", signature="s", body=[selector]),
        "AttachDevices": dict(interface=IFACE, member="AttachDevices", signature="sa{sas}",
                              # A disk whose file does not exist: a real hypervisor refuses it, harmlessly.
                              body=[selector, {label + "-attach": ["type=disk", "target=sdz", "bus=usb",
                                                                  "source=/nonexistent/vmdevd-probe.img"]}]),
        "Introspect": dict(interface="org.freedesktop.DBus.Introspectable", member="Introspect"),
        "Introspect /": dict(path="/", interface="org.freedesktop.DBus.Introspectable", member="Introspect"),
        "Ping": dict(interface="org.freedesktop.DBus.Peer", member="Ping"),
        "GetMachineId": dict(interface="org.freedesktop.DBus.Peer", member="GetMachineId"),
        "TestMethod": dict(interface=IFACE, member="TestMethod", signature="sa{sas}",
                           body=[selector, {label: ["type=disk", "target=vdb"]}]),
        "Set": dict(interface=PROPS, member="Set", signature="ssv",
                    body=[IFACE, "TestProperty", Variant("a{ss}", {vm: state})]),
        "unknown member": dict(interface=IFACE, member="Bogus"),
        "unknown interface": dict(interface="org.example.dbustest.Other", member="TestMethod"),
        "TestMethod without interface": dict(member="TestMethod", signature="sa{sas}",
                                             body=[selector, {label + "-noiface": ["type=disk", "target=vdc"]}]),
    }
    results = {}
    for key, spec in calls.items():
        spec = dict(spec)
        path = spec.pop("path", PATH)
        reply = await bus.call(Message(destination=NAME, path=path, **spec))
        results[key] = "ok" if reply.message_type == MessageType.METHOD_RETURN else reply.error_name

    reply = await bus.call(bus_call("RequestName", "su", [NAME, 4]))  # DO_NOT_QUEUE
    if reply.message_type == MessageType.METHOD_RETURN:
        results["RequestName"] = f"reply {reply.body[0]}"
    else:
        results["RequestName"] = reply.error_name

    print("READY", flush=True)
    try:
        await asyncio.wait_for(got.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    print(json.dumps({"uid": os.getuid(), "calls": results, "signals": len(signals)}), flush=True)
    bus.disconnect()


if __name__ == "__main__":
    vm, _, state = (sys.argv[5] if len(sys.argv) > 5 else "vm2=paused").partition("=")
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 10.0,
                     sys.argv[4] if len(sys.argv) > 4 else "vm1", vm, state))
