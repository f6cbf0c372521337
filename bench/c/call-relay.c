/* call-relay: the floor for a daemon that answers vmdevd's TestMethod on a
 * libvirt driver: the reply at once, then one libvirt call (two for a disk
 * the domain has) on a thread of its own, then the outcome as a signal,
 * with nothing between. What vmdevd does per request on test:///default,
 * done in C.
 *
 * One thread runs libvirt's default event loop with the bus connection
 * (sd-bus) registered in it. TestMethod(selector, {label: ["type=disk",
 * "target=DEV"]}) is answered true and flushed first, as vmdevd does; the
 * request goes into a queue that one call thread takes requests from, in
 * order. For each, the call thread reads the domain's live XML
 * (virDomainGetXMLDesc; the domain is looked up by name once, then kept)
 * and looks for <target dev='DEV'/> in it: absent, the outcome is
 * DeviceNotFound; present, it calls virDomainDetachDeviceFlags(LIVE) with
 * <disk type='file' device='disk'><target dev='DEV'/></disk> and the
 * outcome is what libvirt said (the test driver refuses: NotSupported).
 * Outcomes go back to the loop thread through an eventfd, which sends
 * DeviceDetached or DeviceDetachFailed for each and flushes once. No
 * parsing of the XML beyond that search, no checks of the devices: what a
 * native daemon with vmdevd's contract cannot do with less. bench/c/load
 * drives it as it drives vmdevd (--dest its name, --call testmethod).
 *
 * Prints {"type":"ready"} once it owns its name; ends on SIGTERM or SIGINT
 * and prints {"type":"end","requests":N}. */
#include "bus.h"
#include "contract.h"
#include "virt-loop.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define ERROR_PREFIX "org.example.dbustest.Error."

typedef struct job {
    struct job *next;
    char *selector;
    char *label;
    char *target;
    /* Set by the call thread: NULL error is a detach done. */
    const char *error;
    char *message;
} job_t;

typedef struct {
    job_t *head, *tail;
} queue_t;

typedef struct {
    sd_bus *bus;
    int bus_watch;
    int done_fd; /* eventfd: the call thread has outcomes for the loop thread */
    int done_watch;
    virConnectPtr conn; /* the call thread's */
    virDomainPtr dom;   /* the last selector's domain, kept */
    char *dom_name;
    pthread_mutex_t lock; /* guards the queues and quit */
    pthread_cond_t cond;
    queue_t calls, done;
    bool quit;
    unsigned long long requests;
} relay_t;

static void push(queue_t *q, job_t *j)
{
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
}

static job_t *take_all(queue_t *q)
{
    job_t *all = q->head;

    q->head = q->tail = NULL;
    return all;
}

static void job_free(job_t *j)
{
    free(j->selector);
    free(j->label);
    free(j->target);
    free(j->message);
    free(j);
}

