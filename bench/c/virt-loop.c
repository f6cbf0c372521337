#include "virt-loop.h"

#include <stdio.h>
#include <string.h>

void silent_error(void *userdata, virErrorPtr error)
{
    (void)userdata, (void)error; /* reported where the call fails instead */
}

int virt_init_for_sigwait(const char *prog, sigset_t *stop)
{
    sigemptyset(stop);
    sigaddset(stop, SIGTERM);
    sigaddset(stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, stop, NULL);
    virSetErrorFunc(NULL, silent_error);
    if (virInitialize() < 0 || virEventRegisterDefaultImpl() < 0) {
        fprintf(stderr, "%s: libvirt: %s\n", prog, last_error());
        return -1;
    }
    return 0;
}

const char *last_error(void)
{
    const char *msg = virGetLastErrorMessage();

    return msg ? msg : "unknown libvirt error";
}

static void wake_noop(int timer, void *opaque)
{
    (void)timer, (void)opaque;
}

static void *event_loop_main(void *arg)
{
    event_loop_t *loop = arg;

    while (!atomic_load(&loop->quit)) {
        if (virEventRunDefaultImpl() < 0) {
            fprintf(stderr, "%s: event loop: %s\n", loop->prog, last_error());
            break;
        }
    }
    return NULL;
}

int event_loop_start(event_loop_t *loop, const char *prog)
{
    int r;

    loop->prog = prog;
    atomic_init(&loop->quit, false);
    /* Disabled until shutdown, when it fires at once to end the loop. */
    loop->wake_timer = virEventAddTimeout(-1, wake_noop, NULL, NULL);
    if (loop->wake_timer < 0) {
        fprintf(stderr, "%s: virEventAddTimeout: %s\n", loop->prog, last_error());
        return -1;
    }
    r = pthread_create(&loop->thread, NULL, event_loop_main, loop);
    if (r != 0) {
        fprintf(stderr, "%s: pthread_create: %s\n", loop->prog, strerror(r));
        return -1;
    }
    loop->started = true;
    return 0;
}

void event_loop_stop(event_loop_t *loop)
{
    if (loop->started) {
        atomic_store(&loop->quit, true);
        virEventUpdateTimeout(loop->wake_timer, 0);
        pthread_join(loop->thread, NULL);
        loop->started = false;
    }
    if (loop->wake_timer >= 0) {
        virEventRemoveTimeout(loop->wake_timer);
        loop->wake_timer = -1;
    }
}
