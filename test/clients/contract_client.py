#!/usr/bin/python3
"""A D-Bus client that knows only dbus/org.example.dbustest.xml.

It uses python3-dbus-next (Debian's package) the way the original service's
clients did, and drives every member of the interface. It prints one JSON
object describing what it saw, for the test to check.

Usage: contract_client.py BUS_ADDRESS INTERFACE_XML
"""
import asyncio
import json
import sys

from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.errors import DBusError

NAME = "org.example.dbustest"
PATH = "/org/example/dbustest"
IFACE = "org.example.dbustest.Module"


async def main(address, xml_path):
    with open(xml_path, "r") as f:
        introspection = f.read()
    bus = await MessageBus(bus_address=address).connect()
    proxy = bus.get_proxy_object(NAME, PATH, introspection)
    module = proxy.get_interface(IFACE)

    result = {"signals": [], "detached": [], "failed": [], "errors": {}}
    done = asyncio.Event()
    vm2_running = asyncio.Event()
    vm2_changed = asyncio.Event()
    expected = {"py-ok", "fail-DeviceNotFound-py"}

    def on_test_signal(states):
        result["signals"].append(states)
        if states.get("vm2") == "running":
            vm2_running.set()

    def on_detached(vm, device):
        result["detached"].append([vm, device])
        expected.discard(device)
        if not expected:
            done.set()

    def on_failed(vm, device, error, message):
        result["failed"].append([vm, device, error, message])
        expected.discard(device)
        if not expected:
            done.set()

    # The interface file describes only our interface; PropertiesChanged is
    # the standard signal, followed with a match rule.
    changed = []

    def on_message(msg):
        if msg.message_type == MessageType.SIGNAL and msg.member == "PropertiesChanged" and msg.path == PATH:
            changed.append(msg.body[0])
            test_property = msg.body[1].get("TestProperty")
            if test_property is not None and test_property.value.get("vm2") == "running":
                vm2_changed.set()

    bus.add_message_handler(on_message)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=[f"type='signal',sender='{NAME}',interface='org.freedesktop.DBus.Properties'"]))
    module.on_test_signal(on_test_signal)
    module.on_device_detached(on_detached)
    module.on_device_detach_failed(on_failed)

    result["states"] = await module.get_test_property()
    result["backends"] = await module.get_backends()

    # Subscribed before calling, so no outcome can be missed; no sleep(10).
    result["accepted"] = await module.call_test_method(
        "vm1", {"py-ok": ["type=disk", "target=vdb"], "fail-DeviceNotFound-py": ["type=disk", "target=vdc"]})
    await asyncio.wait_for(done.wait(), 30)
    result["no_match"] = await module.call_test_method("nothing-is-called-this", {"d": ["type=disk", "target=vdb"]})

    for label, call in {
        "bad_type": lambda: module.call_test_method("vm1", {"d": ["type=floppy"]}),
        "ambiguous": lambda: module.call_test_method("cluster", {"d": ["type=disk", "target=vdb"]}),
        "bad_state": lambda: module.set_test_property({"vm1": "asleep"}),
    }.items():
        try:
            await call()
            result["errors"][label] = None
        except DBusError as e:
            result["errors"][label] = [e.type, e.text]
    reply = await bus.call(Message(destination=NAME, path=PATH, interface="org.freedesktop.DBus.Properties",
                                   member="Set", signature="ssv", body=[IFACE, "Backends", Variant("a{ss}", {})]))
    result["errors"]["read_only"] = [reply.error_name, reply.body[0] if reply.body else ""]

    # The write shows in both signals; the timeouts only guard against a hang.
    await module.set_test_property({"vm2": "running"})
    await asyncio.wait_for(vm2_running.wait(), 30)
    await asyncio.wait_for(vm2_changed.wait(), 30)
    result["properties_changed"] = changed
    print(json.dumps(result))
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
