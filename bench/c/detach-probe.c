/* detach-probe: end-to-end latency of detaching a SCSI disk from a running
 * QEMU VM, measured the same way in two modes:
 *
 *   direct  a plain libvirt client: from just before
 *           virDomainDetachDeviceFlags to the DEVICE_REMOVED event for the
 *           disk's alias (libvirt's default event loop on its own thread);
 *   vmdevd  the same disk through vmdevd: from just before an async
 *           TestMethod(domain, {"d": ["type=disk", "target=sda"]}) to the
 *           DeviceDetached signal for label "d";
 *
 * or both in turn (alternate: direct, vmdevd, direct, ...), so that the
 * two are measured in pairs of neighbouring cycles and drift of the host
 * in between weighs on both alike. The probe's own DEVICE_REMOVED callbacks
 * are registered only around its direct cycles, so each cycle runs as it
 * would in a run of its mode alone.
 *
 * Between cycles, outside the timed part, the disk is attached again
 * through the same libvirt connection in both modes, with the <disk> element
 * read from the live XML before the first cycle (or given in a file), and
 * the probe waits until it is back in the live XML. */
#include "bus.h"
#include "contract.h"
#include "util.h"
#include "virt-loop.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_CYCLES 50
#define DEFAULT_WARMUP 3
/* Above vmdevd's default-config detach timeout in the benchmark (10 s), so
 * its own Timeout outcome arrives before this probe gives up. */
#define DEFAULT_TIMEOUT_MS 15000
#define POLL_INTERVAL_MS 5
#define MAX_DISK_XML (1024 * 1024)
#define DEVICE_LABEL "d"
#define ERROR_TEXT 256
#define ALIAS_TEXT 128

/* The first three index per-mode arrays. */
typedef enum { MODE_DIRECT, MODE_VMDEVD, MODE_LIBVIRT_DBUS, MODE_ALTERNATE } probe_mode_t;
#define N_KINDS 3

static const char *const mode_names[] = { "direct", "vmdevd", "libvirt-dbus", "alternate" };

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- the disk in the domain XML ----
 *
 * A small scanner for the XML libvirt itself formats: elements, attributes
 * in either quote, empty elements, comments, CDATA and processing
 * instructions (which user metadata may contain); no DTD. Attribute values
 * are compared as written (a target or alias name has nothing to escape). */

typedef struct {
    size_t start, end; /* [start, end) in the XML text */
} span_t;

#define MAX_STRIP 8

typedef struct {
    span_t element;          /* /domain/devices/disk[target/@dev=TARGET] */
    char alias[ALIAS_TEXT];  /* its <alias name=...>, "" when it has none */
    span_t strip[MAX_STRIP]; /* its <alias> and <address> children */
    size_t n_strip;
} disk_t;

static bool name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && memcmp(name, want, len) == 0;
}

/* The '>' that ends the tag starting at p, outside quoted values; NULL if
 * the text ends first. */
static const char *tag_close(const char *p)
{
    char quote = 0;

    for (p++; *p; p++) {
        if (quote) {
            if (*p == quote)
                quote = 0;
        } else if (*p == '"' || *p == '\'') {
            quote = *p;
        } else if (*p == '>') {
            return p;
        }
    }
    return NULL;
}

/* Copies attribute `name` of the start tag [tag, close] into buf.
 * Returns 1 when found, 0 when absent, a negative errno when malformed or
 * too long for buf. */
static int tag_attr(const char *tag, const char *close, const char *name, char *buf, size_t size)
{
    const char *p = tag + 1;

    p += strcspn(p, " \t\r\n/>");
    for (;;) {
        const char *attr, *value;
        size_t attr_len, value_len;
        char quote;

        while (p < close && strchr(" \t\r\n", *p))
            p++;
        if (p >= close || *p == '/')
            return 0;
        attr = p;
        while (p < close && !strchr(" \t\r\n=", *p))
            p++;
        attr_len = (size_t)(p - attr);
        while (p < close && strchr(" \t\r\n", *p))
            p++;
        if (p >= close || *p != '=')
            return -EBADMSG;
        p++;
        while (p < close && strchr(" \t\r\n", *p))
            p++;
        if (p >= close || (*p != '"' && *p != '\''))
            return -EBADMSG;
        quote = *p++;
        value = p;
        while (p < close && *p != quote)
            p++;
        if (p >= close)
            return -EBADMSG;
        value_len = (size_t)(p - value);
        p++;
        if (name_is(attr, attr_len, name)) {
            if (value_len >= size)
                return -ENAMETOOLONG;
            memcpy(buf, value, value_len);
            buf[value_len] = '\0';
            return 1;
        }
    }
}

/* Skips "<!--...-->", "<![CDATA[...]]>", "<?...?>" and "<!...>" at p.
 * Returns the position after it, p itself when p is none of those, NULL
 * when one is unterminated. */
static const char *skip_markup(const char *p)
{
    static const struct {
        const char *open, *close;
    } kinds[] = { { "<!--", "-->" }, { "<![CDATA[", "]]>" }, { "<?", "?>" }, { "<!", ">" } };

    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        size_t n = strlen(kinds[i].open);

        if (strncmp(p, kinds[i].open, n) == 0) {
            const char *end = strstr(p + n, kinds[i].close);

            return end ? end + strlen(kinds[i].close) : NULL;
        }
    }
    return p;
}

/* Finds the disk whose <target dev=...> is `target` in a domain XML.
 * Returns 1 and fills *out when found, 0 when there is none, -EBADMSG when
 * the text is not well-formed as far as this scanner can tell. */
