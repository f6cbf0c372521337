#include "bus.h"

#include "contract.h"

#include <stdio.h>
#include <string.h>

int bus_open(const char *address, const char *description, sd_bus **out)
{
    sd_bus *bus = NULL;
    int r;

    if (!address) {
        r = sd_bus_open_user_with_description(&bus, description);
        if (r < 0)
            return r;
        *out = bus;
        return 0;
    }

    r = sd_bus_new(&bus);
    if (r < 0)
        return r;
    r = sd_bus_set_address(bus, address);
    if (r >= 0)
        r = sd_bus_set_bus_client(bus, 1);
    if (r >= 0)
        r = sd_bus_set_description(bus, description);
    if (r >= 0)
        r = sd_bus_start(bus);
    if (r < 0) {
        sd_bus_unref(bus);
        return r;
    }
    *out = bus;
    return 0;
}

int bus_serve(const char *prog, const char *address, const char *name, const sd_bus_vtable *vtable,
              void *userdata, sd_bus **out)
{
    int r = bus_open(address, prog, out);

    if (r >= 0)
        r = sd_bus_add_object_vtable(*out, NULL, VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE, vtable, userdata);
    if (r >= 0)
        r = sd_bus_request_name(*out, name, 0);
    if (r >= 0)
        r = sd_bus_get_fd(*out);
    if (r < 0)
        fprintf(stderr, "%s: bus %s, name %s: %s\n", prog, address ? address : "(session)", name, strerror(-r));
    return r;
}
