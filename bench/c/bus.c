#include "bus.h"

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
