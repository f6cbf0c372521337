// The time slice the kernel gives the loop thread (Node's main thread,
// where libvirt's events, and every D-Bus call, are handled). Linux 6.12
// and later schedule ordinary threads by EEVDF, where a thread may ask for
// a shorter slice than the default (sched_setattr's sched_runtime for
// SCHED_OTHER): it keeps its share of the CPU, but a thread woken with a
// short slice gets the CPU sooner instead of waiting for the running
// thread's longer slice to end.
#pragma once

#include <napi.h>

namespace vmdevd {

// requestLoopSlice(microseconds): on the loop thread, asks for a slice of
// at most `microseconds` (100 to 100000), keeping the thread's policy and
// nice value; a thread that already has a shorter one keeps it. Returns
// { beforeUs, afterUs }: the slice before and after, as the kernel reports
// it (a kernel before 6.12 keeps no slice: 0). Throws a TypeError or
// RangeError for a bad argument, and an Error with the system's reason when
// the kernel refuses (a seccomp filter: EPERM) or when the thread's policy
// is not SCHED_OTHER (an operator's choice, left as it is).
Napi::Value RequestLoopSlice(const Napi::CallbackInfo& info);

}  // namespace vmdevd