static int find_disk(const char *xml, const char *target, disk_t *out)
{
    enum { MAX_DEPTH = 256 };
    const char *names[4] = { 0 }; /* open elements at levels 1..3 */
    size_t lens[4] = { 0 };
    const char *p = xml;
    size_t depth = 0, child_start = SIZE_MAX;
    bool in_disk = false, matched = false;
    disk_t cur = { 0 };

    while ((p = strchr(p, '<'))) {
        const char *next = skip_markup(p), *close, *name;
        size_t len, level, tag_end;
        bool closing, empty;
        int r;

        if (!next)
            return -EBADMSG;
        if (next != p) {
            p = next;
            continue;
        }
        close = tag_close(p);
        if (!close)
            return -EBADMSG;
        closing = p[1] == '/';
        empty = !closing && close[-1] == '/';
        name = p + 1 + closing;
        len = strcspn(name, " \t\r\n/>");
        if (len == 0)
            return -EBADMSG;
        tag_end = (size_t)(close + 1 - xml);

        if (!closing) {
            level = depth + 1;
            if (level >= MAX_DEPTH)
                return -EBADMSG;
            if (level <= 3) {
                names[level] = name;
                lens[level] = len;
            }
            if (level == 3 && name_is(names[1], lens[1], "domain") &&
                name_is(names[2], lens[2], "devices") && name_is(name, len, "disk")) {
                in_disk = true;
                matched = false;
                cur = (disk_t){ .element.start = (size_t)(p - xml) };
            } else if (level == 4 && in_disk) {
                char dev[ALIAS_TEXT];

                if (name_is(name, len, "target")) {
                    r = tag_attr(p, close, "dev", dev, sizeof(dev));
                    if (r < 0 && r != -ENAMETOOLONG)
                        return r;
                    matched = r > 0 && strcmp(dev, target) == 0;
                } else if (name_is(name, len, "alias")) {
                    r = tag_attr(p, close, "name", cur.alias, sizeof(cur.alias));
                    if (r < 0)
                        return r;
                }
                if (name_is(name, len, "alias") || name_is(name, len, "address"))
                    child_start = (size_t)(p - xml);
            }
            if (!empty)
                depth++;
        } else {
            if (depth == 0)
                return -EBADMSG;
            level = depth--;
        }

        /* An element ends here: an end tag, or an empty element. */
        if (closing || empty) {
            if (level == 4 && in_disk && child_start != SIZE_MAX) {
                if (cur.n_strip == MAX_STRIP)
                    return -EBADMSG;
                cur.strip[cur.n_strip++] = (span_t){ child_start, tag_end };
                child_start = SIZE_MAX;
            } else if (level == 3 && in_disk) {
                in_disk = false;
                if (matched) {
                    cur.element.end = tag_end;
                    *out = cur;
                    return 1;
                }
            }
        }
        p = close + 1;
    }
    return depth == 0 ? 0 : -EBADMSG;
}

/* The disk element without its <alias> and <address> children (and the
 * indentation before them): what attaching it again needs. */
static char *attach_xml_from(const char *xml, const disk_t *d)
{
    size_t size = d->element.end - d->element.start + 1, pos = d->element.start, n = 0;
    char *out = malloc(size);

    if (!out)
        return NULL;
    for (size_t i = 0; i < d->n_strip; i++) {
        size_t start = d->strip[i].start;

        while (start > pos && (xml[start - 1] == ' ' || xml[start - 1] == '\t'))
            start--;
        if (start > pos && xml[start - 1] == '\n')
            start--;
        memcpy(out + n, xml + pos, start - pos);
        n += start - pos;
        pos = d->strip[i].end;
    }
    memcpy(out + n, xml + pos, d->element.end - pos);
    n += d->element.end - pos;
    out[n] = '\0';
    return out;
}

static int read_file(const char *path, char **out)
{
    FILE *f = fopen(path, "r");
    char *buf;
    size_t n;
    int err = 0;

    if (!f)
        return -errno;
    buf = malloc(MAX_DISK_XML + 1);
    if (!buf) {
        fclose(f);
        return -ENOMEM;
    }
    n = fread(buf, 1, MAX_DISK_XML + 1, f);
    if (ferror(f))
        err = -EIO;
    else if (n > MAX_DISK_XML)
        err = -EFBIG;
    else if (n == 0)
        err = -ENODATA;
    if (fclose(f) != 0 && !err)
        err = -errno;
    if (err) {
        free(buf);
        return err;
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

/* ---- the run ---- */

/* What one cycle measured. t_return: the detach call returned (direct) or
 * TestMethod's reply arrived (vmdevd). t_done: DEVICE_REMOVED or
 * DeviceDetached arrived; 0 when it did not. */
typedef struct {
    probe_mode_t mode; /* direct or vmdevd */
    uint64_t t_start, t_return, t_done;
    uint64_t t_event; /* the probe's own DEVICE_REMOVED, in both modes; 0 when none came */
    bool ok;
    char alias[ALIAS_TEXT];
    char error[ERROR_TEXT];
} cycle_t;

/* direct mode: shared with the event-loop thread. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool waiting;
    char alias[ALIAS_TEXT]; /* the alias the current cycle waits for */
    bool got;
    bool removal_failed;    /* DEVICE_REMOVAL_FAILED instead */
    uint64_t t_event;
    uint64_t unexpected;    /* events for other aliases, or outside a cycle */
} waiter_t;

/* vmdevd and libvirt-dbus modes: used on the main thread only. */
typedef struct {
    const char *domain;
    const char *alias; /* libvirt-dbus: the alias DeviceRemoved names */
    probe_mode_t kind; /* the cycle waiting: MODE_VMDEVD or MODE_LIBVIRT_DBUS */
    bool waiting;
    bool got_reply, reply_ok;
    bool got_signal, signal_failed;
    uint64_t t_reply, t_signal;
    char reply_error[ERROR_TEXT];
    char signal_error[ERROR_TEXT];
    char vm_key[ALIAS_TEXT]; /* from the first outcome signal */
    uint64_t unexpected;     /* outcome signals not for the cycle waiting */
} bus_waiter_t;

typedef struct {
    probe_mode_t mode;
    const char *uri, *domain, *target, *address, *dest, *disk_xml_file;
    const char *lvd_dest, *lvd_path; /* libvirt-dbus: its name, its connection's path */
    uint64_t cycles, warmup, timeout_ms;
    bool json;
    unsigned rotation; /* alternate: 2 (direct, vmdevd) or 3 (and libvirt-dbus) */
    char lvd_domain[256]; /* libvirt-dbus: the domain's object path */

    virConnectPtr conn;
    virDomainPtr dom;
    char *attach_xml;
    char detach_xml[256];
    char target_token[128];
    char alias[ALIAS_TEXT]; /* the disk's alias in the live XML */

    waiter_t waiter;
    sd_bus *bus;
    bus_waiter_t bw;
} probe_t;

static void on_removed(virConnectPtr conn, virDomainPtr dom, const char *alias, void *opaque,
                       bool failed)
{
    waiter_t *w = opaque;
    uint64_t t = now_ns(); /* first, before taking the lock */

    (void)conn, (void)dom;
    pthread_mutex_lock(&w->lock);
    if (w->waiting && !w->got && alias && strcmp(alias, w->alias) == 0) {
        w->got = true;
        w->removal_failed = failed;
        w->t_event = t;
        pthread_cond_signal(&w->cond);
    } else {
        w->unexpected++;
    }
    pthread_mutex_unlock(&w->lock);
}

static void on_device_removed(virConnectPtr conn, virDomainPtr dom, const char *alias,
                              void *opaque)
{
    on_removed(conn, dom, alias, opaque, false);
}

static void on_device_removal_failed(virConnectPtr conn, virDomainPtr dom, const char *alias,
                                     void *opaque)
{
    on_removed(conn, dom, alias, opaque, true);
}

static int waiter_init(waiter_t *w)
{
    pthread_condattr_t attr;
    int r;

    *w = (waiter_t){ 0 };
    r = pthread_mutex_init(&w->lock, NULL);
    if (r != 0)
        return -r;
    r = pthread_condattr_init(&attr);
    if (r == 0) {
        r = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (r == 0)
            r = pthread_cond_init(&w->cond, &attr);
        pthread_condattr_destroy(&attr);
    }
    if (r != 0) {
        pthread_mutex_destroy(&w->lock);
        return -r;
    }
    return 0;
}

static void waiter_destroy(waiter_t *w)
{
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
}

static struct timespec deadline_ts(uint64_t ns);

/* A vmdevd cycle also notes when the probe's own DEVICE_REMOVED comes. */
static void waiter_arm(waiter_t *w, const char *alias)
{
    pthread_mutex_lock(&w->lock);
    w->waiting = true;
    w->got = false;
    w->removal_failed = false;
    snprintf(w->alias, sizeof(w->alias), "%s", alias);
    pthread_mutex_unlock(&w->lock);
}

/* Waits up to wait_ms for the event (it may reach this probe after
 * vmdevd's signal); returns its time, 0 when it did not come. */
static uint64_t waiter_disarm(waiter_t *w, uint64_t wait_ms)
{
    struct timespec deadline = deadline_ts(now_ns() + wait_ms * UINT64_C(1000000));
    uint64_t t;

    pthread_mutex_lock(&w->lock);
    while (!w->got && wait_ms)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &deadline) == ETIMEDOUT)
            break;
    t = w->got ? w->t_event : 0;
    w->waiting = false;
    pthread_mutex_unlock(&w->lock);
    return t;
}

