/* detach-relay: the floor for a daemon that detaches a disk for a D-Bus
 * caller and signals its removal: vmdevd's TestMethod → DeviceDetached,
 * done with nothing between.
 *
 * One thread runs libvirt's default event loop with the bus connection
 * (sd-bus) registered in it. TestMethod(selector, {label: ["type=disk",
 * "target=DEV"]}) is answered true at once; then the relay builds
 * <disk type='file' device='disk'><target dev='DEV'/></disk> (what vmdevd
 * sends for those tokens) and hands it to a call thread, which calls
 * virDomainDetachDeviceFlags(LIVE) on the domain named by the selector
 * (looked up once, then kept). libvirt's call returns only some
 * milliseconds after the device is gone; on the loop thread, the domain's
 * next DEVICE_REMOVED, read on a second connection that makes no calls,
 * sends DeviceDetached(selector, label) meanwhile. No
 * parsing beyond that, no queue, no checks of the domain's XML, one request
 * at a time: what a native daemon cannot do with less. detach-probe's
 * vmdevd mode drives it (--dest its name).
 *
 * Prints {"type":"ready"} once it owns its name; ends on SIGTERM or SIGINT. */
#include "bus.h"
#include "contract.h"
#include "virt-loop.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    sd_bus *bus;
    int watch;
    virConnectPtr conn;        /* for the calls */
    virConnectPtr events_conn; /* for the events only, as vmdevd has: a connection in a
                                * call reads its socket on the calling thread, and hands
                                * the events it reads to the loop only afterwards */
    virDomainPtr dom; /* the last selector's domain, kept */
    char *dom_name;
    /* Shared by the loop thread and the call thread, under lock; dom and
     * dom_name are the call thread's. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool pending; /* a request waits for its DEVICE_REMOVED */
    bool call;    /* the call thread has a detach to issue */
    bool quit;
    char selector[256];
    char label[256];
    char xml[512];
    unsigned long long detached, failed;
} relay_t;

/* The call thread: issues each detach, so that the loop thread goes on
 * dispatching libvirt's events while libvirt's call is in progress. */
static void *call_main(void *arg)
{
    relay_t *relay = arg;

    pthread_mutex_lock(&relay->lock);
    for (;;) {
        while (!relay->call && !relay->quit)
            pthread_cond_wait(&relay->cond, &relay->lock);
        if (relay->quit)
            break;
        char selector[sizeof relay->selector], xml[sizeof relay->xml];

        relay->call = false;
        strcpy(selector, relay->selector);
        strcpy(xml, relay->xml);
        pthread_mutex_unlock(&relay->lock);
        if (!relay->dom_name || strcmp(relay->dom_name, selector) != 0) {
            if (relay->dom)
                virDomainFree(relay->dom);
            free(relay->dom_name);
            relay->dom = virDomainLookupByName(relay->conn, selector);
            relay->dom_name = relay->dom ? strdup(selector) : NULL;
        }
        int rc = relay->dom ? virDomainDetachDeviceFlags(relay->dom, xml, VIR_DOMAIN_AFFECT_LIVE) : -1;
        pthread_mutex_lock(&relay->lock);
        if (rc < 0) {
            fprintf(stderr, "detach-relay: detaching from %s: %s\n", selector, last_error());
            relay->pending = false;
            relay->failed++;
        }
    }
    pthread_mutex_unlock(&relay->lock);
    return NULL;
}

static int to_virt_events(int events)
{
    return ((events & POLLIN) ? VIR_EVENT_HANDLE_READABLE : 0) |
           ((events & POLLOUT) ? VIR_EVENT_HANDLE_WRITABLE : 0);
}

/* Reads and dispatches what the bus has, then watches for what it waits for next. */
static void on_bus(int watch, int fd, int events, void *opaque)
{
    relay_t *relay = opaque;
    int r;

    (void)watch, (void)fd, (void)events;
    do
        r = sd_bus_process(relay->bus, NULL);
    while (r > 0);
    if (r < 0) {
        fprintf(stderr, "detach-relay: bus: %s\n", strerror(-r));
        virEventRemoveHandle(relay->watch);
        relay->watch = -1;
        return;
    }
    r = sd_bus_get_events(relay->bus);
    virEventUpdateHandle(relay->watch, r < 0 ? 0 : to_virt_events(r));
}

static int on_device_removed(virConnectPtr conn, virDomainPtr dom, const char *alias, void *opaque)
{
    relay_t *relay = opaque;
    int r;

    (void)conn, (void)alias;
    pthread_mutex_lock(&relay->lock);
    bool mine = relay->pending && strcmp(virDomainGetName(dom), relay->selector) == 0;
    relay->pending = false;
    if (mine)
        relay->detached++;
    pthread_mutex_unlock(&relay->lock);
    if (!mine)
        return 0;
    r = sd_bus_emit_signal(relay->bus, VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE, "DeviceDetached", "ss",
                           relay->selector, relay->label);
    if (r >= 0)
        r = sd_bus_flush(relay->bus);
    if (r < 0)
        fprintf(stderr, "detach-relay: DeviceDetached: %s\n", strerror(-r));
    return 0;
}

