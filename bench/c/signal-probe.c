/* signal-probe: prints the CLOCK_MONOTONIC time at which each matching
 * D-Bus signal is received, one flushed line per signal, so the latency
 * of TestSignal or libvirt-dbus's DomainEvent can be computed against the
 * call timestamps event-probe prints from the same clock. */
#include "bus.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>

typedef struct {
    sd_event *event;
    const char *key; /* for a{ss} arguments: print only this key's value */
    bool json;
    uint64_t limit;  /* 0: no limit */
    uint64_t seen;
} probe_t;

static void print_text_value(bool json, const char *s)
{
    if (json)
        json_string(stdout, s);
    else
        fputs(s, stdout);
}

/* Prints one basic value (the message is positioned at it). */
static int print_basic(sd_bus_message *m, char type, bool json)
{
    union {
        uint8_t y;
        int b;
        int16_t n;
        uint16_t q;
        int32_t i;
        uint32_t u;
        int64_t x;
        uint64_t t;
        double d;
        const char *s;
        int h;
    } v;
    int r = sd_bus_message_read_basic(m, type, &v);

    if (r <= 0)
        return r < 0 ? r : -EBADMSG;
    switch (type) {
    case 'y': printf("%u", v.y); break;
    case 'b': fputs(v.b ? "true" : "false", stdout); break;
    case 'n': printf("%d", v.n); break;
    case 'q': printf("%u", v.q); break;
    case 'i': printf("%" PRId32, v.i); break;
    case 'u': printf("%" PRIu32, v.u); break;
    case 'x': printf("%" PRId64, v.x); break;
    case 't': printf("%" PRIu64, v.t); break;
    case 'd': printf("%.17g", v.d); break;
    case 'h': printf("%d", v.h); break;
    case 's': case 'o': case 'g': print_text_value(json, v.s); break;
    default: return -EINVAL;
    }
    return 0;
}

/* For an a{ss} argument: with --key, "key=value" (or "key=" when absent);
 * without, the number of entries. The whole map is read either way. */
static int print_string_map(sd_bus_message *m, const char *key, bool json)
{
    const char *k, *v, *found = NULL;
    size_t n = 0;
    int r;

    r = sd_bus_message_enter_container(m, 'a', "{ss}");
    if (r <= 0)
        return r < 0 ? r : -EBADMSG;
    while ((r = sd_bus_message_enter_container(m, 'e', "ss")) > 0) {
        r = sd_bus_message_read_basic(m, 's', &k);
        if (r > 0)
            r = sd_bus_message_read_basic(m, 's', &v);
        if (r > 0)
            r = sd_bus_message_exit_container(m);
        if (r <= 0)
            return r < 0 ? r : -EBADMSG;
        n++;
        if (key && !found && strcmp(k, key) == 0)
            found = v;
    }
    if (r < 0)
        return r;
    r = sd_bus_message_exit_container(m);
    if (r < 0)
        return r;
    if (key) {
        char *text;

        if (asprintf(&text, "%s=%s", key, found ? found : "") < 0)
            return -ENOMEM;
        print_text_value(json, text);
        free(text);
    } else if (json) {
        printf("{\"entries\":%zu}", n);
    } else {
        printf("a{ss}[%zu]", n);
    }
    return 0;
}

/* Prints the top-level arguments: basic values as they are, a{ss} as above,
 * other containers by their signature only. */
static int print_args(sd_bus_message *m, const probe_t *p)
{
    bool first = true;
    char type;
    const char *contents;
    int r;

    if (p->json)
        fputc('[', stdout);
    while ((r = sd_bus_message_peek_type(m, &type, &contents)) > 0) {
        if (!first)
            fputc(p->json ? ',' : ' ', stdout);
        first = false;
        if (type == 'a' && strcmp(contents, "{ss}") == 0) {
            r = print_string_map(m, p->key, p->json);
        } else if (type == 'a' || type == 'v' || type == 'r') {
            char sig[256];

            if (type == 'a')
                snprintf(sig, sizeof(sig), "a%s", contents);
            else if (type == 'r')
                snprintf(sig, sizeof(sig), "(%s)", contents);
            else
                snprintf(sig, sizeof(sig), "v");
            print_text_value(p->json, sig);
            r = sd_bus_message_skip(m, NULL);
        } else {
            r = print_basic(m, type, p->json);
        }
        if (r < 0)
            return r;
    }
    if (r < 0)
        return r;
    if (p->json)
        fputc(']', stdout);
    return 0;
}