/* Looks the disk up in the live XML: *present, and its alias into
 * p->alias. With xml_out, hands the XML over too. */
static int disk_lookup(probe_t *p, bool *present, disk_t *disk, char **xml_out)
{
    char *xml = virDomainGetXMLDesc(p->dom, 0);
    disk_t d;
    int r;

    if (!xml) {
        fprintf(stderr, "detach-probe: live XML of %s: %s\n", p->domain, last_error());
        return -1;
    }
    r = find_disk(xml, p->target, &d);
    if (r < 0) {
        fprintf(stderr, "detach-probe: cannot read the live XML of %s\n", p->domain);
        free(xml);
        return -1;
    }
    *present = r > 0;
    if (*present)
        snprintf(p->alias, sizeof(p->alias), "%s", d.alias);
    if (disk)
        *disk = d;
    if (xml_out)
        *xml_out = xml;
    else
        free(xml);
    return 0;
}

/* Attaches the disk again when it is not in the live XML and waits until it
 * is. Not timed. */
static int restore_disk(probe_t *p)
{
    bool present;
    uint64_t deadline;

    if (disk_lookup(p, &present, NULL, NULL) < 0)
        return -1;
    if (present)
        goto check_alias;
    if (virDomainAttachDeviceFlags(p->dom, p->attach_xml, VIR_DOMAIN_AFFECT_LIVE) < 0) {
        fprintf(stderr, "detach-probe: attaching %s again: %s\n", p->target, last_error());
        return -1;
    }
    deadline = now_ns() + p->timeout_ms * UINT64_C(1000000);
    for (;;) {
        if (disk_lookup(p, &present, NULL, NULL) < 0)
            return -1;
        if (present)
            break;
        if (now_ns() >= deadline) {
            fprintf(stderr, "detach-probe: %s is not back in the live XML after %" PRIu64
                    " ms\n", p->target, p->timeout_ms);
            return -1;
        }
        sleep_ms(POLL_INTERVAL_MS);
    }
check_alias:
    /* DEVICE_REMOVED names the disk by its alias. */
    if (p->mode != MODE_VMDEVD && !p->alias[0]) {
        fprintf(stderr, "detach-probe: %s has no alias in the live XML\n", p->target);
        return -1;
    }
    return 0;
}

static struct timespec deadline_ts(uint64_t ns)
{
    return (struct timespec){ .tv_sec = (time_t)(ns / UINT64_C(1000000000)),
                              .tv_nsec = (long)(ns % UINT64_C(1000000000)) };
}

/* One timed detach through libvirt. Returns -1 when the run cannot go on
 * (no event: a late one would be taken for the next cycle's), 0 otherwise
 * with c->ok telling how it went. */
static int cycle_direct(probe_t *p, cycle_t *c)
{
    waiter_t *w = &p->waiter;
    struct timespec deadline;
    int rc;

    snprintf(c->alias, sizeof(c->alias), "%s", p->alias);
    pthread_mutex_lock(&w->lock);
    w->waiting = true;
    w->got = false;
    w->removal_failed = false;
    snprintf(w->alias, sizeof(w->alias), "%s", p->alias);
    pthread_mutex_unlock(&w->lock);

    c->t_start = now_ns();
    rc = virDomainDetachDeviceFlags(p->dom, p->detach_xml, VIR_DOMAIN_AFFECT_LIVE);
    c->t_return = now_ns();
    if (rc < 0)
        snprintf(c->error, sizeof(c->error), "virDomainDetachDeviceFlags: %s", last_error());

    deadline = deadline_ts(c->t_return + p->timeout_ms * UINT64_C(1000000));
    pthread_mutex_lock(&w->lock);
    while (rc >= 0 && !w->got)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &deadline) == ETIMEDOUT)
            break;
    if (w->got) {
        c->t_done = c->t_event = w->t_event;
        if (w->removal_failed)
            snprintf(c->error, sizeof(c->error), "DEVICE_REMOVAL_FAILED for %s", w->alias);
    }
    w->waiting = false;
    pthread_mutex_unlock(&w->lock);

    if (rc < 0)
        return 0;
    if (!c->t_done) {
        snprintf(c->error, sizeof(c->error), "no DEVICE_REMOVED for %s within %" PRIu64 " ms",
                 c->alias, p->timeout_ms);
        return -1;
    }
    c->ok = !c->error[0];
    return 0;
}

/* vmdevd's outcome key for the domain: its name, or "<backend>/<name>"
 * when VMs of that name exist in two backends. */
static bool vm_key_matches(const char *key, const char *domain)
{
    size_t k = strlen(key), d = strlen(domain);

    return strcmp(key, domain) == 0 ||
           (k > d + 1 && key[k - d - 1] == '/' && strcmp(key + k - d, domain) == 0);
}

