/* Opening a bus connection the same way in every sd-bus tool. */
#pragma once

#include <systemd/sd-bus.h>

/* Connects to address (a D-Bus address string) or, when address is NULL,
 * to the session bus named by DBUS_SESSION_BUS_ADDRESS. Returns a negative
 * errno on failure. */
int bus_open(const char *address, const char *description, sd_bus **out);


/* For a relay that serves vmdevd's object: opens the bus at address (as
 * bus_open, described as prog), serves vtable with userdata on
 * VMDEVD_OBJECT_PATH and VMDEVD_INTERFACE, owns name, and returns the
 * connection's fd for an event loop to watch. On failure prints why,
 * prefixed with prog, and returns a negative errno. *out is set once the
 * bus is open, so the caller releases it in either case. */
int bus_serve(const char *prog, const char *address, const char *name, const sd_bus_vtable *vtable,
              void *userdata, sd_bus **out);