static int on_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
    probe_t *p = userdata;
    uint64_t t = now_ns(); /* first, before any printing */
    const char *sender = sd_bus_message_get_sender(m);
    const char *path = sd_bus_message_get_path(m);
    const char *iface = sd_bus_message_get_interface(m);
    const char *member = sd_bus_message_get_member(m);
    int r;

    (void)ret_error;
    if (p->json) {
        printf("{\"type\":\"signal\",\"t_ns\":\"%" PRIu64 "\",\"sender\":", t);
        json_string(stdout, sender ? sender : "");
        fputs(",\"path\":", stdout);
        json_string(stdout, path ? path : "");
        fputs(",\"interface\":", stdout);
        json_string(stdout, iface ? iface : "");
        fputs(",\"member\":", stdout);
        json_string(stdout, member ? member : "");
        fputs(",\"args\":", stdout);
    } else {
        printf("SIGNAL %" PRIu64 " %s %s %s.%s ", t, sender ? sender : "-", path ? path : "-",
               iface ? iface : "-", member ? member : "-");
    }
    r = print_args(m, p);
    if (r < 0) {
        /* Keep the line parseable and say why the arguments are missing. */
        if (p->json)
            printf("null,\"args_error\":\"%s\"", strerror(-r));
        else
            printf("(unreadable arguments: %s)", strerror(-r));
    }
    fputs(p->json ? "}\n" : "\n", stdout);
    fflush(stdout);

    p->seen++;
    if (p->limit && p->seen >= p->limit)
        return sd_event_exit(p->event, 0);
    return 0;
}

static int on_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
    probe_t *p = userdata;

    (void)s, (void)usec;
    /* Reaching the timeout before --count signals is a failure. */
    return sd_event_exit(p->event, p->limit && p->seen < p->limit ? 1 : 0);
}

/* Appends ",name='value'" to the match rule; quotes cannot be escaped in
 * match rules, so a value containing one is refused. */
static int rule_add(char *rule, size_t size, const char *name, const char *value)
{
    size_t len = strlen(rule);
    int n;

    if (!value)
        return 0;
    if (strchr(value, '\'') || strchr(value, ','))
        return -EINVAL;
    n = snprintf(rule + len, size - len, ",%s='%s'", name, value);
    return n < 0 || (size_t)n >= size - len ? -ENAMETOOLONG : 0;
}

static void usage(FILE *f)
{
    fputs("Usage: signal-probe [--address ADDR] [--sender NAME] [--path PATH]\n"
          "                    [--interface IFACE] [--member NAME] [--key KEY]\n"
          "                    [--count N] [--timeout S] [--json]\n"
          "Prints 'READY <unique name>' once the match is installed, then per signal:\n"
          "  SIGNAL <t_ns> <sender> <path> <interface>.<member> <args...>\n"
          "t_ns is CLOCK_MONOTONIC at receipt. An a{ss} argument prints as KEY=value\n"
          "with --key, else as its entry count. Ends with 'END <signals>'.\n"
          "--json: the same as one JSON object per line (t_ns as a string).\n"
          "Exit: 0, or 1 when --timeout passes before --count signals.\n",
          f);
}

