/* event-relay: the floor for a daemon that turns libvirt's lifecycle events
 * into a D-Bus signal carrying the state map.
 *
 * It does the least such a daemon can do: it lists the domains once, keeps
 * a name → state map, and in libvirt's own event callback (libvirt's
 * default event loop, on its own thread) updates the entry and sends the
 * whole map as an a{ss} signal, written before the callback returns. No
 * queue, no second thread, no checks. A listener on the bus (signal-probe)
 * sees the signal one process and one dbus-daemon after libvirtd's event;
 * what vmdevd or libvirt-dbus take beyond this relay is their own work.
 *
 * Prints {"type":"ready"} once it owns its name and listens; ends on
 * SIGTERM or SIGINT. */
#include "bus.h"
#include "virt-loop.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    sd_bus *bus;
    const char *path, *iface, *member;
    int n;
    char **names;
    const char **states;
    unsigned long long sent, failed;
} relay_t;

static const char *state_name(int state)
{
    switch (state) {
    case VIR_DOMAIN_RUNNING: return "running";
    case VIR_DOMAIN_PAUSED: return "paused";
    case VIR_DOMAIN_SHUTOFF: return "shutoff";
    default: return "other";
    }
}

static const char *event_state(int event)
{
    switch (event) {
    case VIR_DOMAIN_EVENT_STARTED:
    case VIR_DOMAIN_EVENT_RESUMED: return "running";
    case VIR_DOMAIN_EVENT_SUSPENDED: return "paused";
    case VIR_DOMAIN_EVENT_STOPPED: return "shutoff";
    default: return NULL;
    }
}

static int send_map(relay_t *relay)
{
    sd_bus_message *m = NULL;
    int r = sd_bus_message_new_signal(relay->bus, &m, relay->path, relay->iface, relay->member);

    if (r >= 0)
        r = sd_bus_message_open_container(m, 'a', "{ss}");
    for (int i = 0; r >= 0 && i < relay->n; i++)
        r = sd_bus_message_append(m, "{ss}", relay->names[i], relay->states[i]);
    if (r >= 0)
        r = sd_bus_message_close_container(m);
    if (r >= 0)
        r = sd_bus_send(relay->bus, m, NULL);
    if (r >= 0)
        r = sd_bus_flush(relay->bus);
    sd_bus_message_unref(m);
    return r;
}

static int on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
    relay_t *relay = opaque;
    const char *name = virDomainGetName(dom);
    const char *state = event_state(event);

    (void)conn, (void)detail;
    if (!name || !state)
        return 0;
    for (int i = 0; i < relay->n; i++) {
        if (strcmp(relay->names[i], name) == 0) {
            relay->states[i] = state;
            if (send_map(relay) < 0)
                relay->failed++;
            else
                relay->sent++;
            break;
        }
    }
    return 0;
}

static void usage(FILE *f)
{
    fputs("usage: event-relay --uri URI --address ADDRESS --name BUSNAME\n"
          "                   [--path PATH] [--interface IFACE] [--member NAME]\n"
          "Sends the name → state map of URI's domains as an a{ss} signal on\n"
          "every lifecycle event, from libvirt's event callback.\n",
          f);
}

int main(int argc, char **argv)
{
    enum { OPT_URI = 256, OPT_ADDRESS, OPT_NAME, OPT_PATH, OPT_INTERFACE, OPT_MEMBER };
    static const struct option options[] = {
        { "uri", required_argument, NULL, OPT_URI },
        { "address", required_argument, NULL, OPT_ADDRESS },
        { "name", required_argument, NULL, OPT_NAME },
        { "path", required_argument, NULL, OPT_PATH },
        { "interface", required_argument, NULL, OPT_INTERFACE },
        { "member", required_argument, NULL, OPT_MEMBER },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *uri = NULL, *address = NULL, *name = NULL;
    relay_t relay = { .path = "/org/example/dbustest", .iface = "org.example.dbustest.Module", .member = "TestSignal" };
    event_loop_t loop = { .wake_timer = -1 };
    virConnectPtr conn = NULL;
    virDomainPtr *domains = NULL;
    int callback_id = -1, status = 1, opt, r, sig;
    sigset_t stop;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_URI: uri = optarg; break;
        case OPT_ADDRESS: address = optarg; break;
        case OPT_NAME: name = optarg; break;
        case OPT_PATH: relay.path = optarg; break;
        case OPT_INTERFACE: relay.iface = optarg; break;
        case OPT_MEMBER: relay.member = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!uri || !address || !name || optind != argc) {
        usage(stderr);
        return 2;
    }

    /* Only the main thread takes the stop signals. */
    if (virt_init_for_sigwait("event-relay", &stop) < 0)
        return 1;
    conn = virConnectOpen(uri);
    if (!conn) {
        fprintf(stderr, "event-relay: cannot open %s: %s\n", uri, last_error());
        return 1;
    }
    relay.n = virConnectListAllDomains(conn, &domains, 0);
    if (relay.n < 0) {
        fprintf(stderr, "event-relay: listing domains: %s\n", last_error());
        goto out;
    }
    relay.names = calloc((size_t)relay.n + 1, sizeof *relay.names);
    relay.states = calloc((size_t)relay.n + 1, sizeof *relay.states);
    if (!relay.names || !relay.states) {
        fputs("event-relay: out of memory\n", stderr);
        goto out;
    }
    for (int i = 0; i < relay.n; i++) {
        int state = VIR_DOMAIN_NOSTATE, reason;

        relay.names[i] = strdup(virDomainGetName(domains[i]));
        if (!relay.names[i] || virDomainGetState(domains[i], &state, &reason, 0) < 0) {
            fprintf(stderr, "event-relay: domain state: %s\n", last_error());
            goto out;
        }
        relay.states[i] = state_name(state);
    }

    r = bus_open(address, "event-relay", &relay.bus);
    if (r >= 0)
        r = sd_bus_request_name(relay.bus, name, 0);
    if (r < 0) {
        fprintf(stderr, "event-relay: bus %s, name %s: %s\n", address, name, strerror(-r));
        goto out;
    }
    callback_id = virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                   VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), &relay, NULL);
    if (callback_id < 0) {
        fprintf(stderr, "event-relay: registering for events: %s\n", last_error());
        goto out;
    }
    if (event_loop_start(&loop, "event-relay") < 0)
        goto out;
    printf("{\"type\":\"ready\",\"domains\":%d}\n", relay.n);
    fflush(stdout);

    sigwait(&stop, &sig);
    status = 0;

out:
    /* The event thread is stopped before the callback goes, so neither runs the other's way. */
    event_loop_stop(&loop);
    if (callback_id >= 0)
        virConnectDomainEventDeregisterAny(conn, callback_id);
    if (status == 0) {
        printf("{\"type\":\"end\",\"sent\":%llu,\"failed\":%llu}\n", relay.sent, relay.failed);
        fflush(stdout);
    }
    sd_bus_flush_close_unref(relay.bus);
    for (int i = 0; i < relay.n && domains; i++) {
        virDomainFree(domains[i]);
        if (relay.names)
            free(relay.names[i]);
    }
    free(domains);
    free(relay.names);
    free(relay.states);
    virConnectClose(conn);
    return status;
}
