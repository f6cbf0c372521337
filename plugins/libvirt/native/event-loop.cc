#include "event-loop.h"

#include <libvirt/libvirt.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace vmdevd::event_loop {

namespace {

std::once_flag initOnce;
bool initOk = false;
// A timer that is normally disabled (-1); setting it to 0 wakes the loop,
// which then runs posted tasks and looks at `quit`.
int wakeTimer = -1;

std::mutex mutex;  // guards everything below
int environments = 0;
bool running = false;
std::thread thread;
std::thread::id loopThreadId;
std::vector<std::function<void()>> tasks;
std::atomic<bool> quit{false};

void RunTasks() {
  std::vector<std::function<void()>> ready;
  {
    std::lock_guard<std::mutex> lock(mutex);
    ready.swap(tasks);
  }
  for (auto& task : ready) task();
}

void OnWake(int timer, void*) {
  virEventUpdateTimeout(timer, -1);
  RunTasks();
}

void Loop() {
  while (!quit.load()) {
    if (virEventRunDefaultImpl() < 0) {
      // Only a failing poll() gets here; do not spin on it.
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

void Stop() {
  std::thread stopping;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (!running) return;
    running = false;
    quit = true;
    stopping = std::move(thread);
  }
  virEventUpdateTimeout(wakeTimer, 0);
  stopping.join();
  {
    std::lock_guard<std::mutex> lock(mutex);
    loopThreadId = std::thread::id();
  }
  RunTasks();
}

}  // namespace

bool Init() {
  std::call_once(initOnce, [] {
    if (virEventRegisterDefaultImpl() < 0) return;
    wakeTimer = virEventAddTimeout(-1, OnWake, nullptr, nullptr);
    initOk = wakeTimer >= 0;
    // process.exit() skips environment cleanup hooks: stop the loop
    // before static destructors run, or the joinable std::thread aborts
    // the process.
    std::atexit(Stop);
  });
  return initOk;
}

void AddEnvironment() {
  std::lock_guard<std::mutex> lock(mutex);
  environments++;
}

void RemoveEnvironment() {
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (--environments > 0) return;
  }
  Stop();
}

void Start() {
  std::lock_guard<std::mutex> lock(mutex);
  if (running) return;
  running = true;
  quit = false;
  thread = std::thread([] {
    {
      std::lock_guard<std::mutex> lock(mutex);
      loopThreadId = std::this_thread::get_id();
    }
    Loop();
  });
}

void Post(std::function<void()> task) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mutex);
    tasks.push_back(std::move(task));
    wake = running;
  }
  if (wake) {
    virEventUpdateTimeout(wakeTimer, 0);
  } else {
    RunTasks();
  }
}

bool OnLoopThread() {
  std::lock_guard<std::mutex> lock(mutex);
  return std::this_thread::get_id() == loopThreadId;
}

bool Sync(std::chrono::milliseconds timeout) {
  if (OnLoopThread()) return true;
  struct Barrier {
    std::mutex mutex;
    std::condition_variable reached;
    bool done = false;
  };
  // Shared with the task, which may run after a timed-out wait returned.
  auto barrier = std::make_shared<Barrier>();
  Post([barrier] {
    std::lock_guard<std::mutex> lock(barrier->mutex);
    barrier->done = true;
    barrier->reached.notify_all();
  });
  std::unique_lock<std::mutex> lock(barrier->mutex);
  return barrier->reached.wait_for(lock, timeout, [&] { return barrier->done; });
}

}  // namespace vmdevd::event_loop