static int on_outcome(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
    bus_waiter_t *w = userdata;
    uint64_t t = now_ns(); /* first, before reading the message */
    const char *vm, *device, *name = NULL, *message = NULL;
    bool failed = sd_bus_message_is_signal(m, VMDEVD_INTERFACE, "DeviceDetachFailed") > 0;
    int r;

    (void)ret_error;
    if (failed)
        r = sd_bus_message_read(m, "ssss", &vm, &device, &name, &message);
    else
        r = sd_bus_message_read(m, "ss", &vm, &device);
    if (r < 0 || !w->waiting || w->kind != MODE_VMDEVD || w->got_signal ||
        strcmp(device, DEVICE_LABEL) != 0 || !vm_key_matches(vm, w->domain)) {
        w->unexpected++;
        return 0;
    }
    w->got_signal = true;
    w->t_signal = t;
    w->signal_failed = failed;
    if (failed)
        snprintf(w->signal_error, sizeof(w->signal_error), "DeviceDetachFailed %s: %s", name,
                 message);
    if (!w->vm_key[0])
        snprintf(w->vm_key, sizeof(w->vm_key), "%s", vm);
    return 0;
}

/* libvirt-dbus's DeviceRemoved on the domain's path. It reports every
 * removal, those of the other modes' cycles too: only a wrong alias in a
 * libvirt-dbus cycle is unexpected. */
static int on_device_removed_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
    bus_waiter_t *w = userdata;
    uint64_t t = now_ns(); /* first, before reading the message */
    const char *alias;

    (void)ret_error;
    if (!w->waiting || w->kind != MODE_LIBVIRT_DBUS)
        return 0;
    if (sd_bus_message_read(m, "s", &alias) < 0 || w->got_signal || strcmp(alias, w->alias) != 0) {
        w->unexpected++;
        return 0;
    }
    w->got_signal = true;
    w->t_signal = t;
    return 0;
}

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
    bus_waiter_t *w = userdata;
    uint64_t t = now_ns();
    const sd_bus_error *error = sd_bus_message_get_error(m);
    const char *method = w->kind == MODE_VMDEVD ? "TestMethod" : "DetachDevice";
    int b, r;

    (void)ret_error;
    w->got_reply = true;
    w->t_reply = t;
    if (error) {
        snprintf(w->reply_error, sizeof(w->reply_error), "%s: %s: %s", method, error->name,
                 error->message ? error->message : "");
        return 0;
    }
    if (w->kind == MODE_LIBVIRT_DBUS) {
        /* DetachDevice returns nothing: no error is success. */
        w->reply_ok = true;
        return 0;
    }
    r = sd_bus_message_read_basic(m, 'b', &b);
    if (r <= 0 || !sd_bus_message_has_signature(m, "b"))
        snprintf(w->reply_error, sizeof(w->reply_error), "TestMethod: reply signature '%s', "
                 "expected 'b'", sd_bus_message_get_signature(m, true));
    else if (!b)
        snprintf(w->reply_error, sizeof(w->reply_error), "TestMethod: false (no VM matches "
                 "the selector)");
    else
        w->reply_ok = true;
    return 0;
}

/* Handles whatever is queued on the bus without waiting: signals left from
 * before a cycle count as unexpected. */
static int bus_drain(sd_bus *bus)
{
    int r;

    while ((r = sd_bus_process(bus, NULL)) > 0)
        ;
    return r;
}

/* One timed detach through a daemon on the bus: the call `m` (consumed)
 * for a `kind` cycle, done at its signal. Same contract as cycle_direct. */
static int cycle_bus(probe_t *p, cycle_t *c, probe_mode_t kind, sd_bus_message *m)
{
    bus_waiter_t *w = &p->bw;
    const char *signal_name = kind == MODE_VMDEVD ? "DeviceDetached" : "DeviceRemoved";
    sd_bus_slot *slot = NULL;
    uint64_t deadline;
    int r, status = 0;

    w->kind = kind;
    w->alias = p->alias;
    w->waiting = true;
    w->got_reply = w->reply_ok = w->got_signal = w->signal_failed = false;
    w->reply_error[0] = w->signal_error[0] = '\0';
    waiter_arm(&p->waiter, p->alias);

    c->t_start = now_ns();
    r = sd_bus_call_async(p->bus, &slot, m, on_reply, w, p->timeout_ms * UINT64_C(1000));
    sd_bus_message_unref(m);
    if (r < 0) {
        w->waiting = false;
        snprintf(c->error, sizeof(c->error), "sending the call: %s", strerror(-r));
        return -1;
    }

    /* Until the reply, and the outcome unless the reply says none comes. */
    deadline = c->t_start + p->timeout_ms * UINT64_C(1000000);
    while (!(w->got_reply && (w->got_signal || !w->reply_ok))) {
        uint64_t now;

        r = sd_bus_process(p->bus, NULL);
        if (r < 0)
            break;
        if (r > 0)
            continue;
        now = now_ns();
        if (now >= deadline) {
            r = -ETIMEDOUT;
            break;
        }
        r = sd_bus_wait(p->bus, (deadline - now) / 1000 + 1);
        if (r < 0 && r != -EINTR)
            break;
    }
    w->waiting = false;
    sd_bus_slot_unref(slot);
    /* libvirt's event to this probe: when it came, to split the cycle into
     * libvirt's part and the daemon's. */
    c->t_event = waiter_disarm(&p->waiter, w->got_signal ? p->timeout_ms : 0);

    if (w->got_reply)
        c->t_return = w->t_reply;
    if (w->got_signal)
        c->t_done = w->t_signal;
    if (w->reply_error[0])
        snprintf(c->error, sizeof(c->error), "%s", w->reply_error);
    else if (w->signal_error[0])
        snprintf(c->error, sizeof(c->error), "%s", w->signal_error);
    if (r < 0 && r != -EINTR) {
        if (r == -ETIMEDOUT)
            snprintf(c->error, sizeof(c->error), "no %s within %" PRIu64 " ms",
                     w->got_reply ? signal_name : "reply", p->timeout_ms);
        else
            snprintf(c->error, sizeof(c->error), "bus: %s", strerror(-r));
        status = -1;
    }
    c->ok = !c->error[0];
    return status;
}

/* Builds the call of a `kind` cycle: vmdevd's TestMethod for the disk, or
 * libvirt-dbus's DetachDevice with the direct cycle's XML and flags. */
static int cycle_on_bus(probe_t *p, cycle_t *c, probe_mode_t kind)
{
    sd_bus_message *m = NULL;
    int r;

    r = bus_drain(p->bus);
    if (r < 0) {
        snprintf(c->error, sizeof(c->error), "bus: %s", strerror(-r));
        return -1;
    }
    if (kind == MODE_VMDEVD) {
        r = sd_bus_message_new_method_call(p->bus, &m, p->dest, VMDEVD_OBJECT_PATH,
                                           VMDEVD_INTERFACE, "TestMethod");
        if (r >= 0)
            r = sd_bus_message_append(m, "sa{sas}", p->domain, 1, DEVICE_LABEL, 2, "type=disk",
                                      p->target_token);
    } else {
        r = sd_bus_message_new_method_call(p->bus, &m, p->lvd_dest, p->lvd_domain,
                                           "org.libvirt.Domain", "DetachDevice");
        if (r >= 0)
            r = sd_bus_message_append(m, "su", p->detach_xml, (uint32_t)VIR_DOMAIN_AFFECT_LIVE);
    }
    if (r < 0) {
        snprintf(c->error, sizeof(c->error), "building the call: %s", strerror(-r));
        sd_bus_message_unref(m);
        return -1;
    }
    return cycle_bus(p, c, kind, m);
}

