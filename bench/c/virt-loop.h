/* libvirt plumbing shared by the probes that talk to libvirt directly:
 * libvirt's default event loop on a thread of its own, and its errors. */
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>

typedef struct {
    const char *prog; /* prefix of error messages */
    atomic_bool quit;
    int wake_timer; /* fired to make the loop notice quit */
    pthread_t thread;
    bool started;
} event_loop_t;

/* For virSetErrorFunc: libvirt prints nothing; failures are reported where
 * the call fails instead, with last_error(). */
void silent_error(void *userdata, virErrorPtr error);

/* For a tool that runs until SIGTERM or SIGINT: blocks both in the calling
 * thread (threads started later inherit the mask) and returns them in
 * `stop` for sigwait; then initializes libvirt with its errors silent
 * (silent_error) and its default event loop registered. Prints why and
 * returns -1 when libvirt cannot start. */
int virt_init_for_sigwait(const char *prog, sigset_t *stop);

/* The message of this thread's last libvirt error. */
const char *last_error(void);

/* Starts running virEventRunDefaultImpl on its own thread (after
 * virEventRegisterDefaultImpl); loop->wake_timer must be -1 before. */
int event_loop_start(event_loop_t *loop, const char *prog);

/* Stops the thread and removes the wake timer; safe if never started. */
void event_loop_stop(event_loop_t *loop);
