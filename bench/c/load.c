/* load: drives one kind of D-Bus call at a server and reports latency and
 * throughput, plus what the client itself cost, so a figure can be split
 * into bus, server and client.
 *
 * --inflight 1 uses blocking sd_bus_call: latency is one round trip (send,
 * wait, receive), message construction and reply checks excluded.
 * --inflight K keeps K calls outstanding with sd_bus_call_async; latency
 * then includes queueing and throughput is the figure of interest.
 * Every reply body is checked, so a broken server cannot look fast. */
#include "bus.h"
#include "contract.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define LIBVIRT_BUS_NAME "org.libvirt"
#define LIBVIRT_DEFAULT_PATH "/org/libvirt/Test"
#define DEFAULT_SELECTOR "vm-0000"
#define DEFAULT_DURATION_S 5.0
#define DEFAULT_WARMUP 200
#define DEFAULT_TIMEOUT_MS 25000

/* Failures that are not D-Bus errors from the server. */
#define FAIL_BAD_REPLY "bench.BadReply"
#define FAIL_ENTRY_COUNT "bench.WrongEntryCount"
#define FAIL_BOOL "bench.UnexpectedBool"
#define FAIL_UNEXPECTED_SUCCESS "bench.UnexpectedSuccess"

typedef enum {
    KIND_PING,
    KIND_PEER_PING,
    KIND_TESTMETHOD,
    KIND_TESTMETHOD_INVALID,
    KIND_GET_TESTPROPERTY,
    KIND_LIBVIRT_LISTDOMAINS,
    KIND_LIBVIRT_GET_NAME,
} kind_t;

static const struct {
    const char *name;
    bool libvirt;
} kinds[] = {
    [KIND_PING] = { "ping", false },
    [KIND_PEER_PING] = { "peer-ping", false },
    [KIND_TESTMETHOD] = { "testmethod", false },
    [KIND_TESTMETHOD_INVALID] = { "testmethod-invalid", false },
    [KIND_GET_TESTPROPERTY] = { "get-testproperty", false },
    [KIND_LIBVIRT_LISTDOMAINS] = { "libvirt-listdomains", true },
    [KIND_LIBVIRT_GET_NAME] = { "libvirt-get-name", true },
};
#define N_KINDS (sizeof(kinds) / sizeof(kinds[0]))

#define MAX_DEVICES 8
#define MAX_TOKENS 16

/* One device of a --device request: a label and its tokens (NULL-ended). */
typedef struct {
    char *label;
    char *tokens[MAX_TOKENS + 1];
} device_t;

/* What to call and how to judge the answer. */
typedef struct {
    sd_bus *bus;
    kind_t kind;
    const char *dest;
    const char *path;
    const char *selector;
    device_t devices[MAX_DEVICES]; /* testmethod: instead of the default request */
    size_t n_devices;
    char *domain_path;      /* libvirt-get-name: first path from ListDomains */
    int64_t expect_entries; /* -1: any */
    int expect_bool;        /* -1: any */
    uint64_t check_every;   /* full body check on every Nth reply */
    uint64_t timeout_usec;
} target_t;

#define MAX_ERROR_NAMES 16

/* Outcomes of a phase. */
typedef struct {
    uint64_t ok;
    uint64_t failed;
    struct {
        char *name;
        uint64_t count;
    } errors[MAX_ERROR_NAMES];
    size_t n_errors;
    uint64_t errors_other; /* distinct names beyond MAX_ERROR_NAMES */
    char *first_error;     /* "name: message" of the first failure */
    bool record;           /* keep latencies (false during warm-up) */
    samples_t latency;
    samples_t ends;        /* when each recorded call ended (CLOCK_MONOTONIC, ns) */
    int fatal;             /* negative errno: the run cannot go on */
} tally_t;

static int tally_init(tally_t *t, bool record, size_t expected)
{
    int r;

    *t = (tally_t){ .record = record };
    r = samples_init(&t->latency, record ? expected : 1);
    return r < 0 ? r : samples_init(&t->ends, record ? expected : 1);
}

static void tally_free(tally_t *t)
{
    for (size_t i = 0; i < t->n_errors; i++)
        free(t->errors[i].name);
    free(t->first_error);
    samples_free(&t->latency);
    samples_free(&t->ends);
}

static void tally_failure(tally_t *t, const char *name, const char *message)
{
    t->failed++;
    if (!t->first_error && asprintf(&t->first_error, "%s: %s", name,
                                    message ? message : "") < 0)
        t->first_error = NULL;
    for (size_t i = 0; i < t->n_errors; i++) {
        if (strcmp(t->errors[i].name, name) == 0) {
            t->errors[i].count++;
            return;
        }
    }
    if (t->n_errors < MAX_ERROR_NAMES) {
        t->errors[t->n_errors].name = strdup(name);
        if (t->errors[t->n_errors].name) {
            t->errors[t->n_errors++].count = 1;
            return;
        }
    }
    t->errors_other++;
}

