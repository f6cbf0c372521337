/* ref-server: the smallest server of the vmdevd D-Bus contract on sd-bus.
 *
 * It validates a TestMethod request about as much as the daemon's parser
 * must (every label and token is read and checked, the type is looked up)
 * and then answers true without detaching anything, so a call to it costs
 * what the bus and a native server cost: the floor for vmdevd's own cost.
 * TestProperty is served by sd-bus's standard property vtable. */
#include "bus.h"
#include "contract.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>

#define LABEL_MAX 64

/* Desired states a TestProperty write may ask for (design 1.3). */
static const char *const desired_states[] = { "running", "paused", "shutdown", "shutoff" };

/* The most devices one request may name (the daemon's limit too). */
#define DEVICES_MAX 256

typedef struct {
    size_t n_vms;
    char **vm_names;        /* vm-0000, vm-0001, ... */
    const char **vm_states; /* points into desired_states */
    bool outcomes;          /* send DeviceDetached per device, as the contract requires */
} server_t;

static void server_free(server_t *s)
{
    if (s->vm_names)
        for (size_t i = 0; i < s->n_vms; i++)
            free(s->vm_names[i]);
    free(s->vm_names);
    free(s->vm_states);
}

static int server_init(server_t *s, size_t n_vms)
{
    *s = (server_t){ .n_vms = n_vms };
    s->vm_names = calloc(n_vms ? n_vms : 1, sizeof(*s->vm_names));
    s->vm_states = calloc(n_vms ? n_vms : 1, sizeof(*s->vm_states));
    if (!s->vm_names || !s->vm_states)
        return -ENOMEM;
    for (size_t i = 0; i < n_vms; i++) {
        if (asprintf(&s->vm_names[i], "vm-%04zu", i) < 0) {
            s->vm_names[i] = NULL;
            return -ENOMEM;
        }
        s->vm_states[i] = desired_states[0];
    }
    return 0;
}

static bool label_valid(const char *label)
{
    size_t n = strlen(label);

    if (n < 1 || n > LABEL_MAX)
        return false;
    return strspn(label, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                         "0123456789_.:-") == n;
}

static bool device_type_known(const char *type)
{
    static const char *const types[] = VMDEVD_DEVICE_TYPES;

    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(type, types[i]) == 0)
            return true;
    return false;
}

/* Reads one device's tokens (the message is inside its "as"). Sets error
 * and returns -EINVAL when the device is not acceptable. */
static int read_device_tokens(sd_bus_message *m, const char *label, sd_bus_error *error)
{
    const char *type = NULL;
    const char *token;
    int r;

    while ((r = sd_bus_message_read_basic(m, 's', &token)) > 0) {
        const char *eq = strchr(token, '=');

        if (!eq || eq == token)
            return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                     "Device %s: token '%s' is not name=value.", label, token);
        if ((size_t)(eq - token) == 4 && strncmp(token, "type", 4) == 0) {
            if (type)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Device %s: type is given twice.", label);
            type = eq + 1;
        }
    }
    if (r < 0)
        return r;
    if (!type)
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                 "Device %s: the type token is missing.", label);
    if (!device_type_known(type))
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                 "Device %s: unknown type '%s'.", label, type);
    return 0;
}

static int method_test(sd_bus_message *m, void *userdata, sd_bus_error *error)
{
    const server_t *s = userdata;
    const char *selector;
    const char *labels[DEVICES_MAX]; /* point into m, which lives until we return */
    size_t n_devices = 0;
    int r;

    r = sd_bus_message_read_basic(m, 's', &selector);
    if (r < 0)
        return r;
    r = sd_bus_message_enter_container(m, 'a', "{sas}");
    if (r < 0)
        return r;
    while ((r = sd_bus_message_enter_container(m, 'e', "sas")) > 0) {
        const char *label;

        r = sd_bus_message_read_basic(m, 's', &label);
        if (r < 0)
            return r;
        if (!label_valid(label))
            return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                     "Device label '%s' is not 1-64 characters of [A-Za-z0-9_.:-].",
                                     label);
        r = sd_bus_message_enter_container(m, 'a', "s");
        if (r < 0)
            return r;
        r = read_device_tokens(m, label, error);
        if (r < 0)
            return r;
        r = sd_bus_message_exit_container(m); /* as */
        if (r < 0)
            return r;
        r = sd_bus_message_exit_container(m); /* {sas} */
        if (r < 0)
            return r;
        if (n_devices == DEVICES_MAX)
            return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                     "More than %d devices.", DEVICES_MAX);
        labels[n_devices++] = label;
    }
    if (r < 0)
        return r;
    r = sd_bus_message_exit_container(m);
    if (r < 0)
        return r;
    if (n_devices == 0)
        return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "The device map is empty.");
    r = sd_bus_reply_method_return(m, "b", 1);
    if (r < 0 || !s->outcomes)
        return r;
    /* Every device of an accepted request ends with an outcome signal: a
     * reference server of the contract sends them too (confirmed at once,
     * as by the fastest backend). */
    for (size_t i = 0; i < n_devices; i++) {
        r = sd_bus_emit_signal(sd_bus_message_get_bus(m), VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE,
                               "DeviceDetached", "ss", selector, labels[i]);
        if (r < 0)
            return r;
    }
    return 1;
}