/* The probe's own DEVICE_REMOVED and DEVICE_REMOVAL_FAILED callbacks. */
static int register_events(probe_t *p, int *callback_ids)
{
    /* Registered before the first call: the event can beat the reply. */
    callback_ids[0] = virConnectDomainEventRegisterAny(
        p->conn, p->dom, VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
        VIR_DOMAIN_EVENT_CALLBACK(on_device_removed), &p->waiter, NULL);
    if (callback_ids[0] >= 0)
        callback_ids[1] = virConnectDomainEventRegisterAny(
            p->conn, p->dom, VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
            VIR_DOMAIN_EVENT_CALLBACK(on_device_removal_failed), &p->waiter, NULL);
    if (callback_ids[0] < 0 || callback_ids[1] < 0) {
        fprintf(stderr, "detach-probe: event registration: %s\n", last_error());
        return -1;
    }
    return 0;
}

static void deregister_events(probe_t *p, int *callback_ids)
{
    for (int i = 0; i < 2; i++) {
        if (callback_ids[i] >= 0)
            virConnectDomainEventDeregisterAny(p->conn, callback_ids[i]);
        callback_ids[i] = -1;
    }
}

/* One cycle in `mode`: the timed detach, then (untimed) the disk back in
 * place. Returns -1 when the run must stop. */
static int run_cycle(probe_t *p, probe_mode_t mode, int *callback_ids, cycle_t *c)
{
    bool present;
    int r;

    *c = (cycle_t){ 0 };
    c->mode = mode;
    /* Registered for the cycle in both modes, so that both cycles see the
     * same libvirtd and the vmdevd cycle gets libvirt's time too. */
    if (p->mode == MODE_ALTERNATE && register_events(p, callback_ids) < 0)
        return -1;
    r = mode == MODE_DIRECT ? cycle_direct(p, c) : cycle_on_bus(p, c, mode);
    if (p->mode == MODE_ALTERNATE)
        deregister_events(p, callback_ids);
    if (r < 0)
        return -1;
    if (c->ok) {
        /* The outcome says gone: the live XML must agree. */
        if (disk_lookup(p, &present, NULL, NULL) < 0)
            return -1;
        if (present) {
            c->ok = false;
            snprintf(c->error, sizeof(c->error), "%s still in the live XML after the outcome",
                     p->target);
        }
    }
    return restore_disk(p);
}

static void print_stats_text(const char *what, const latency_stats_t *st)
{
    printf("  %-34s n %zu  p50 %.1f  p90 %.1f  p99 %.1f  mean %.1f  min %.1f  max %.1f us\n",
           what, st->n, st->p50_us, st->p90_us, st->p99_us, st->mean_us, st->min_us, st->max_us);
}

static void json_string_or_null(FILE *f, const char *text)
{
    if (text && *text)
        json_string(f, text);
    else
        fputs("null", f);
}

static void usage(FILE *f)
{
    fputs("Usage: detach-probe --mode direct|vmdevd|libvirt-dbus|alternate --domain NAME\n"
          "                    [--uri URI] [--target DEV]\n"
          "                    [--address ADDR] [--dest NAME] [--disk-xml FILE]\n"
          "                    [--with-libvirt-dbus] [--libvirt-dbus-dest NAME]\n"
          "                    [--libvirt-dbus-path PATH]\n"
          "                    [--cycles N] [--warmup N] [--timeout-ms MS] [--json]\n"
          "  --mode direct      detach with virDomainDetachDeviceFlags; done at DEVICE_REMOVED\n"
          "  --mode vmdevd      detach with vmdevd's TestMethod; done at DeviceDetached\n"
          "  --mode libvirt-dbus  detach with libvirt-dbus's DetachDevice; done at its\n"
          "                     DeviceRemoved\n"
          "  --mode alternate   direct and vmdevd in turn, starting with direct; N cycles\n"
          "                     of each\n"
          "  --with-libvirt-dbus  alternate: direct, vmdevd and libvirt-dbus in turn\n"
          "  --libvirt-dbus-dest NAME  libvirt-dbus's bus name (default org.libvirt)\n"
          "  --libvirt-dbus-path PATH  its connection's object (default /org/libvirt/QEMU)\n"
          "  --domain NAME      a running domain with the disk attached\n"
          "  --uri URI          libvirt URI (default qemu:///system); both modes attach the\n"
          "                     disk again through it between cycles\n"
          "  --target DEV       the disk's target (default sda)\n"
          "  --address ADDR     vmdevd's bus (default: DBUS_SESSION_BUS_ADDRESS)\n"
          "  --dest NAME        vmdevd's bus name (default " VMDEVD_BUS_NAME ")\n"
          "  --disk-xml FILE    the <disk> element to attach again (default: from the\n"
          "                     live XML, without <alias> and <address>)\n"
          "  --cycles N         timed detaches (default 50)\n"
          "  --warmup N         untimed detaches first (default 3)\n"
          "  --timeout-ms MS    wait this long for each outcome (default 15000)\n"
          "  --json             one JSON object with every cycle (times as strings)\n"
          "Exit: 0 every cycle detached, 1 some failed, 2 usage or setup error.\n",
          f);
}