static void tally_result(tally_t *t, uint64_t elapsed_ns, const char *fail_name,
                         const char *fail_message)
{
    if (fail_name) {
        tally_failure(t, fail_name, fail_message);
        return;
    }
    t->ok++;
    if (t->record) {
        int r = samples_push(&t->latency, elapsed_ns);

        if (r >= 0)
            r = samples_push(&t->ends, now_ns());
        if (r < 0 && !t->fatal)
            t->fatal = r;
    }
}

/* The valid request of the benchmark: two devices, as a client would send. */
static int append_testmethod(sd_bus_message *m, const char *selector, bool valid)
{
    return sd_bus_message_append(m, "sa{sas}", selector, 2,
                                 "d1", 3, "type=usb", "vendor=0x1234", "product=0x5678",
                                 "d2", 2, valid ? "type=disk" : "type=floppy", "target=vdb");
}

/* The request of --device options: a{sas} with those devices. */
static int append_devices(sd_bus_message *m, const char *selector, const target_t *t)
{
    int r = sd_bus_message_append_basic(m, 's', selector);

    if (r >= 0)
        r = sd_bus_message_open_container(m, 'a', "{sas}");
    for (size_t i = 0; r >= 0 && i < t->n_devices; i++) {
        r = sd_bus_message_open_container(m, 'e', "sas");
        if (r >= 0)
            r = sd_bus_message_append_basic(m, 's', t->devices[i].label);
        if (r >= 0)
            r = sd_bus_message_append_strv(m, (char **)t->devices[i].tokens);
        if (r >= 0)
            r = sd_bus_message_close_container(m);
    }
    if (r >= 0)
        r = sd_bus_message_close_container(m);
    return r;
}

/* "LABEL:TOKEN,TOKEN,...": the string is split in place. */
static int parse_device(char *text, device_t *d)
{
    char *colon = strchr(text, ':'), *token, *save = NULL;
    size_t n = 0;

    if (!colon || colon == text || !colon[1])
        return -EINVAL;
    *colon = '\0';
    d->label = text;
    for (token = strtok_r(colon + 1, ",", &save); token; token = strtok_r(NULL, ",", &save)) {
        if (n == MAX_TOKENS)
            return -E2BIG;
        d->tokens[n++] = token;
    }
    d->tokens[n] = NULL;
    return n ? 0 : -EINVAL;
}

static int build_call(const target_t *t, sd_bus_message **out)
{
    sd_bus_message *m = NULL;
    int r;

    switch (t->kind) {
    case KIND_PING:
        r = sd_bus_message_new_method_call(t->bus, &m, "org.freedesktop.DBus",
                                           "/org/freedesktop/DBus",
                                           "org.freedesktop.DBus.Peer", "Ping");
        break;
    case KIND_PEER_PING:
        r = sd_bus_message_new_method_call(t->bus, &m, t->dest, t->path,
                                           "org.freedesktop.DBus.Peer", "Ping");
        break;
    case KIND_TESTMETHOD:
    case KIND_TESTMETHOD_INVALID:
        r = sd_bus_message_new_method_call(t->bus, &m, t->dest, t->path, VMDEVD_INTERFACE,
                                           "TestMethod");
        if (r >= 0)
            r = t->n_devices && t->kind == KIND_TESTMETHOD
                    ? append_devices(m, t->selector, t)
                    : append_testmethod(m, t->selector, t->kind == KIND_TESTMETHOD);
        break;
    case KIND_GET_TESTPROPERTY:
        r = sd_bus_message_new_method_call(t->bus, &m, t->dest, t->path,
                                           "org.freedesktop.DBus.Properties", "Get");
        if (r >= 0)
            r = sd_bus_message_append(m, "ss", VMDEVD_INTERFACE, "TestProperty");
        break;
    case KIND_LIBVIRT_LISTDOMAINS:
        r = sd_bus_message_new_method_call(t->bus, &m, t->dest, t->path,
                                           "org.libvirt.Connect", "ListDomains");
        if (r >= 0)
            r = sd_bus_message_append(m, "u", 0u);
        break;
    case KIND_LIBVIRT_GET_NAME:
        r = sd_bus_message_new_method_call(t->bus, &m, t->dest, t->domain_path,
                                           "org.freedesktop.DBus.Properties", "Get");
        if (r >= 0)
            r = sd_bus_message_append(m, "ss", "org.libvirt.Domain", "Name");
        break;
    default:
        r = -EINVAL;
    }
    if (r < 0) {
        sd_bus_message_unref(m);
        return r;
    }
    *out = m;
    return 0;
}

/* Reads an array of basic type `type` to its end and counts the elements. */
static int count_array(sd_bus_message *m, const char *contents, int64_t *n)
{
    int r = sd_bus_message_enter_container(m, 'a', contents);

    if (r <= 0)
        return r < 0 ? r : -EBADMSG;
    *n = 0;
    for (;;) {
        if (strcmp(contents, "{ss}") == 0) {
            const char *k, *v;

            r = sd_bus_message_enter_container(m, 'e', "ss");
            if (r > 0) {
                r = sd_bus_message_read_basic(m, 's', &k);
                if (r > 0)
                    r = sd_bus_message_read_basic(m, 's', &v);
                if (r > 0)
                    r = sd_bus_message_exit_container(m);
            }
        } else {
            const char *p;

            r = sd_bus_message_read_basic(m, contents[0], &p);
        }
        if (r < 0)
            return r;
        if (r == 0)
            break;
        (*n)++;
    }
    return sd_bus_message_exit_container(m);
}

