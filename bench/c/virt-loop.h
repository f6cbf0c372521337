/* libvirt plumbing shared by the probes that talk to libvirt directly:
 * libvirt's default event loop on a thread of its own, and its errors. */
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>
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

/* The message of this thread's last libvirt error. */
const char *last_error(void);

/* Starts running virEventRunDefaultImpl on its own thread (after
 * virEventRegisterDefaultImpl); loop->wake_timer must be -1 before. */
int event_loop_start(event_loop_t *loop, const char *prog);

/* Stops the thread and removes the wake timer; safe if never started. */
void event_loop_stop(event_loop_t *loop);