/* Everything that must be in place before the first cycle. */
static int setup(probe_t *p, int *callback_ids)
{
    char *xml = NULL;
    disk_t disk;
    bool present;
    int state, reason;
    size_t n;

    p->conn = virConnectOpen(p->uri);
    if (!p->conn) {
        fprintf(stderr, "detach-probe: cannot open %s: %s\n", p->uri, last_error());
        return -1;
    }
    p->dom = virDomainLookupByName(p->conn, p->domain);
    if (!p->dom) {
        fprintf(stderr, "detach-probe: domain %s: %s\n", p->domain, last_error());
        return -1;
    }
    if (virDomainGetState(p->dom, &state, &reason, 0) < 0) {
        fprintf(stderr, "detach-probe: state of %s: %s\n", p->domain, last_error());
        return -1;
    }
    if (state != VIR_DOMAIN_RUNNING) {
        fprintf(stderr, "detach-probe: %s is not running (state %d)\n", p->domain, state);
        return -1;
    }

    if (disk_lookup(p, &present, &disk, &xml) < 0)
        return -1;
    if (p->disk_xml_file) {
        int r = read_file(p->disk_xml_file, &p->attach_xml);

        if (r < 0) {
            fprintf(stderr, "detach-probe: %s: %s\n", p->disk_xml_file, strerror(-r));
            free(xml);
            return -1;
        }
    } else if (present) {
        p->attach_xml = attach_xml_from(xml, &disk);
        if (!p->attach_xml) {
            fprintf(stderr, "detach-probe: out of memory\n");
            free(xml);
            return -1;
        }
    }
    free(xml);
    if (!present && !p->attach_xml) {
        fprintf(stderr, "detach-probe: %s has no disk %s in its live XML (--disk-xml FILE "
                "attaches one first)\n", p->domain, p->target);
        return -1;
    }

    if (p->mode != MODE_ALTERNATE && register_events(p, callback_ids) < 0)
        return -1;
    /* A disk left detached by an interrupted run is attached first. */
    if (restore_disk(p) < 0)
        return -1;

    n = (size_t)snprintf(p->detach_xml, sizeof(p->detach_xml),
                         "<disk type='file' device='disk'><target dev='%s'/></disk>", p->target);
    if (n >= sizeof(p->detach_xml))
        return -1;
    n = (size_t)snprintf(p->target_token, sizeof(p->target_token), "target=%s", p->target);
    return n < sizeof(p->target_token) ? 0 : -1;
}

/* Adds a match; synchronous, so the bus has it when this returns. */
static int add_match(probe_t *p, sd_bus_slot **slot, const char *sender, const char *path,
                     const char *interface, const char *member, sd_bus_message_handler_t cb)
{
    char rule[768];
    int n, r;

    n = snprintf(rule, sizeof(rule), "type='signal',sender='%s',path='%s',interface='%s',member='%s'",
                 sender, path, interface, member);
    if (n < 0 || (size_t)n >= sizeof(rule)) {
        fprintf(stderr, "detach-probe: match rule too long\n");
        return -1;
    }
    r = sd_bus_add_match(p->bus, slot, rule, cb, &p->bw);
    if (r < 0) {
        fprintf(stderr, "detach-probe: AddMatch %s: %s\n", rule, strerror(-r));
        return -1;
    }
    return 0;
}

static bool plain_name(const char *text)
{
    return !strchr(text, '\'') && !strchr(text, ',') && !strchr(text, '\\');
}

/* vmdevd: the outcome matches, and a daemon that owns its name. */
static int setup_vmdevd(probe_t *p, sd_bus_slot **matches)
{
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message *reply = NULL;
    int r, has_owner = 0;

    if (add_match(p, &matches[0], p->dest, VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE, "DeviceDetached",
                  on_outcome) < 0 ||
        add_match(p, &matches[1], p->dest, VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE,
                  "DeviceDetachFailed", on_outcome) < 0)
        return -1;
    r = sd_bus_call_method(p->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                           "org.freedesktop.DBus", "NameHasOwner", &error, &reply, "s", p->dest);
    if (r >= 0)
        r = sd_bus_message_read(reply, "b", &has_owner);
    if (r < 0)
        fprintf(stderr, "detach-probe: NameHasOwner: %s\n",
                sd_bus_error_is_set(&error) ? error.message : strerror(-r));
    else if (!has_owner)
        fprintf(stderr, "detach-probe: nobody owns %s on the bus\n", p->dest);
    sd_bus_error_free(&error);
    sd_bus_message_unref(reply);
    return r >= 0 && has_owner ? 0 : -1;
}

/* libvirt-dbus: the domain's object path (the lookup also makes it open
 * its libvirt connection and register for events), and the match for its
 * DeviceRemoved there. */
static int setup_libvirt_dbus(probe_t *p, sd_bus_slot **match)
{
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message *reply = NULL;
    const char *path = NULL;
    int r;

    r = sd_bus_call_method(p->bus, p->lvd_dest, p->lvd_path, "org.libvirt.Connect",
                           "DomainLookupByName", &error, &reply, "s", p->domain);
    if (r >= 0)
        r = sd_bus_message_read(reply, "o", &path);
    if (r >= 0 && strlen(path) >= sizeof(p->lvd_domain))
        r = -ENAMETOOLONG;
    if (r >= 0)
        snprintf(p->lvd_domain, sizeof(p->lvd_domain), "%s", path);
    else
        fprintf(stderr, "detach-probe: %s DomainLookupByName(%s) on %s: %s\n", p->lvd_dest,
                p->domain, p->lvd_path, sd_bus_error_is_set(&error) ? error.message : strerror(-r));
    sd_bus_error_free(&error);
    sd_bus_message_unref(reply);
    if (r < 0)
        return -1;
    return add_match(p, match, p->lvd_dest, p->lvd_domain, "org.libvirt.Domain", "DeviceRemoved",
                     on_device_removed_signal);
}

/* The bus, and what the modes of this run need on it (confirmed by the bus
 * before the first call, since a detach can end before its reply). */
static int setup_bus(probe_t *p, bool vmdevd, bool libvirt_dbus, sd_bus_slot **matches)
{
    int r;

    if (!plain_name(p->dest) || !plain_name(p->lvd_dest) || !plain_name(p->lvd_path)) {
        fprintf(stderr, "detach-probe: bad --dest, --libvirt-dbus-dest or --libvirt-dbus-path\n");
        return -1;
    }
    r = bus_open(p->address, "detach-probe", &p->bus);
    if (r < 0) {
        fprintf(stderr, "detach-probe: cannot connect to %s: %s\n",
                p->address ? p->address : "the session bus", strerror(-r));
        return -1;
    }
    if (vmdevd && setup_vmdevd(p, matches) < 0)
        return -1;
    return libvirt_dbus ? setup_libvirt_dbus(p, &matches[2]) : 0;
}