/* How one reply is judged, and what is said about it. */
typedef struct {
    bool full;         /* walk the whole body; otherwise check its signature */
    bool want_summary; /* describe a good reply in text */
    char text[160];    /* the summary, or what was wrong */
} verdict_t;

/* Checks a successful reply's body. Returns the failure name, or NULL. */
static const char *check_body(const target_t *t, sd_bus_message *reply, verdict_t *v)
{
    int64_t entries = 0;
    int r, b;
    const char *s;

    switch (t->kind) {
    case KIND_PING:
    case KIND_PEER_PING:
        if (!sd_bus_message_has_signature(reply, "")) {
            snprintf(v->text, sizeof(v->text), "reply signature '%s', expected none",
                     sd_bus_message_get_signature(reply, true));
            return FAIL_BAD_REPLY;
        }
        if (v->want_summary)
            snprintf(v->text, sizeof(v->text), "empty reply");
        return NULL;
    case KIND_TESTMETHOD:
        if (!sd_bus_message_has_signature(reply, "b") ||
            sd_bus_message_read_basic(reply, 'b', &b) <= 0) {
            snprintf(v->text, sizeof(v->text), "reply signature '%s', expected 'b'",
                     sd_bus_message_get_signature(reply, true));
            return FAIL_BAD_REPLY;
        }
        if (t->expect_bool >= 0 && !!b != t->expect_bool) {
            snprintf(v->text, sizeof(v->text), "reply %s", b ? "true" : "false");
            return FAIL_BOOL;
        }
        if (v->want_summary)
            snprintf(v->text, sizeof(v->text), "%s", b ? "true" : "false");
        return NULL;
    case KIND_TESTMETHOD_INVALID:
        snprintf(v->text, sizeof(v->text), "a method return instead of InvalidArgs");
        return FAIL_UNEXPECTED_SUCCESS;
    case KIND_GET_TESTPROPERTY:
    case KIND_LIBVIRT_LISTDOMAINS:
        if (t->kind == KIND_GET_TESTPROPERTY) {
            if (!sd_bus_message_has_signature(reply, "v") ||
                sd_bus_message_enter_container(reply, 'v', "a{ss}") <= 0) {
                snprintf(v->text, sizeof(v->text), "reply is not a variant holding a{ss}");
                return FAIL_BAD_REPLY;
            }
            if (!v->full)
                return NULL;
            r = count_array(reply, "{ss}", &entries);
        } else {
            if (!sd_bus_message_has_signature(reply, "ao")) {
                snprintf(v->text, sizeof(v->text), "reply signature '%s', expected 'ao'",
                         sd_bus_message_get_signature(reply, true));
                return FAIL_BAD_REPLY;
            }
            if (!v->full)
                return NULL;
            r = count_array(reply, "o", &entries);
        }
        if (r < 0) {
            snprintf(v->text, sizeof(v->text), "unreadable array: %s", strerror(-r));
            return FAIL_BAD_REPLY;
        }
        if (t->expect_entries >= 0 && entries != t->expect_entries) {
            snprintf(v->text, sizeof(v->text), "%" PRId64 " entries, expected %" PRId64,
                     entries, t->expect_entries);
            return FAIL_ENTRY_COUNT;
        }
        if (v->want_summary)
            snprintf(v->text, sizeof(v->text), "entries: %" PRId64, entries);
        return NULL;
    case KIND_LIBVIRT_GET_NAME:
        if (!sd_bus_message_has_signature(reply, "v") ||
            sd_bus_message_read(reply, "v", "s", &s) <= 0 || !*s) {
            snprintf(v->text, sizeof(v->text), "reply is not a variant holding a name");
            return FAIL_BAD_REPLY;
        }
        if (v->want_summary)
            snprintf(v->text, sizeof(v->text), "%s", s);
        return NULL;
    }
    snprintf(v->text, sizeof(v->text), "unknown kind");
    return FAIL_BAD_REPLY;
}

/* Judges one call: error is the D-Bus error (set or not), reply the
 * successful reply (or NULL). Returns the failure name or NULL. */
static const char *judge(const target_t *t, const sd_bus_error *error, sd_bus_message *reply,
                         verdict_t *v)
{
    if (error && sd_bus_error_is_set(error)) {
        bool expected = t->kind == KIND_TESTMETHOD_INVALID &&
                        sd_bus_error_has_name(error, SD_BUS_ERROR_INVALID_ARGS);

        if (!expected || v->want_summary)
            snprintf(v->text, sizeof(v->text), "%s", error->message ? error->message : "");
        return expected ? NULL : error->name;
    }
    if (!reply) {
        snprintf(v->text, sizeof(v->text), "no reply");
        return FAIL_BAD_REPLY;
    }
    return check_body(t, reply, v);
}