/* Appends the VM name -> state map, for the property and for TestSignal. */
static int append_states(const server_t *s, sd_bus_message *m)
{
    int r = sd_bus_message_open_container(m, 'a', "{ss}");

    if (r < 0)
        return r;
    for (size_t i = 0; i < s->n_vms; i++) {
        r = sd_bus_message_append(m, "{ss}", s->vm_names[i], s->vm_states[i]);
        if (r < 0)
            return r;
    }
    return sd_bus_message_close_container(m);
}

static int get_test_property(sd_bus *bus, const char *path, const char *interface,
                             const char *property, sd_bus_message *reply, void *userdata,
                             sd_bus_error *error)
{
    (void)bus, (void)path, (void)interface, (void)property, (void)error;
    return append_states(userdata, reply);
}

static int emit_test_signal(sd_bus *bus, const server_t *s)
{
    sd_bus_message *m = NULL;
    int r;

    r = sd_bus_message_new_signal(bus, &m, VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE, "TestSignal");
    if (r >= 0)
        r = append_states(s, m);
    if (r >= 0)
        r = sd_bus_send(bus, m, NULL);
    sd_bus_message_unref(m);
    return r;
}

static ssize_t find_vm(const server_t *s, const char *name)
{
    for (size_t i = 0; i < s->n_vms; i++)
        if (strcmp(s->vm_names[i], name) == 0)
            return (ssize_t)i;
    return -1;
}

static const char *find_desired_state(const char *state)
{
    for (size_t i = 0; i < sizeof(desired_states) / sizeof(desired_states[0]); i++)
        if (strcmp(state, desired_states[i]) == 0)
            return desired_states[i];
    return NULL;
}

/* Applies a whole write or nothing: every entry is checked first. */
static int set_test_property(sd_bus *bus, const char *path, const char *interface,
                             const char *property, sd_bus_message *value, void *userdata,
                             sd_bus_error *error)
{
    server_t *s = userdata;
    const char *vm, *state;
    int r;

    (void)path, (void)interface, (void)property;
    for (int pass = 0; pass < 2; pass++) {
        r = sd_bus_message_enter_container(value, 'a', "{ss}");
        if (r < 0)
            return r;
        while ((r = sd_bus_message_read(value, "{ss}", &vm, &state)) > 0) {
            ssize_t i = find_vm(s, vm);
            const char *desired = find_desired_state(state);

            if (i < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Unknown VM '%s'.", vm);
            if (!desired)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "VM %s: unknown state '%s'.", vm, state);
            if (pass == 1)
                s->vm_states[i] = desired;
        }
        if (r < 0)
            return r;
        r = sd_bus_message_exit_container(value);
        if (r < 0)
            return r;
        if (pass == 0) {
            r = sd_bus_message_rewind(value, false);
            if (r < 0)
                return r;
        }
    }
    /* The reference applies a state at once, so the map has changed now. */
    r = sd_bus_emit_properties_changed(bus, VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE,
                                       "TestProperty", NULL);
    if (r < 0)
        return r;
    return emit_test_signal(bus, s);
}

static int get_backends(sd_bus *bus, const char *path, const char *interface,
                        const char *property, sd_bus_message *reply, void *userdata,
                        sd_bus_error *error)
{
    (void)bus, (void)path, (void)interface, (void)property, (void)userdata, (void)error;
    return sd_bus_message_append(reply, "a{ss}", 1, "ref", "connected");
}

/* UNPRIVILEGED: sd-bus then grants calls and writes without looking up the
 * caller's credentials; who may call is the bus policy's business, as it is
 * for the daemon, and a lookup per call would distort the floor. */
