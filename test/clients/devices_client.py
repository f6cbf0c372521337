#!/usr/bin/python3
"""GetDevices, TestMethod and AttachDevices from Python, knowing only the interface XML.

It uses python3-dbus-next (Debian's package): lists the devices of a VM,
and with "roundtrip" gives that map to TestMethod, waits for every outcome,
then gives it to AttachDevices and waits again. It prints one JSON object
describing what it saw, for the test to check.

Usage: devices_client.py BUS_ADDRESS INTERFACE_XML SELECTOR [roundtrip]
"""
import asyncio
import json
import sys

from dbus_next.aio import MessageBus

NAME = "org.example.dbustest"
PATH = "/org/example/dbustest"
IFACE = "org.example.dbustest.Module"


async def main(address, xml_path, selector, roundtrip):
    with open(xml_path, "r") as f:
        introspection = f.read()
    bus = await MessageBus(bus_address=address).connect()
    module = bus.get_proxy_object(NAME, PATH, introspection).get_interface(IFACE)
    result = {"outcomes": []}
    waiting = set()
    done = asyncio.Event()

    def record(entry):
        result["outcomes"].append(entry)
        waiting.discard(entry[2])
        if not waiting:
            done.set()

    # dbus_next wants handlers with exactly the signal's arguments.
    def detached(vm, device):
        record(["detached", vm, device])

    def detach_failed(vm, device, error, message):
        record(["detach-failed", vm, device, error, message])

    def attached(vm, device):
        record(["attached", vm, device])

    def attach_failed(vm, device, error, message):
        record(["attach-failed", vm, device, error, message])

    # Subscribed before calling: an outcome can come right behind the reply.
    module.on_device_detached(detached)
    module.on_device_detach_failed(detach_failed)
    module.on_device_attached(attached)
    module.on_device_attach_failed(attach_failed)

    devices = await module.call_get_devices(selector)
    result["devices"] = devices
    if roundtrip:
        for call, key in ((module.call_test_method, "detach"), (module.call_attach_devices, "attach")):
            waiting.update(devices.keys())
            done.clear()
            result[key] = await call(selector, devices)
            await asyncio.wait_for(done.wait(), 60)
    print(json.dumps(result))
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], len(sys.argv) > 4 and sys.argv[4] == "roundtrip"))
