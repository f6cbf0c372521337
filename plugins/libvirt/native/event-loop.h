// libvirt's default event loop, run on a native thread of its own so that
// domain events, keepalive and connection-close detection work without
// anything on the JavaScript thread polling for them.
#pragma once

#include <chrono>
#include <functional>

namespace vmdevd::event_loop {

// Registers libvirt's default event implementation, once per process; must
// precede the first connection. Returns false when libvirt refused.
bool Init();

// Each Node.js environment that loaded the addon holds the loop; the last
// one to go stops the thread (from its env cleanup hook), so that exit
// never races a running libvirt loop.
void AddEnvironment();
void RemoveEnvironment();

// Starts the loop thread if it is not running. Called before a connection
// is opened. JavaScript thread.
void Start();

// Runs `task` on the loop thread (from any thread). Tasks still queued
// when the loop stops run on the stopping thread.
void Post(std::function<void()> task);

bool OnLoopThread();

// Waits (at most `timeout`) until the loop has finished whatever callback
// it is running now, by running a task on it. Returns false on timeout.
bool Sync(std::chrono::milliseconds timeout);

}  // namespace vmdevd::event_loop