int main(int argc, char **argv)
{
    enum { OPT_MODE = 256, OPT_URI, OPT_DOMAIN, OPT_TARGET, OPT_ADDRESS, OPT_DEST,
           OPT_DISK_XML, OPT_CYCLES, OPT_WARMUP, OPT_TIMEOUT, OPT_JSON, OPT_WITH_LVD,
           OPT_LVD_DEST, OPT_LVD_PATH };
    static const struct option options[] = {
        { "mode", required_argument, NULL, OPT_MODE },
        { "uri", required_argument, NULL, OPT_URI },
        { "domain", required_argument, NULL, OPT_DOMAIN },
        { "target", required_argument, NULL, OPT_TARGET },
        { "address", required_argument, NULL, OPT_ADDRESS },
        { "dest", required_argument, NULL, OPT_DEST },
        { "disk-xml", required_argument, NULL, OPT_DISK_XML },
        { "cycles", required_argument, NULL, OPT_CYCLES },
        { "warmup", required_argument, NULL, OPT_WARMUP },
        { "timeout-ms", required_argument, NULL, OPT_TIMEOUT },
        { "json", no_argument, NULL, OPT_JSON },
        { "with-libvirt-dbus", no_argument, NULL, OPT_WITH_LVD },
        { "libvirt-dbus-dest", required_argument, NULL, OPT_LVD_DEST },
        { "libvirt-dbus-path", required_argument, NULL, OPT_LVD_PATH },
        { "help", no_argument, NULL, 'h' },
        { 0 }
    };
    probe_t p = { .uri = "qemu:///system", .target = "sda", .dest = VMDEVD_BUS_NAME,
                  .lvd_dest = "org.libvirt", .lvd_path = "/org/libvirt/QEMU",
                  .cycles = DEFAULT_CYCLES, .warmup = DEFAULT_WARMUP,
                  .timeout_ms = DEFAULT_TIMEOUT_MS, .rotation = 2 };
    const char *mode = NULL, *first_error = NULL;
    event_loop_t loop = { .wake_timer = -1 };
    int callback_ids[2] = { -1, -1 };
    /* DeviceDetached, DeviceDetachFailed, DeviceRemoved */
    sd_bus_slot *matches[3] = { NULL, NULL, NULL };
    bool waiter_ok = false, stopped = false, with_lvd = false;
    cycle_t *cycles = NULL;
    /* Per mode: [MODE_DIRECT], [MODE_VMDEVD], [MODE_LIBVIRT_DBUS]. */
    samples_t done_lat[N_KINDS] = { { 0 } }, return_lat[N_KINDS] = { { 0 } };
    latency_stats_t done_st[N_KINDS], return_st[N_KINDS];
    uint64_t total, completed = 0, errors = 0, outcome_first = 0, unexpected;
    int opt, status = 2;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        const char *bad = NULL;

        switch (opt) {
        case OPT_MODE: mode = optarg; break;
        case OPT_URI: p.uri = optarg; break;
        case OPT_DOMAIN: p.domain = optarg; break;
        case OPT_TARGET: p.target = optarg; break;
        case OPT_ADDRESS: p.address = optarg; break;
        case OPT_DEST: p.dest = optarg; break;
        case OPT_DISK_XML: p.disk_xml_file = optarg; break;
        case OPT_JSON: p.json = true; break;
        case OPT_WITH_LVD: with_lvd = true; break;
        case OPT_LVD_DEST: p.lvd_dest = optarg; break;
        case OPT_LVD_PATH: p.lvd_path = optarg; break;
        case OPT_CYCLES:
            if (parse_u64(optarg, 1, 1000000, &p.cycles) < 0)
                bad = "cycles";
            break;
        case OPT_WARMUP:
            if (parse_u64(optarg, 0, 1000000, &p.warmup) < 0)
                bad = "warmup";
            break;
        case OPT_TIMEOUT:
            if (parse_u64(optarg, 1, 3600000, &p.timeout_ms) < 0)
                bad = "timeout-ms";
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "detach-probe: bad value '%s' for --%s\n", optarg, bad);
            return 2;
        }
    }
    if (optind != argc || !p.domain || !mode) {
        usage(stderr);
        return 2;
    }
    if (strcmp(mode, "direct") == 0) {
        p.mode = MODE_DIRECT;
    } else if (strcmp(mode, "vmdevd") == 0) {
        p.mode = MODE_VMDEVD;
    } else if (strcmp(mode, "libvirt-dbus") == 0) {
        p.mode = MODE_LIBVIRT_DBUS;
    } else if (strcmp(mode, "alternate") == 0) {
        p.mode = MODE_ALTERNATE;
        p.rotation = with_lvd ? 3 : 2;
    } else {
        fprintf(stderr, "detach-probe: unknown --mode '%s'\n", mode);
        return 2;
    }
    /* The target goes into XML and a match-free token: keep it plain. */
    if (!*p.target || strlen(p.target) > 32 ||
        strspn(p.target, "abcdefghijklmnopqrstuvwxyz0123456789") != strlen(p.target)) {
        fprintf(stderr, "detach-probe: bad --target '%s'\n", p.target);
        return 2;
    }
    if (with_lvd && p.mode != MODE_ALTERNATE) {
        fprintf(stderr, "detach-probe: --with-libvirt-dbus goes with --mode alternate\n");
        return 2;
    }
    p.bw.domain = p.domain;

    total = p.mode == MODE_ALTERNATE ? p.rotation * p.cycles : p.cycles;
    cycles = calloc(total, sizeof(*cycles));
    if (!cycles) {
        fprintf(stderr, "detach-probe: out of memory\n");
        goto out;
    }
    for (int m = 0; m < N_KINDS; m++) {
        if (samples_init(&done_lat[m], total) < 0 || samples_init(&return_lat[m], total) < 0) {
            fprintf(stderr, "detach-probe: out of memory\n");
            goto out;
        }
    }
    if (waiter_init(&p.waiter) < 0) {
        fprintf(stderr, "detach-probe: cannot set up the waiter\n");
        goto out;
    }
    waiter_ok = true;

    virSetErrorFunc(NULL, silent_error);
    if (virInitialize() < 0 || virEventRegisterDefaultImpl() < 0) {
        fprintf(stderr, "detach-probe: libvirt init: %s\n", last_error());
        goto out;
    }
    /* In both modes, so the probe's own cost is the same in both. */
    if (event_loop_start(&loop, "detach-probe") < 0)
        goto out;
    if (p.mode != MODE_DIRECT &&
        setup_bus(&p, p.mode == MODE_VMDEVD || p.mode == MODE_ALTERNATE,
                  p.mode == MODE_LIBVIRT_DBUS || with_lvd, matches) < 0)
        goto out;
    if (setup(&p, callback_ids) < 0)
        goto out;

    /* Alternating, warm-up included: both modes warm up. */