static int test_method(sd_bus_message *m, void *userdata, sd_bus_error *error)
{
    relay_t *relay = userdata;
    const char *selector, *label = NULL, *token, *target = NULL;
    char xml[512];
    bool busy;
    int r;

    r = sd_bus_message_read(m, "s", &selector);
    if (r >= 0)
        r = sd_bus_message_enter_container(m, 'a', "{sas}");
    if (r >= 0)
        r = sd_bus_message_enter_container(m, 'e', "sas");
    if (r > 0)
        r = sd_bus_message_read(m, "s", &label);
    if (r > 0)
        r = sd_bus_message_enter_container(m, 'a', "s");
    while (r > 0 && (r = sd_bus_message_read(m, "s", &token)) > 0) {
        if (strncmp(token, "target=", 7) == 0)
            target = token + 7;
    }
    if (r < 0)
        return r;
    pthread_mutex_lock(&relay->lock);
    busy = relay->pending || relay->call;
    pthread_mutex_unlock(&relay->lock);
    if (!label || !target || busy || strlen(selector) >= sizeof(relay->selector) ||
        strlen(label) >= sizeof(relay->label) ||
        snprintf(xml, sizeof(xml), "<disk type='file' device='disk'><target dev='%s'/></disk>", target) >=
            (int)sizeof(xml))
        return sd_bus_error_set(error, "org.example.dbustest.Error.InvalidArgs",
                                "one disk by target=, one request at a time");

    /* Answered first, as vmdevd does: the outcome comes as a signal. */
    r = sd_bus_reply_method_return(m, "b", 1);
    if (r >= 0)
        r = sd_bus_flush(relay->bus);
    if (r < 0)
        return r;

    pthread_mutex_lock(&relay->lock);
    strcpy(relay->selector, selector);
    strcpy(relay->label, label);
    strcpy(relay->xml, xml);
    relay->pending = true;
    relay->call = true;
    pthread_cond_signal(&relay->cond);
    pthread_mutex_unlock(&relay->lock);
    return 0;
}

static const sd_bus_vtable vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("TestMethod", "sa{sas}", "b", test_method, 0),
    SD_BUS_SIGNAL("DeviceDetached", "ss", 0),
    SD_BUS_VTABLE_END,
};

static void usage(FILE *f)
{
    fputs("usage: detach-relay --uri URI --address ADDRESS --name BUSNAME\n"
          "Detaches a disk for TestMethod and sends DeviceDetached at its\n"
          "DEVICE_REMOVED, with nothing between.\n",
          f);
}

int main(int argc, char **argv)
{
    enum { OPT_URI = 256, OPT_ADDRESS, OPT_NAME };
    static const struct option options[] = {
        { "uri", required_argument, NULL, OPT_URI },
        { "address", required_argument, NULL, OPT_ADDRESS },
        { "name", required_argument, NULL, OPT_NAME },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *uri = NULL, *address = NULL, *name = NULL;
    relay_t relay = { .watch = -1, .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
    event_loop_t loop = { .wake_timer = -1 };
    pthread_t caller;
    bool caller_started = false;
    int callback_id = -1, status = 1, opt, sig, fd;
    sigset_t stop;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_URI: uri = optarg; break;
        case OPT_ADDRESS: address = optarg; break;
        case OPT_NAME: name = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!uri || !address || !name || optind != argc) {
        usage(stderr);
        return 2;
    }

    /* Only the main thread takes the stop signals. */
    if (virt_init_for_sigwait("detach-relay", &stop) < 0)
        return 1;
    relay.conn = virConnectOpen(uri);
    relay.events_conn = relay.conn ? virConnectOpen(uri) : NULL;
    if (!relay.events_conn) {
        fprintf(stderr, "detach-relay: cannot open %s: %s\n", uri, last_error());
        return 1;
    }
    fd = bus_serve("detach-relay", address, name, vtable, &relay, &relay.bus);
    if (fd < 0)
        goto out;
    /* From here on only the loop thread uses the bus and the connection. */
    relay.watch = virEventAddHandle(fd, VIR_EVENT_HANDLE_READABLE, on_bus, &relay, NULL);
    callback_id = virConnectDomainEventRegisterAny(relay.events_conn, NULL, VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                                                   VIR_DOMAIN_EVENT_CALLBACK(on_device_removed), &relay, NULL);
    if (relay.watch < 0 || callback_id < 0) {
        fprintf(stderr, "detach-relay: event loop: %s\n", last_error());
        goto out;
    }
    if (pthread_create(&caller, NULL, call_main, &relay) != 0) {
        fputs("detach-relay: cannot start the call thread\n", stderr);
        goto out;
    }
    caller_started = true;
    if (event_loop_start(&loop, "detach-relay") < 0)
        goto out;
    printf("{\"type\":\"ready\"}\n");
    fflush(stdout);

    sigwait(&stop, &sig);
    status = 0;

out:
    event_loop_stop(&loop);
    if (caller_started) {
        pthread_mutex_lock(&relay.lock);
        relay.quit = true;
        pthread_cond_signal(&relay.cond);
        pthread_mutex_unlock(&relay.lock);
        pthread_join(caller, NULL);
    }
    if (callback_id >= 0)
        virConnectDomainEventDeregisterAny(relay.events_conn, callback_id);
    if (relay.watch >= 0)
        virEventRemoveHandle(relay.watch);
    if (status == 0) {
        printf("{\"type\":\"end\",\"detached\":%llu,\"failed\":%llu}\n", relay.detached, relay.failed);
        fflush(stdout);
    }
    sd_bus_flush_close_unref(relay.bus);
    if (relay.dom)
        virDomainFree(relay.dom);
    free(relay.dom_name);
    virConnectClose(relay.events_conn);
    virConnectClose(relay.conn);
    return status;
}