/* Whether the next reply gets a full body check (see --check-every). */
static bool full_check_due(const target_t *t, const tally_t *tally)
{
    return t->check_every <= 1 || (tally->ok + tally->failed) % t->check_every == 0;
}

/* One blocking call, timed. Returns a negative errno only when the
 * connection is unusable; call failures go into the tally. */
static int call_sync(const target_t *t, tally_t *tally, verdict_t *v)
{
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message *m = NULL, *reply = NULL;
    uint64_t t0, t1;
    const char *fail;
    int r;

    r = build_call(t, &m);
    if (r < 0)
        return r;
    t0 = now_ns();
    r = sd_bus_call(t->bus, m, t->timeout_usec, &error, &reply);
    t1 = now_ns();
    if (r < 0 && !sd_bus_error_is_set(&error))
        sd_bus_error_set_errno(&error, r);
    v->full = v->full || full_check_due(t, tally);
    fail = judge(t, r < 0 ? &error : NULL, reply, v);
    tally_result(tally, t1 - t0, fail, v->text);
    sd_bus_error_free(&error);
    sd_bus_message_unref(reply);
    sd_bus_message_unref(m);
    /* A lost connection will not come back: stop rather than count errors. */
    if (r == -ECONNRESET || r == -ENOTCONN || r == -EPIPE)
        return r;
    return 0;
}

/* How long a phase runs: a number of calls or until a deadline. */
typedef struct {
    uint64_t count;       /* 0: use the deadline */
    uint64_t deadline_ns;
} stop_t;

static bool may_start(const stop_t *stop, uint64_t started)
{
    if (stop->count)
        return started < stop->count;
    return now_ns() < stop->deadline_ns;
}

static int run_sync(const target_t *t, const stop_t *stop, tally_t *tally)
{
    for (uint64_t started = 0; may_start(stop, started); started++) {
        verdict_t v = { .full = false };
        int r = call_sync(t, tally, &v);

        if (r < 0)
            return r;
        if (tally->fatal)
            return tally->fatal;
    }
    return 0;
}

typedef struct runner runner_t;

typedef struct {
    runner_t *runner;
    uint64_t t0;
} pending_t;

struct runner {
    const target_t *target;
    const stop_t *stop;
    tally_t *tally;
    uint64_t started;
    uint64_t outstanding;
};

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error);

static int issue(pending_t *p)
{
    runner_t *run = p->runner;
    sd_bus_message *m = NULL;
    int r;

    r = build_call(run->target, &m);
    if (r < 0)
        return r;
    p->t0 = now_ns();
    /* A floating slot: sd-bus frees it once the reply has been handled. */
    r = sd_bus_call_async(run->target->bus, NULL, m, on_reply, p, run->target->timeout_usec);
    sd_bus_message_unref(m);
    if (r < 0)
        return r;
    run->started++;
    run->outstanding++;
    return 0;
}

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
    pending_t *p = userdata;
    runner_t *run = p->runner;
    uint64_t t1 = now_ns();
    const sd_bus_error *error = sd_bus_message_get_error(m);
    verdict_t v;
    const char *fail;
    int r;

    (void)ret_error;
    run->outstanding--;
    v.full = full_check_due(run->target, run->tally);
    v.want_summary = false;
    v.text[0] = '\0';
    fail = judge(run->target, error, error ? NULL : m, &v);
    tally_result(run->tally, t1 - p->t0, fail, v.text);
    if (!run->tally->fatal && may_start(run->stop, run->started)) {
        r = issue(p);
        if (r < 0)
            run->tally->fatal = r;
    }
    return 0;
}

static int run_async(const target_t *t, const stop_t *stop, uint64_t inflight, tally_t *tally)
{
    runner_t run = { .target = t, .stop = stop, .tally = tally };
    pending_t *slots = calloc(inflight, sizeof(*slots));
    int r = 0;

    if (!slots)
        return -ENOMEM;
    for (uint64_t i = 0; i < inflight && may_start(stop, run.started); i++) {
        slots[i].runner = &run;
        r = issue(&slots[i]);
        if (r < 0)
            break;
    }
    while (r >= 0 && run.outstanding > 0 && !tally->fatal) {
        r = sd_bus_process(t->bus, NULL);
        if (r > 0)
            continue;
        if (r == 0) {
            r = sd_bus_wait(t->bus, UINT64_MAX);
            if (r == -EINTR)
                r = 0;
        }
    }
    if (r >= 0 && tally->fatal)
        r = tally->fatal;
    if (r < 0 && run.outstanding > 0) {
        /* The floating slots still point at slots[]: drop them first. */
        sd_bus_close(t->bus);
        sd_bus_flush(t->bus);
    }
    free(slots);
    return r < 0 ? r : 0;
}

static int run_phase(const target_t *t, const stop_t *stop, uint64_t inflight, tally_t *tally)
{
    if (inflight <= 1)
        return run_sync(t, stop, tally);
    return run_async(t, stop, inflight, tally);
}