static const sd_bus_vtable module_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD_WITH_NAMES("TestMethod", "sa{sas}", SD_BUS_PARAM(selector) SD_BUS_PARAM(devices),
                             "b", SD_BUS_PARAM(accepted), method_test, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_WRITABLE_PROPERTY("TestProperty", "a{ss}", get_test_property, set_test_property, 0,
                             SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_PROPERTY("Backends", "a{ss}", get_backends, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_SIGNAL_WITH_NAMES("TestSignal", "a{ss}", SD_BUS_PARAM(states), 0),
    SD_BUS_SIGNAL_WITH_NAMES("DeviceDetached", "ss", SD_BUS_PARAM(vm) SD_BUS_PARAM(device), 0),
    SD_BUS_SIGNAL_WITH_NAMES("DeviceDetachFailed", "ssss",
                             SD_BUS_PARAM(vm) SD_BUS_PARAM(device) SD_BUS_PARAM(error)
                             SD_BUS_PARAM(message), 0),
    SD_BUS_VTABLE_END
};

static void usage(FILE *f)
{
    fputs("Usage: ref-server [--address ADDR] [--name NAME] [--vms N] [--no-outcomes]\n"
          "  --address ADDR  D-Bus address (default: DBUS_SESSION_BUS_ADDRESS)\n"
          "  --name NAME     bus name to own (default " VMDEVD_BUS_NAME ")\n"
          "  --vms N         entries in TestProperty: vm-0000 -> running ... (default 1)\n"
          "  --no-outcomes   no DeviceDetached after an accepted TestMethod\n"
          "Prints 'READY <unique name>' once the name is owned; exits on SIGTERM/SIGINT.\n",
          f);
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        { "address", required_argument, NULL, 'a' },
        { "name", required_argument, NULL, 'n' },
        { "vms", required_argument, NULL, 'v' },
        { "no-outcomes", no_argument, NULL, 'o' },
        { "help", no_argument, NULL, 'h' },
        { 0 }
    };
    const char *address = NULL, *name = VMDEVD_BUS_NAME, *unique;
    uint64_t n_vms = 1;
    bool outcomes = true;
    server_t server = { 0 };
    sd_event *event = NULL;
    sd_bus *bus = NULL;
    sd_bus_slot *slot = NULL;
    sigset_t mask;
    int opt, r, status = EXIT_FAILURE;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'n': name = optarg; break;
        case 'v':
            if (parse_u64(optarg, 0, 1000000, &n_vms) < 0) {
                fprintf(stderr, "ref-server: --vms wants 0..1000000, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'o': outcomes = false; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    r = server_init(&server, n_vms);
    server.outcomes = outcomes;
    if (r < 0) {
        fprintf(stderr, "ref-server: %s\n", strerror(-r));
        goto out;
    }

    /* The signals are handled by the event loop, so block their default action. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
        perror("ref-server: sigprocmask");
        goto out;
    }

    r = sd_event_default(&event);
    if (r < 0) {
        fprintf(stderr, "ref-server: sd_event_default: %s\n", strerror(-r));
        goto out;
    }
    /* A NULL handler makes the loop exit when the signal arrives. */
    r = sd_event_add_signal(event, NULL, SIGTERM, NULL, NULL);
    if (r >= 0)
        r = sd_event_add_signal(event, NULL, SIGINT, NULL, NULL);
    if (r < 0) {
        fprintf(stderr, "ref-server: sd_event_add_signal: %s\n", strerror(-r));
        goto out;
    }

    r = bus_open(address, "ref-server", &bus);
    if (r < 0) {
        fprintf(stderr, "ref-server: cannot connect to %s: %s\n",
                address ? address : "the session bus", strerror(-r));
        goto out;
    }
    r = sd_bus_add_object_vtable(bus, &slot, VMDEVD_OBJECT_PATH, VMDEVD_INTERFACE,
                                 module_vtable, &server);
    if (r < 0) {
        fprintf(stderr, "ref-server: sd_bus_add_object_vtable: %s\n", strerror(-r));
        goto out;
    }
    /* Without the bus there is nothing left to do: end the loop. */
    r = sd_bus_set_exit_on_disconnect(bus, true);
    if (r < 0) {
        fprintf(stderr, "ref-server: sd_bus_set_exit_on_disconnect: %s\n", strerror(-r));
        goto out;
    }
    r = sd_bus_attach_event(bus, event, SD_EVENT_PRIORITY_NORMAL);
    if (r < 0) {
        fprintf(stderr, "ref-server: sd_bus_attach_event: %s\n", strerror(-r));
        goto out;
    }
    r = sd_bus_request_name(bus, name, 0);
    if (r < 0) {
        fprintf(stderr, "ref-server: cannot own %s: %s\n", name, strerror(-r));
        goto out;
    }
    r = sd_bus_get_unique_name(bus, &unique);
    if (r < 0) {
        fprintf(stderr, "ref-server: sd_bus_get_unique_name: %s\n", strerror(-r));
        goto out;
    }
    printf("READY %s\n", unique);
    fflush(stdout);

    /* 0 after SIGTERM/SIGINT; EXIT_FAILURE when the bus went away. */
    r = sd_event_loop(event);
    if (r < 0) {
        fprintf(stderr, "ref-server: event loop: %s\n", strerror(-r));
        goto out;
    }
    if (r != 0) {
        fprintf(stderr, "ref-server: disconnected from the bus\n");
        goto out;
    }
    status = EXIT_SUCCESS;

out:
    sd_bus_slot_unref(slot);
    sd_bus_flush_close_unref(bus);
    sd_event_unref(event);
    server_free(&server);
    return status;
}
