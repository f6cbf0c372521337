/* Opening a bus connection the same way in every sd-bus tool. */
#pragma once

#include <systemd/sd-bus.h>

/* Connects to address (a D-Bus address string) or, when address is NULL,
 * to the session bus named by DBUS_SESSION_BUS_ADDRESS. Returns a negative
 * errno on failure. */
int bus_open(const char *address, const char *description, sd_bus **out);

