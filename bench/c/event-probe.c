/* event-probe: the libvirt floor for state-change events.
 *
 * For each cycle it suspends and then resumes one running domain through
 * libvirt's C API and measures, on CLOCK_MONOTONIC, from just before the
 * call to the arrival of the matching lifecycle event on libvirt's default
 * event loop (run on its own thread). With --emit-timestamps it also prints
 * each call's start time, so another listener (vmdevd's TestSignal,
 * libvirt-dbus's DomainEvent, via signal-probe) can compute its own latency
 * for the same state changes from the same clock. */
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

#define DEFAULT_INTERVAL_MS 100
#define DEFAULT_TIMEOUT_MS 5000

typedef enum { OP_SUSPEND, OP_RESUME, N_OPS } op_t;

static const char *const op_names[N_OPS] = { "suspend", "resume" };
static const int op_events[N_OPS] = { VIR_DOMAIN_EVENT_SUSPENDED, VIR_DOMAIN_EVENT_RESUMED };

/* Shared between the measuring thread and the event-loop thread. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool waiting;        /* a call is in progress and wants its event */
    int expect;          /* the lifecycle event it wants */
    bool got;
    uint64_t t_event;    /* when that event arrived */
    uint64_t unexpected; /* other lifecycle events seen meanwhile */
} waiter_t;

static int on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail,
                        void *opaque)
{
    waiter_t *w = opaque;
    uint64_t t = now_ns(); /* first, before taking the lock */

    (void)conn, (void)dom, (void)detail;
    pthread_mutex_lock(&w->lock);
    if (w->waiting && !w->got && event == w->expect) {
        w->got = true;
        w->t_event = t;
        pthread_cond_signal(&w->cond);
    } else {
        w->unexpected++;
    }
    pthread_mutex_unlock(&w->lock);
    return 0;
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

typedef struct {
    uint64_t t_call;   /* just before the call */
    uint64_t t_return; /* the call returned */
    uint64_t t_event;  /* the lifecycle event arrived; 0: timed out */
} sample_t;

/* Runs one suspend or resume and waits for its event. Returns -1 when the
 * call fails (the run stops), 0 otherwise (s->t_event is 0 on a timeout). */
static int run_op(virDomainPtr dom, waiter_t *w, op_t op, uint64_t timeout_ms, sample_t *s)
{
    struct timespec deadline;
    uint64_t end;
    int rc;

    pthread_mutex_lock(&w->lock);
    w->waiting = true;
    w->got = false;
    w->expect = op_events[op];
    pthread_mutex_unlock(&w->lock);

    s->t_call = now_ns();
    rc = op == OP_SUSPEND ? virDomainSuspend(dom) : virDomainResume(dom);
    s->t_return = now_ns();
    s->t_event = 0;

    end = s->t_return + timeout_ms * UINT64_C(1000000);
    deadline.tv_sec = (time_t)(end / UINT64_C(1000000000));
    deadline.tv_nsec = (long)(end % UINT64_C(1000000000));

    pthread_mutex_lock(&w->lock);
    while (rc >= 0 && !w->got)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &deadline) == ETIMEDOUT)
            break;
    if (w->got)
        s->t_event = w->t_event;
    w->waiting = false;
    pthread_mutex_unlock(&w->lock);
    if (rc < 0) {
        fprintf(stderr, "event-probe: %s failed: %s\n", op_names[op], last_error());
        return -1;
    }
    return 0;
}