static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *format(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

/* One request's libvirt calls, on the call thread. */
static void run_job(relay_t *relay, job_t *j)
{
    if (!relay->dom_name || strcmp(relay->dom_name, j->selector) != 0) {
        if (relay->dom)
            virDomainFree(relay->dom);
        free(relay->dom_name);
        relay->dom = virDomainLookupByName(relay->conn, j->selector);
        relay->dom_name = relay->dom ? strdup(j->selector) : NULL;
    }
    if (!relay->dom) {
        j->error = ERROR_PREFIX "Failed";
        j->message = format("looking up VM \"%s\": %s", j->selector, last_error());
        return;
    }
    char *xml = virDomainGetXMLDesc(relay->dom, 0);
    if (!xml) {
        j->error = ERROR_PREFIX "BackendUnavailable";
        j->message = format("reading the XML of VM \"%s\": %s", j->selector, last_error());
        return;
    }
    char *needle = format("<target dev='%s'", j->target);
    bool present = needle && strstr(xml, needle);
    free(needle);
    free(xml);
    if (!present) {
        j->error = ERROR_PREFIX "DeviceNotFound";
        j->message = format("VM \"%s\" has no disk %s", j->selector, j->target);
        return;
    }
    char *disk = format("<disk type='file' device='disk'><target dev='%s'/></disk>", j->target);
    if (disk && virDomainDetachDeviceFlags(relay->dom, disk, VIR_DOMAIN_AFFECT_LIVE) == 0) {
        j->error = NULL;
    } else {
        virErrorPtr e = virGetLastError();
        bool unsupported = e && (e->code == VIR_ERR_NO_SUPPORT || e->code == VIR_ERR_OPERATION_UNSUPPORTED ||
                                 e->code == VIR_ERR_OPERATION_INVALID);
        j->error = unsupported ? ERROR_PREFIX "NotSupported" : ERROR_PREFIX "RemovalFailed";
        j->message = format("detaching the disk %s: %s", j->target, last_error());
    }
    free(disk);
}

/* The call thread: takes requests in order, hands their outcomes back. */
static void *call_main(void *arg)
{
    relay_t *relay = arg;

    pthread_mutex_lock(&relay->lock);
    for (;;) {
        while (!relay->calls.head && !relay->quit)
            pthread_cond_wait(&relay->cond, &relay->lock);
        if (relay->quit)
            break;
        job_t *j = relay->calls.head;
        relay->calls.head = j->next;
        if (!relay->calls.head)
            relay->calls.tail = NULL;
        pthread_mutex_unlock(&relay->lock);
        run_job(relay, j);
        pthread_mutex_lock(&relay->lock);
        bool first = relay->done.head == NULL;
        push(&relay->done, j);
        if (first) {
            uint64_t one = 1;
            if (write(relay->done_fd, &one, sizeof one) < 0)
                perror("call-relay: eventfd");
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

static void watch_bus(relay_t *relay)
{
    int r = sd_bus_get_events(relay->bus);

    virEventUpdateHandle(relay->bus_watch, r < 0 ? 0 : to_virt_events(r));
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
        fprintf(stderr, "call-relay: bus: %s\n", strerror(-r));
        virEventRemoveHandle(relay->bus_watch);
        relay->bus_watch = -1;
        return;
    }
    watch_bus(relay);
}

/* On the loop thread: sends the outcomes the call thread has finished. */
static void on_done(int watch, int fd, int events, void *opaque)
{
    relay_t *relay = opaque;
    uint64_t n;
    int r = 0;

    (void)watch, (void)events;
    if (read(fd, &n, sizeof n) < 0 && errno != EAGAIN)
        perror("call-relay: eventfd");
    pthread_mutex_lock(&relay->lock);
    job_t *j = take_all(&relay->done);
    pthread_mutex_unlock(&relay->lock);
    while (j) {
        job_t *next = j->next;
        if (r >= 0)
            r = j->error ? sd_bus_emit_signal(relay->bus, VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE, "DeviceDetachFailed",
                                              "ssss", j->selector, j->label, j->error,
                                              j->message ? j->message : "")
                         : sd_bus_emit_signal(relay->bus, VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE, "DeviceDetached",
                                              "ss", j->selector, j->label);
        job_free(j);
        j = next;
    }
    if (r >= 0)
        r = sd_bus_flush(relay->bus);
    if (r < 0)
        fprintf(stderr, "call-relay: outcome: %s\n", strerror(-r));
    watch_bus(relay);
}

static int test_method(sd_bus_message *m, void *userdata, sd_bus_error *error)
{
    relay_t *relay = userdata;
    const char *selector, *label = NULL, *token, *target = NULL;
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
    if (!label || !target)
        return sd_bus_error_set(error, ERROR_PREFIX "InvalidArgs", "one disk, by target=");
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->selector = strdup(selector);
    j->label = strdup(label);
    j->target = strdup(target);
    if (!j->selector || !j->label || !j->target) {
        job_free(j);
        return -ENOMEM;
    }

    /* Answered first, as vmdevd does: the outcome comes as a signal. */
    r = sd_bus_reply_method_return(m, "b", 1);
    if (r >= 0)
        r = sd_bus_flush(relay->bus);
    if (r < 0) {
        job_free(j);
        return r;
    }
    relay->requests++;
    pthread_mutex_lock(&relay->lock);
    push(&relay->calls, j);
    pthread_cond_signal(&relay->cond);
    pthread_mutex_unlock(&relay->lock);
    return 0;
}

static const sd_bus_vtable vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("TestMethod", "sa{sas}", "b", test_method, 0),
    SD_BUS_SIGNAL("DeviceDetached", "ss", 0),
    SD_BUS_SIGNAL("DeviceDetachFailed", "ssss", 0),
    SD_BUS_VTABLE_END,
};

static void usage(FILE *f)
{
    fputs("usage: call-relay --uri URI --address ADDRESS --name BUSNAME\n"
          "Answers TestMethod for one disk, then reads the domain's XML (and\n"
          "detaches the disk when it is there) on a call thread and sends the\n"
          "outcome as a signal, with nothing between.\n",
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
    relay_t relay = { .bus_watch = -1,
                      .done_fd = -1,
                      .done_watch = -1,
                      .lock = PTHREAD_MUTEX_INITIALIZER,
                      .cond = PTHREAD_COND_INITIALIZER };
    event_loop_t loop = { .wake_timer = -1 };
    pthread_t caller;
    bool caller_started = false;
    int status = 1, opt, sig, fd;
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
    if (virt_init_for_sigwait("call-relay", &stop) < 0)
        return 1;
    relay.conn = virConnectOpen(uri);
    if (!relay.conn) {
        fprintf(stderr, "call-relay: cannot open %s: %s\n", uri, last_error());
        return 1;
    }
    relay.done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (relay.done_fd < 0) {
        perror("call-relay: eventfd");
        goto out;
    }
    fd = bus_serve("call-relay", address, name, vtable, &relay, &relay.bus);
    if (fd < 0)
        goto out;
    /* From here on only the loop thread uses the bus. */
    relay.bus_watch = virEventAddHandle(fd, VIR_EVENT_HANDLE_READABLE, on_bus, &relay, NULL);
    relay.done_watch = virEventAddHandle(relay.done_fd, VIR_EVENT_HANDLE_READABLE, on_done, &relay, NULL);
    if (relay.bus_watch < 0 || relay.done_watch < 0) {
        fprintf(stderr, "call-relay: event loop: %s\n", last_error());
        goto out;
    }
    if (pthread_create(&caller, NULL, call_main, &relay) != 0) {
        fputs("call-relay: cannot start the call thread\n", stderr);
        goto out;
    }
    caller_started = true;
    if (event_loop_start(&loop, "call-relay") < 0)
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
    if (relay.done_watch >= 0)
        virEventRemoveHandle(relay.done_watch);
    if (relay.bus_watch >= 0)
        virEventRemoveHandle(relay.bus_watch);
    if (status == 0) {
        printf("{\"type\":\"end\",\"requests\":%llu}\n", relay.requests);
        fflush(stdout);
    }
    for (job_t *j = take_all(&relay.calls); j;) {
        job_t *next = j->next;
        job_free(j);
        j = next;
    }
    for (job_t *j = take_all(&relay.done); j;) {
        job_t *next = j->next;
        job_free(j);
        j = next;
    }
    sd_bus_flush_close_unref(relay.bus);
    if (relay.done_fd >= 0)
        close(relay.done_fd);
    if (relay.dom)
        virDomainFree(relay.dom);
    free(relay.dom_name);
    virConnectClose(relay.conn);
    return status;
}