/* libvirt-get-name needs a domain: take the first one ListDomains gives. */
static int resolve_domain_path(target_t *t)
{
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message *reply = NULL;
    const char *path = NULL;
    int r;

    r = sd_bus_call_method(t->bus, t->dest, t->path, "org.libvirt.Connect", "ListDomains",
                           &error, &reply, "u", 0u);
    if (r < 0) {
        fprintf(stderr, "load: ListDomains on %s %s failed: %s\n", t->dest, t->path,
                sd_bus_error_is_set(&error) ? error.message : strerror(-r));
        goto out;
    }
    r = sd_bus_message_enter_container(reply, 'a', "o");
    if (r > 0)
        r = sd_bus_message_read_basic(reply, 'o', &path);
    if (r <= 0) {
        fprintf(stderr, "load: ListDomains on %s %s returned no domain\n", t->dest, t->path);
        r = r < 0 ? r : -ENOENT;
        goto out;
    }
    t->domain_path = strdup(path);
    r = t->domain_path ? 0 : -ENOMEM;
out:
    sd_bus_error_free(&error);
    sd_bus_message_unref(reply);
    return r;
}

static double timeval_s(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

typedef struct {
    double wall_s;
    double user_s;
    double sys_s;
    long vcsw;
    long ivcsw;
} cost_t;

static void cost_between(const struct rusage *a, const struct rusage *b, uint64_t wall_ns,
                         cost_t *out)
{
    out->wall_s = (double)wall_ns / 1e9;
    out->user_s = timeval_s(&b->ru_utime) - timeval_s(&a->ru_utime);
    out->sys_s = timeval_s(&b->ru_stime) - timeval_s(&a->ru_stime);
    out->vcsw = b->ru_nvcsw - a->ru_nvcsw;
    out->ivcsw = b->ru_nivcsw - a->ru_nivcsw;
}

typedef struct {
    const char *kind_name;
    uint64_t inflight;
    uint64_t warmup;
    const char *check_summary;
    latency_stats_t stats;
    cost_t cost;
    uint64_t floor_calls;
    latency_stats_t floor_stats;
    bool has_floor;
} report_t;

static void print_text(const target_t *t, const tally_t *tally, const report_t *rep)
{
    uint64_t calls = tally->ok + tally->failed;
    double cpu_s = rep->cost.user_s + rep->cost.sys_s;

    printf("load: %s -> %s %s, inflight %" PRIu64 ", warm-up %" PRIu64 " calls\n",
           rep->kind_name, t->kind == KIND_PING ? "org.freedesktop.DBus" : t->dest,
           t->kind == KIND_PING ? "/org/freedesktop/DBus"
           : t->kind == KIND_LIBVIRT_GET_NAME ? t->domain_path : t->path,
           rep->inflight, rep->warmup);
    printf("  first reply: %s\n", rep->check_summary);
    printf("  calls %" PRIu64 " (ok %" PRIu64 ", failed %" PRIu64 ") in %.3f s: %.0f calls/s\n",
           calls, tally->ok, tally->failed, rep->cost.wall_s,
           rep->cost.wall_s > 0 ? (double)calls / rep->cost.wall_s : 0.0);
    printf("  latency us%s: p50 %.1f  p90 %.1f  p99 %.1f  mean %.1f  (min %.1f, max %.1f)\n",
           rep->inflight > 1 ? " (incl. queueing)" : "", rep->stats.p50_us, rep->stats.p90_us,
           rep->stats.p99_us, rep->stats.mean_us, rep->stats.min_us, rep->stats.max_us);
    printf("  client: %.2f us CPU per call (user %.3f s, sys %.3f s), %.0f%% of one core, "
           "%.2f voluntary switches per call\n",
           calls ? cpu_s * 1e6 / (double)calls : 0.0, rep->cost.user_s, rep->cost.sys_s,
           rep->cost.wall_s > 0 ? 100.0 * cpu_s / rep->cost.wall_s : 0.0,
           calls ? (double)rep->cost.vcsw / (double)calls : 0.0);
    if (rep->has_floor)
        printf("  floor (Peer.Ping to the bus, %" PRIu64 " calls): p50 %.1f us, mean %.1f us\n",
               rep->floor_calls, rep->floor_stats.p50_us, rep->floor_stats.mean_us);
    for (size_t i = 0; i < tally->n_errors; i++)
        printf("  error %s: %" PRIu64 "\n", tally->errors[i].name, tally->errors[i].count);
    if (tally->errors_other)
        printf("  error (other names): %" PRIu64 "\n", tally->errors_other);
    if (tally->first_error)
        printf("  first failure: %s\n", tally->first_error);
}

static void print_json(const target_t *t, const tally_t *tally, const report_t *rep)
{
    uint64_t calls = tally->ok + tally->failed;
    double cpu_s = rep->cost.user_s + rep->cost.sys_s;

    fputs("{\"tool\":\"load\",\"kind\":", stdout);
    json_string(stdout, rep->kind_name);
    fputs(",\"dest\":", stdout);
    json_string(stdout, t->kind == KIND_PING ? "org.freedesktop.DBus" : t->dest);
    fputs(",\"path\":", stdout);
    json_string(stdout, t->kind == KIND_PING ? "/org/freedesktop/DBus"
                        : t->kind == KIND_LIBVIRT_GET_NAME ? t->domain_path : t->path);
    printf(",\"inflight\":%" PRIu64 ",\"warmup\":%" PRIu64 ",\"check_every\":%" PRIu64,
           rep->inflight, rep->warmup, t->check_every);
    fputs(",\"first_reply\":", stdout);
    json_string(stdout, rep->check_summary);
    printf(",\"calls\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"failed\":%" PRIu64
           ",\"duration_s\":%.6f,\"calls_per_s\":%.1f,",
           calls, tally->ok, tally->failed, rep->cost.wall_s,
           rep->cost.wall_s > 0 ? (double)calls / rep->cost.wall_s : 0.0);
    json_latency(stdout, "latency", &rep->stats);
    printf(",\"client\":{\"cpu_us_per_call\":%.3f,\"user_s\":%.6f,\"sys_s\":%.6f,"
           "\"cpu_share\":%.4f,\"voluntary_switches_per_call\":%.3f,"
           "\"involuntary_switches\":%ld}",
           calls ? cpu_s * 1e6 / (double)calls : 0.0, rep->cost.user_s, rep->cost.sys_s,
           rep->cost.wall_s > 0 ? cpu_s / rep->cost.wall_s : 0.0,
           calls ? (double)rep->cost.vcsw / (double)calls : 0.0, rep->cost.ivcsw);
    if (rep->has_floor) {
        fputc(',', stdout);
        json_latency(stdout, "floor_ping", &rep->floor_stats);
    }
    fputs(",\"errors\":{", stdout);
    for (size_t i = 0; i < tally->n_errors; i++) {
        if (i)
            fputc(',', stdout);
        json_string(stdout, tally->errors[i].name);
        printf(":%" PRIu64, tally->errors[i].count);
    }
    printf("},\"errors_other_names\":%" PRIu64 ",\"first_failure\":", tally->errors_other);
    if (tally->first_error)
        json_string(stdout, tally->first_error);
    else
        fputs("null", stdout);
    fputs("}\n", stdout);
}

static void usage(FILE *f)
{
    fputs("Usage: load --call KIND [--address ADDR] [--dest NAME] [--path PATH]\n"
          "            [--duration S | --count N] [--inflight K] [--warmup N]\n"
          "            [--selector S] [--device L:T,...] [--expect-entries N]\n"
          "            [--expect-bool true|false]\n"
          "            [--check-every N] [--floor N] [--timeout-ms MS] [--samples FILE] [--json]\n"
          "KIND: ping                 Peer.Ping to the bus itself (the bus floor)\n"
          "      peer-ping            Peer.Ping to --dest\n"
          "      testmethod           a valid two-device TestMethod\n"
          "      testmethod-invalid   TestMethod with an unknown type; InvalidArgs is success\n"
          "      get-testproperty     Properties.Get of TestProperty\n"
          "      libvirt-listdomains  org.libvirt.Connect.ListDomains(0)\n"
          "      libvirt-get-name     Properties.Get of org.libvirt.Domain Name, first domain\n"
          "  --address ADDR        D-Bus address (default: DBUS_SESSION_BUS_ADDRESS)\n"
          "  --dest NAME           default " VMDEVD_BUS_NAME ", or " LIBVIRT_BUS_NAME
          " for libvirt-*\n"
          "  --path PATH           default " VMDEVD_OBJECT_PATH ", or " LIBVIRT_DEFAULT_PATH
          " for libvirt-*\n"
          "  --duration S          measure for S seconds (default 5)\n"
          "  --count N             measure exactly N calls instead\n"
          "  --inflight K          calls kept outstanding (default 1: blocking calls)\n"
          "  --warmup N            unmeasured calls first (default 200)\n"
          "  --selector S          TestMethod selector (default " DEFAULT_SELECTOR ")\n"
          "  --device L:T,T,...    testmethod: send these devices instead (label L, tokens T;\n"
          "                        repeat for up to 8 devices)\n"
          "  --expect-entries N    get-testproperty/libvirt-listdomains: reply must have N\n"
          "  --expect-bool B       testmethod: the reply must be B\n"
          "  --check-every N       walk the whole reply body on every Nth reply only;\n"
          "                        the others get a signature check (default 1: all)\n"
          "  --floor N             then N Peer.Ping calls to the bus, reported as the floor\n"
          "  --timeout-ms MS       per-call timeout (default 25000)\n"
          "  --samples FILE        write each measured call, in order, to FILE: its latency\n"
          "                        and when it ended (CLOCK_MONOTONIC), in ns, one line each\n"
          "  --json                one JSON object on stdout\n"
          "Exit: 0 all calls succeeded, 1 some failed, 2 usage or setup error.\n",
          f);
}

/* Each measured call as "latency end" in ns, in the order they ended: the
 * end is on CLOCK_MONOTONIC, the clock of V8's CPU profiles, so a slow call
 * can be matched with what the server was doing meanwhile. */
static int write_samples(const char *path, const tally_t *t)
{
    FILE *f = fopen(path, "w");

    if (!f) {
        fprintf(stderr, "load: cannot write %s: %s\n", path, strerror(errno));
        return -errno;
    }
    for (size_t i = 0; i < t->latency.n; i++)
        fprintf(f, "%" PRIu64 " %" PRIu64 "\n", t->latency.v[i], t->ends.v[i]);
    if (fclose(f) != 0) {
        fprintf(stderr, "load: cannot write %s: %s\n", path, strerror(errno));
        return -errno;
    }
    return 0;
}

static int find_kind(const char *name, kind_t *out)
{
    for (size_t i = 0; i < N_KINDS; i++) {
        if (strcmp(kinds[i].name, name) == 0) {
            *out = (kind_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

int main(int argc, char **argv)
{
    enum { OPT_ADDRESS = 256, OPT_CALL, OPT_DEST, OPT_PATH, OPT_DURATION, OPT_COUNT,
           OPT_INFLIGHT, OPT_WARMUP, OPT_SELECTOR, OPT_EXPECT_ENTRIES, OPT_EXPECT_BOOL,
           OPT_FLOOR, OPT_TIMEOUT, OPT_CHECK_EVERY, OPT_DEVICE, OPT_SAMPLES, OPT_JSON };
    static const struct option options[] = {
        { "address", required_argument, NULL, OPT_ADDRESS },
        { "call", required_argument, NULL, OPT_CALL },
        { "dest", required_argument, NULL, OPT_DEST },
        { "path", required_argument, NULL, OPT_PATH },
        { "duration", required_argument, NULL, OPT_DURATION },
        { "count", required_argument, NULL, OPT_COUNT },
        { "inflight", required_argument, NULL, OPT_INFLIGHT },
        { "warmup", required_argument, NULL, OPT_WARMUP },
        { "selector", required_argument, NULL, OPT_SELECTOR },
        { "device", required_argument, NULL, OPT_DEVICE },
        { "expect-entries", required_argument, NULL, OPT_EXPECT_ENTRIES },
        { "expect-bool", required_argument, NULL, OPT_EXPECT_BOOL },
        { "floor", required_argument, NULL, OPT_FLOOR },
        { "timeout-ms", required_argument, NULL, OPT_TIMEOUT },
        { "check-every", required_argument, NULL, OPT_CHECK_EVERY },
        { "samples", required_argument, NULL, OPT_SAMPLES },
        { "json", no_argument, NULL, OPT_JSON },
        { "help", no_argument, NULL, 'h' },
        { 0 }
    };
    const char *address = NULL, *call = NULL, *samples_file = NULL;
    target_t target = { .expect_entries = -1, .expect_bool = -1,
                        .selector = DEFAULT_SELECTOR, .check_every = 1,
                        .timeout_usec = DEFAULT_TIMEOUT_MS * UINT64_C(1000) };
    double duration_s = DEFAULT_DURATION_S;
    uint64_t count = 0, inflight = 1, warmup = DEFAULT_WARMUP, floor_calls = 0, v;
    bool json = false, bad = false;
    tally_t warm = { 0 }, measured = { 0 }, check = { 0 }, floor_tally = { 0 };
    verdict_t first = { .full = true, .want_summary = true };
    report_t rep = { 0 };
    struct rusage ru0, ru1;
    stop_t stop;
    uint64_t t0;
    int opt, r, status = 2;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_ADDRESS: address = optarg; break;
        case OPT_CALL: call = optarg; break;
        case OPT_DEST: target.dest = optarg; break;
        case OPT_PATH: target.path = optarg; break;
        case OPT_SELECTOR: target.selector = optarg; break;
        case OPT_DEVICE:
            bad |= target.n_devices == MAX_DEVICES ||
                   parse_device(optarg, &target.devices[target.n_devices++]) < 0;
            break;
        case OPT_JSON: json = true; break;
        case OPT_SAMPLES: samples_file = optarg; break;
        case OPT_DURATION:
            bad |= parse_double(optarg, 0.001, 86400, &duration_s) < 0;
            break;
        case OPT_COUNT:
            bad |= parse_u64(optarg, 1, UINT64_C(1) << 40, &count) < 0;
            break;
        case OPT_INFLIGHT:
            bad |= parse_u64(optarg, 1, 4096, &inflight) < 0;
            break;
        case OPT_WARMUP:
            bad |= parse_u64(optarg, 0, UINT64_C(1) << 40, &warmup) < 0;
            break;
        case OPT_CHECK_EVERY:
            bad |= parse_u64(optarg, 1, UINT64_C(1) << 40, &target.check_every) < 0;
            break;
        case OPT_FLOOR:
            bad |= parse_u64(optarg, 0, UINT64_C(1) << 40, &floor_calls) < 0;
            break;
        case OPT_EXPECT_ENTRIES:
            if (parse_u64(optarg, 0, INT64_MAX, &v) < 0)
                bad = true;
            else
                target.expect_entries = (int64_t)v;
            break;
        case OPT_EXPECT_BOOL:
            if (strcmp(optarg, "true") == 0)
                target.expect_bool = 1;
            else if (strcmp(optarg, "false") == 0)
                target.expect_bool = 0;
            else
                bad = true;
            break;
        case OPT_TIMEOUT:
            if (parse_u64(optarg, 1, UINT64_C(3600000), &v) < 0)
                bad = true;
            else
                target.timeout_usec = v * 1000;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            for (const struct option *o = options; o->name; o++)
                if (o->val == opt)
                    fprintf(stderr, "load: bad value '%s' for --%s\n", optarg, o->name);
            return 2;
        }
    }
    if (optind != argc || !call) {
        usage(stderr);
        return 2;
    }
    if (find_kind(call, &target.kind) < 0) {
        fprintf(stderr, "load: unknown --call '%s'\n", call);
        usage(stderr);
        return 2;
    }
    if (!target.dest)
        target.dest = kinds[target.kind].libvirt ? LIBVIRT_BUS_NAME : VMDEVD_BUS_NAME;
    if (!target.path)
        target.path = kinds[target.kind].libvirt ? LIBVIRT_DEFAULT_PATH : VMDEVD_OBJECT_PATH;
    rep.kind_name = kinds[target.kind].name;
    rep.inflight = inflight;
    rep.warmup = warmup;

    r = bus_open(address, "load", &target.bus);
    if (r < 0) {
        fprintf(stderr, "load: cannot connect to %s: %s\n",
                address ? address : "the session bus", strerror(-r));
        return 2;
    }
    if (target.kind == KIND_LIBVIRT_GET_NAME && resolve_domain_path(&target) < 0)
        goto out;

    /* One call first: a server that is missing or wrong stops the run here
     * with its error instead of producing a table of failures. */
    r = tally_init(&check, false, 1);
    if (r >= 0)
        r = call_sync(&target, &check, &first);
    if (r < 0 || check.failed) {
        fprintf(stderr, "load: first %s call failed: %s\n", rep.kind_name,
                check.first_error ? check.first_error : strerror(-r));
        goto out;
    }
    rep.check_summary = first.text;

    if (warmup > 0) {
        r = tally_init(&warm, false, 1);
        if (r >= 0) {
            stop = (stop_t){ .count = warmup };
            r = run_phase(&target, &stop, inflight, &warm);
        }
        if (r < 0 || warm.failed) {
            fprintf(stderr, "load: warm-up failed: %s\n",
                    warm.first_error ? warm.first_error : strerror(-r));
            goto out;
        }
    }

    r = tally_init(&measured, true, count ? count : 65536);
    if (r < 0) {
        fprintf(stderr, "load: %s\n", strerror(-r));
        goto out;
    }
    if (getrusage(RUSAGE_SELF, &ru0) < 0) {
        perror("load: getrusage");
        goto out;
    }
    t0 = now_ns();
    stop = (stop_t){ .count = count, .deadline_ns = t0 + (uint64_t)(duration_s * 1e9) };
    r = run_phase(&target, &stop, inflight, &measured);
    {
        uint64_t wall = now_ns() - t0;

        if (getrusage(RUSAGE_SELF, &ru1) < 0) {
            perror("load: getrusage");
            goto out;
        }
        cost_between(&ru0, &ru1, wall, &rep.cost);
    }
    if (r < 0) {
        fprintf(stderr, "load: run aborted: %s\n", strerror(-r));
        goto out;
    }
    if (samples_file && write_samples(samples_file, &measured) < 0)
        goto out;
    samples_stats(&measured.latency, &rep.stats);

    if (floor_calls > 0) {
        target_t ping = { .bus = target.bus, .kind = KIND_PING, .expect_entries = -1,
                          .expect_bool = -1, .check_every = 1,
                          .timeout_usec = target.timeout_usec };

        stop = (stop_t){ .count = floor_calls };
        r = tally_init(&floor_tally, true, floor_calls);
        if (r >= 0)
            r = run_sync(&ping, &stop, &floor_tally);
        if (r < 0 || floor_tally.failed) {
            fprintf(stderr, "load: floor pings failed: %s\n",
                    floor_tally.first_error ? floor_tally.first_error : strerror(-r));
            goto out;
        }
        samples_stats(&floor_tally.latency, &rep.floor_stats);
        rep.floor_calls = floor_calls;
        rep.has_floor = true;
    }

    if (json)
        print_json(&target, &measured, &rep);
    else
        print_text(&target, &measured, &rep);
    status = measured.failed ? 1 : 0;

out:
    fflush(stdout);
    tally_free(&check);
    tally_free(&warm);
    tally_free(&measured);
    tally_free(&floor_tally);
    free(target.domain_path);
    sd_bus_flush_close_unref(target.bus);
    return status;
}