int main(int argc, char **argv)
{
    enum { OPT_ADDRESS = 256, OPT_SENDER, OPT_PATH, OPT_INTERFACE, OPT_MEMBER, OPT_KEY,
           OPT_COUNT, OPT_TIMEOUT, OPT_JSON };
    static const struct option options[] = {
        { "address", required_argument, NULL, OPT_ADDRESS },
        { "sender", required_argument, NULL, OPT_SENDER },
        { "path", required_argument, NULL, OPT_PATH },
        { "interface", required_argument, NULL, OPT_INTERFACE },
        { "member", required_argument, NULL, OPT_MEMBER },
        { "key", required_argument, NULL, OPT_KEY },
        { "count", required_argument, NULL, OPT_COUNT },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "json", no_argument, NULL, OPT_JSON },
        { "help", no_argument, NULL, 'h' },
        { 0 }
    };
    const char *address = NULL, *sender = NULL, *path = NULL, *iface = NULL, *member = NULL;
    const char *unique;
    double timeout_s = 0;
    probe_t probe = { 0 };
    sd_bus *bus = NULL;
    sd_bus_slot *match = NULL;
    char rule[1024] = "type='signal'";
    sigset_t mask;
    int opt, r, status = 2;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_ADDRESS: address = optarg; break;
        case OPT_SENDER: sender = optarg; break;
        case OPT_PATH: path = optarg; break;
        case OPT_INTERFACE: iface = optarg; break;
        case OPT_MEMBER: member = optarg; break;
        case OPT_KEY: probe.key = optarg; break;
        case OPT_JSON: probe.json = true; break;
        case OPT_COUNT:
            if (parse_u64(optarg, 1, UINT64_C(1) << 40, &probe.limit) < 0) {
                fprintf(stderr, "signal-probe: bad --count '%s'\n", optarg);
                return 2;
            }
            break;
        case OPT_TIMEOUT:
            if (parse_double(optarg, 0.001, 86400, &timeout_s) < 0) {
                fprintf(stderr, "signal-probe: bad --timeout '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (rule_add(rule, sizeof(rule), "sender", sender) < 0 ||
        rule_add(rule, sizeof(rule), "path", path) < 0 ||
        rule_add(rule, sizeof(rule), "interface", iface) < 0 ||
        rule_add(rule, sizeof(rule), "member", member) < 0) {
        fprintf(stderr, "signal-probe: a match value contains a quote or comma, or is too long\n");
        return 2;
    }

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
        perror("signal-probe: sigprocmask");
        return 2;
    }
    r = sd_event_default(&probe.event);
    if (r < 0) {
        fprintf(stderr, "signal-probe: sd_event_default: %s\n", strerror(-r));
        goto out;
    }
    r = sd_event_add_signal(probe.event, NULL, SIGTERM, NULL, NULL);
    if (r >= 0)
        r = sd_event_add_signal(probe.event, NULL, SIGINT, NULL, NULL);
    if (r >= 0 && timeout_s > 0)
        r = sd_event_add_time_relative(probe.event, NULL, CLOCK_MONOTONIC,
                                       (uint64_t)(timeout_s * 1e6), 0, on_timeout, &probe);
    if (r < 0) {
        fprintf(stderr, "signal-probe: event sources: %s\n", strerror(-r));
        goto out;
    }

    r = bus_open(address, "signal-probe", &bus);
    if (r < 0) {
        fprintf(stderr, "signal-probe: cannot connect to %s: %s\n",
                address ? address : "the session bus", strerror(-r));
        goto out;
    }
    /* Synchronous: when it returns, the bus has the match and READY is true. */
    r = sd_bus_add_match(bus, &match, rule, on_signal, &probe);
    if (r < 0) {
        fprintf(stderr, "signal-probe: AddMatch %s: %s\n", rule, strerror(-r));
        goto out;
    }
    /* Without the bus there is nothing left to do: end the loop. */
    r = sd_bus_set_exit_on_disconnect(bus, true);
    if (r < 0) {
        fprintf(stderr, "signal-probe: sd_bus_set_exit_on_disconnect: %s\n", strerror(-r));
        goto out;
    }
    r = sd_bus_attach_event(bus, probe.event, SD_EVENT_PRIORITY_NORMAL);
    if (r >= 0)
        r = sd_bus_get_unique_name(bus, &unique);
    if (r < 0) {
        fprintf(stderr, "signal-probe: %s\n", strerror(-r));
        goto out;
    }
    if (probe.json) {
        fputs("{\"type\":\"ready\",\"unique\":", stdout);
        json_string(stdout, unique);
        fputs(",\"match\":", stdout);
        json_string(stdout, rule);
        fputs("}\n", stdout);
    } else {
        printf("READY %s\n", unique);
    }
    fflush(stdout);

    r = sd_event_loop(probe.event);
    if (r < 0) {
        fprintf(stderr, "signal-probe: event loop: %s\n", strerror(-r));
        goto out;
    }
    /* 1 also when the bus went away (sd-bus exits the loop with EXIT_FAILURE). */
    status = r;
    if (probe.json)
        printf("{\"type\":\"end\",\"signals\":%" PRIu64 "}\n", probe.seen);
    else
        printf("END %" PRIu64 "\n", probe.seen);
    fflush(stdout);

out:
    sd_bus_slot_unref(match);
    sd_bus_flush_close_unref(bus);
    sd_event_unref(probe.event);
    return status;
}