static void print_timestamp(bool json, uint64_t cycle, op_t op, const sample_t *s)
{
    if (json)
        printf("{\"type\":\"call\",\"cycle\":%" PRIu64 ",\"op\":\"%s\",\"t_call_ns\":\"%" PRIu64
               "\",\"t_return_ns\":\"%" PRIu64 "\",\"t_event_ns\":\"%" PRIu64 "\"}\n",
               cycle, op_names[op], s->t_call, s->t_return, s->t_event);
    else
        printf("CALL %" PRIu64 " %s %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", cycle, op_names[op],
               s->t_call, s->t_return, s->t_event);
    fflush(stdout);
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Brings the domain to running, or explains why it cannot. */
static int ensure_running(virDomainPtr dom, const char *name)
{
    int state, reason;

    if (virDomainGetState(dom, &state, &reason, 0) < 0) {
        fprintf(stderr, "event-probe: state of %s: %s\n", name, last_error());
        return -1;
    }
    if (state == VIR_DOMAIN_PAUSED) {
        if (virDomainResume(dom) < 0) {
            fprintf(stderr, "event-probe: resuming %s: %s\n", name, last_error());
            return -1;
        }
        return 0;
    }
    if (state != VIR_DOMAIN_RUNNING) {
        fprintf(stderr, "event-probe: %s is not running (state %d)\n", name, state);
        return -1;
    }
    return 0;
}

static void usage(FILE *f)
{
    fputs("Usage: event-probe --domain NAME [--uri URI] [--cycles N] [--interval-ms MS]\n"
          "                   [--timeout-ms MS] [--emit-timestamps] [--json]\n"
          "  --uri URI          libvirt URI (default qemu:///system)\n"
          "  --domain NAME      a running domain; it is suspended and resumed N times\n"
          "  --cycles N         suspend+resume cycles (default 20)\n"
          "  --interval-ms MS   pause after each event, so listeners that coalesce\n"
          "                     changes see every one (default 100)\n"
          "  --timeout-ms MS    wait this long for each event (default 5000)\n"
          "  --emit-timestamps  after each call, print\n"
          "                     CALL <cycle> <op> <t_call_ns> <t_return_ns> <t_event_ns>\n"
          "                     (CLOCK_MONOTONIC; t_call_ns is taken just before the call)\n"
          "  --json             JSON lines instead (times as strings)\n"
          "Reports event latency (call start to lifecycle event) and call duration.\n",
          f);
}

static void print_stats_text(const char *what, const latency_stats_t *st)
{
    printf("  %-16s n %zu  p50 %.1f  p90 %.1f  p99 %.1f  mean %.1f  max %.1f us\n", what,
           st->n, st->p50_us, st->p90_us, st->p99_us, st->mean_us, st->max_us);
}

int main(int argc, char **argv)
{
    enum { OPT_URI = 256, OPT_DOMAIN, OPT_CYCLES, OPT_INTERVAL, OPT_TIMEOUT, OPT_EMIT,
           OPT_JSON };
    static const struct option options[] = {
        { "uri", required_argument, NULL, OPT_URI },
        { "domain", required_argument, NULL, OPT_DOMAIN },
        { "cycles", required_argument, NULL, OPT_CYCLES },
        { "interval-ms", required_argument, NULL, OPT_INTERVAL },
        { "timeout-ms", required_argument, NULL, OPT_TIMEOUT },
        { "emit-timestamps", no_argument, NULL, OPT_EMIT },
        { "json", no_argument, NULL, OPT_JSON },
        { "help", no_argument, NULL, 'h' },
        { 0 }
    };
    const char *uri = "qemu:///system", *name = NULL;
    uint64_t cycles = 20, interval_ms = DEFAULT_INTERVAL_MS, timeout_ms = DEFAULT_TIMEOUT_MS;
    uint64_t timeouts = 0, done_cycles = 0;
    bool emit = false, json = false, failed = false;
    event_loop_t loop = { .wake_timer = -1 };
    waiter_t waiter;
    bool waiter_ok = false;
    virConnectPtr conn = NULL;
    virDomainPtr dom = NULL;
    int callback_id = -1;
    samples_t event_lat[N_OPS] = { 0 }, call_lat[N_OPS] = { 0 }, all_lat = { 0 };
    latency_stats_t ev_st[N_OPS], call_st[N_OPS], all_st;
    int opt, status = 2;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        const char *bad = NULL;

        switch (opt) {
        case OPT_URI: uri = optarg; break;
        case OPT_DOMAIN: name = optarg; break;
        case OPT_EMIT: emit = true; break;
        case OPT_JSON: json = true; break;
        case OPT_CYCLES:
            if (parse_u64(optarg, 1, 10000000, &cycles) < 0)
                bad = "cycles";
            break;
        case OPT_INTERVAL:
            if (parse_u64(optarg, 0, 3600000, &interval_ms) < 0)
                bad = "interval-ms";
            break;
        case OPT_TIMEOUT:
            if (parse_u64(optarg, 1, 3600000, &timeout_ms) < 0)
                bad = "timeout-ms";
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "event-probe: bad value '%s' for --%s\n", optarg, bad);
            return 2;
        }
    }
    if (optind != argc || !name) {
        usage(stderr);
        return 2;
    }

    for (int op = 0; op < N_OPS; op++)
        if (samples_init(&event_lat[op], cycles) < 0 || samples_init(&call_lat[op], cycles) < 0)
            goto out;
    if (samples_init(&all_lat, 2 * cycles) < 0)
        goto out;
    if (waiter_init(&waiter) < 0) {
        fprintf(stderr, "event-probe: cannot set up the waiter\n");
        goto out;
    }
    waiter_ok = true;

    virSetErrorFunc(NULL, silent_error);
    if (virInitialize() < 0 || virEventRegisterDefaultImpl() < 0) {
        fprintf(stderr, "event-probe: libvirt init: %s\n", last_error());
        goto out;
    }
    if (event_loop_start(&loop, "event-probe") < 0)
        goto out;
    conn = virConnectOpen(uri);
    if (!conn) {
        fprintf(stderr, "event-probe: cannot open %s: %s\n", uri, last_error());
        goto out;
    }
    dom = virDomainLookupByName(conn, name);
    if (!dom) {
        fprintf(stderr, "event-probe: domain %s: %s\n", name, last_error());
        goto out;
    }
    if (ensure_running(dom, name) < 0)
        goto out;
    /* Registered before the first call: the event can beat the reply. */
    callback_id = virConnectDomainEventRegisterAny(conn, dom, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                   VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle),
                                                   &waiter, NULL);
    if (callback_id < 0) {
        fprintf(stderr, "event-probe: event registration: %s\n", last_error());
        goto out;
    }
    /* Let a resume done by ensure_running deliver its event before we wait. */
    sleep_ms(interval_ms);

    for (uint64_t cycle = 0; cycle < cycles && !failed; cycle++) {
        for (op_t op = 0; op < N_OPS; op++) {
            sample_t s;

            if (run_op(dom, &waiter, op, timeout_ms, &s) < 0) {
                failed = true;
                break;
            }
            if (emit)
                print_timestamp(json, cycle, op, &s);
            if (samples_push(&call_lat[op], s.t_return - s.t_call) < 0)
                failed = true;
            if (s.t_event == 0) {
                timeouts++;
                fprintf(stderr, "event-probe: cycle %" PRIu64 ": no %s event within %" PRIu64
                        " ms\n", cycle, op_names[op], timeout_ms);
            } else if (samples_push(&event_lat[op], s.t_event - s.t_call) < 0 ||
                       samples_push(&all_lat, s.t_event - s.t_call) < 0) {
                failed = true;
            }
            if (interval_ms)
                sleep_ms(interval_ms);
        }
        if (!failed)
            done_cycles++;
    }

    for (int op = 0; op < N_OPS; op++) {
        samples_stats(&event_lat[op], &ev_st[op]);
        samples_stats(&call_lat[op], &call_st[op]);
    }
    samples_stats(&all_lat, &all_st);
    pthread_mutex_lock(&waiter.lock);
    uint64_t unexpected = waiter.unexpected;
    pthread_mutex_unlock(&waiter.lock);

    if (json) {
        fputs("{\"type\":\"summary\",\"tool\":\"event-probe\",\"uri\":", stdout);
        json_string(stdout, uri);
        fputs(",\"domain\":", stdout);
        json_string(stdout, name);
        printf(",\"cycles\":%" PRIu64 ",\"interval_ms\":%" PRIu64 ",\"timeouts\":%" PRIu64
               ",\"unexpected_events\":%" PRIu64 ",\"failed\":%s,",
               done_cycles, interval_ms, timeouts, unexpected, failed ? "true" : "false");
        json_latency(stdout, "event", &all_st);
        fputc(',', stdout);
        json_latency(stdout, "event_suspend", &ev_st[OP_SUSPEND]);
        fputc(',', stdout);
        json_latency(stdout, "event_resume", &ev_st[OP_RESUME]);
        fputc(',', stdout);
        json_latency(stdout, "call_suspend", &call_st[OP_SUSPEND]);
        fputc(',', stdout);
        json_latency(stdout, "call_resume", &call_st[OP_RESUME]);
        fputs("}\n", stdout);
    } else {
        printf("event-probe: %s %s, %" PRIu64 " cycles, %" PRIu64 " timeouts, %" PRIu64
               " unexpected events%s\n",
               uri, name, done_cycles, timeouts, unexpected, failed ? ", FAILED" : "");
        printf("  call start -> lifecycle event:\n");
        print_stats_text("both", &all_st);
        print_stats_text("suspend", &ev_st[OP_SUSPEND]);
        print_stats_text("resume", &ev_st[OP_RESUME]);
        printf("  call duration:\n");
        print_stats_text("suspend", &call_st[OP_SUSPEND]);
        print_stats_text("resume", &call_st[OP_RESUME]);
    }
    fflush(stdout);
    status = failed || timeouts ? 1 : 0;

out:
    if (callback_id >= 0)
        virConnectDomainEventDeregisterAny(conn, callback_id);
    if (dom)
        virDomainFree(dom);
    if (conn)
        virConnectClose(conn);
    event_loop_stop(&loop);
    if (waiter_ok)
        waiter_destroy(&waiter);
    for (int op = 0; op < N_OPS; op++) {
        samples_free(&event_lat[op]);
        samples_free(&call_lat[op]);
    }
    samples_free(&all_lat);
    return status;
}
