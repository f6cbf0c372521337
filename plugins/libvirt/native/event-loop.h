// libvirt's event loop on Node's own: virEventRegisterImpl with libuv
// handles on the main thread's loop, so that a domain event reaches
// JavaScript on the thread that received it, with no thread in between.
//
// libvirt calls the event API from any thread (its RPC and keepalive code
// run on the threads that make calls too). A change asked for on the loop
// thread is applied at once; one asked for from another thread is queued
// under a lock and applied on the loop thread, woken by a uv_async_t.
// Callbacks are only ever run on the loop thread, and the free callback
// libvirt gives with a handle or timeout runs there too, once its libuv
// handle is closed: never inside the libvirt call that removed it.
#pragma once

#include <node_api.h>

#include <chrono>
#include <functional>
#include <string>

namespace vmdevd::event_loop {

// Registers the implementation on the loop of `env`, once per process;
// must precede the first connection. The first environment to load the
// addon must be the main thread's (its loop runs for as long as the
// process does); a worker may load it afterwards. Returns false with
// `error` set when that is not so, or when libuv refused.
bool Init(napi_env env, std::string& error);

// Whether `env` runs on the loop thread (the main thread).
bool IsLoopEnv(napi_env env);

bool OnLoopThread();

// Runs `task` on the loop thread, at a point where no libvirt callback is
// running (from any thread). Once the loop has stopped, runs it at once.
void Post(std::function<void()> task);

// Waits (at most `timeout`) until the loop has finished whatever callback
// it is running now, by running a task on it. Returns false on timeout.
bool Sync(std::chrono::milliseconds timeout);

// The main thread's environment is ending: stops every handle; from now on
// additions fail and posted tasks run at once. Loop thread.
void Stop();

}  // namespace vmdevd::event_loop