#define CYCLE_MODE(i) (p.mode == MODE_ALTERNATE ? (probe_mode_t)((i) % p.rotation) : p.mode)
    for (uint64_t i = 0; i < (p.mode == MODE_ALTERNATE ? p.rotation * p.warmup : p.warmup); i++) {
        cycle_t c;

        if (run_cycle(&p, CYCLE_MODE(i), callback_ids, &c) < 0 || !c.ok) {
            fprintf(stderr, "detach-probe: warm-up cycle %" PRIu64 " failed: %s\n", i,
                    c.error[0] ? c.error : "see above");
            goto out;
        }
    }

    for (uint64_t i = 0; i < total; i++) {
        cycle_t *c = &cycles[i];
        int r = run_cycle(&p, CYCLE_MODE(i), callback_ids, c);

        completed++;
        if (!c->ok) {
            errors++;
            if (!first_error)
                first_error = c->error;
            fprintf(stderr, "detach-probe: cycle %" PRIu64 ": %s\n", i, c->error);
        } else {
            int m = (int)c->mode;

            if (samples_push(&done_lat[m], c->t_done - c->t_start) < 0 ||
                samples_push(&return_lat[m], c->t_return - c->t_start) < 0) {
                fprintf(stderr, "detach-probe: out of memory\n");
                goto out;
            }
            if (c->t_done < c->t_return)
                outcome_first++;
        }
        if (r < 0) {
            /* No outcome (a late one would count for the next cycle), or
             * the disk could not be put back: nothing more to measure. */
            stopped = true;
            if (!first_error)
                first_error = "the disk could not be attached again";
            break;
        }
    }

    for (int m = 0; m < N_KINDS; m++) {
        samples_stats(&done_lat[m], &done_st[m]);
        samples_stats(&return_lat[m], &return_st[m]);
    }
    pthread_mutex_lock(&p.waiter.lock);
    unexpected = p.waiter.unexpected;
    pthread_mutex_unlock(&p.waiter.lock);
    unexpected += p.bw.unexpected;

    if (p.json) {
        fprintf(stdout, "{\"tool\":\"detach-probe\",\"mode\":\"%s\",\"uri\":",
                mode_names[p.mode]);
        json_string(stdout, p.uri);
        fputs(",\"domain\":", stdout);
        json_string(stdout, p.domain);
        fputs(",\"target\":", stdout);
        json_string(stdout, p.target);
        fputs(",\"dest\":", stdout);
        json_string_or_null(stdout, p.mode == MODE_VMDEVD || p.mode == MODE_ALTERNATE ? p.dest : NULL);
        fputs(",\"libvirt_dbus_path\":", stdout);
        json_string_or_null(stdout, p.lvd_domain);
        fputs(",\"vm_key\":", stdout);
        json_string_or_null(stdout, p.bw.vm_key);
        printf(",\"cycles\":%" PRIu64 ",\"warmup\":%" PRIu64 ",\"completed\":%" PRIu64
               ",\"errors\":%" PRIu64 ",\"stopped\":%s,\"unexpected_outcomes\":%" PRIu64
               ",\"outcome_before_return\":%" PRIu64 ",\"first_error\":",
               p.cycles, p.warmup, completed, errors, stopped ? "true" : "false", unexpected,
               outcome_first);
        json_string_or_null(stdout, first_error);
        if (p.mode == MODE_ALTERNATE) {
            /* Per mode: done and returned, as "latency" and "return" are
             * in a run of one mode. */
            fputc(',', stdout);
            json_latency(stdout, "latency_direct", &done_st[0]);
            fputc(',', stdout);
            json_latency(stdout, "return_direct", &return_st[0]);
            fputc(',', stdout);
            json_latency(stdout, "latency_vmdevd", &done_st[1]);
            fputc(',', stdout);
            json_latency(stdout, "return_vmdevd", &return_st[1]);
            if (with_lvd) {
                fputc(',', stdout);
                json_latency(stdout, "latency_libvirt_dbus", &done_st[2]);
                fputc(',', stdout);
                json_latency(stdout, "return_libvirt_dbus", &return_st[2]);
            }
        } else {
            int m = (int)p.mode;

            fputc(',', stdout);
            json_latency(stdout, "latency", &done_st[m]);
            fputc(',', stdout);
            json_latency(stdout, "return", &return_st[m]);
        }
        fputs(",\"samples\":[", stdout);
        for (uint64_t i = 0; i < completed; i++) {
            const cycle_t *c = &cycles[i];

            printf("%s{\"cycle\":%" PRIu64 ",\"mode\":\"%s\",\"ok\":%s,\"t_start_ns\":\"%" PRIu64
                   "\",\"t_return_ns\":\"%" PRIu64 "\",\"t_done_ns\":\"%" PRIu64 "\"",
                   i ? "," : "", i, mode_names[c->mode],
                   c->ok ? "true" : "false", c->t_start, c->t_return, c->t_done);
            if (c->ok)
                printf(",\"latency_ns\":%" PRIu64 ",\"return_ns\":%" PRIu64,
                       c->t_done - c->t_start, c->t_return - c->t_start);
            if (c->ok && c->t_event)
                printf(",\"event_ns\":%" PRIu64, c->t_event - c->t_start);
            if (c->mode != MODE_VMDEVD) {
                fputs(",\"alias\":", stdout);
                json_string(stdout, c->alias);
            }
            if (!c->ok) {
                fputs(",\"error\":", stdout);
                json_string(stdout, c->error);
            }
            fputc('}', stdout);
        }
        fputs("]}\n", stdout);
    } else {
        static const char *const done_what[] = { "detach call -> DEVICE_REMOVED",
                                                 "TestMethod -> DeviceDetached",
                                                 "DetachDevice -> DeviceRemoved" };
        static const char *const return_what[] = { "detach call -> call returned",
                                                   "TestMethod -> reply",
                                                   "DetachDevice -> reply" };

        printf("detach-probe: %s, %s %s %s, %" PRIu64 " of %" PRIu64 " cycles (+%" PRIu64
               " warm-up), %" PRIu64 " errors, %" PRIu64 " unexpected outcomes%s\n",
               mode_names[p.mode], p.uri, p.domain, p.target, completed, total, p.warmup,
               errors, unexpected, stopped ? ", STOPPED" : "");
        for (int m = 0; m < N_KINDS; m++) {
            if (done_st[m].n == 0)
                continue;
            print_stats_text(done_what[m], &done_st[m]);
            print_stats_text(return_what[m], &return_st[m]);
        }
        printf("  the outcome before the call returned (or the reply) in %" PRIu64
               " of %zu cycles\n", outcome_first, done_st[0].n + done_st[1].n + done_st[2].n);
        if (first_error)
            printf("  first error: %s\n", first_error);
    }
    fflush(stdout);
    status = errors || stopped ? 1 : 0;

out:
    deregister_events(&p, callback_ids);
    for (int i = 0; i < 3; i++)
        sd_bus_slot_unref(matches[i]);
    sd_bus_flush_close_unref(p.bus);
    if (p.dom)
        virDomainFree(p.dom);
    if (p.conn)
        virConnectClose(p.conn);
    event_loop_stop(&loop);
    if (waiter_ok)
        waiter_destroy(&p.waiter);
    free(p.attach_xml);
    free(cycles);
    for (int m = 0; m < N_KINDS; m++) {
        samples_free(&done_lat[m]);
        samples_free(&return_lat[m]);
    }
    return status;
}
