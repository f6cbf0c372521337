#include "event-loop.h"

#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace vmdevd::event_loop {

namespace {

// One libvirt watch. The fd is polled through a duplicate of our own:
// libvirt may close its fd right after removing the watch, from any
// thread, before the loop thread has stopped polling it, and epoll would
// then report whatever reuses that fd number to this handle. The duplicate
// keeps the file open, and its number ours, until the handle is closed.
struct Watch {
  int id = 0;
  int fd = -1;  // libvirt's, passed back to its callback
  int dupFd = -1;
  virEventHandleCallback cb = nullptr;
  void* opaque = nullptr;
  virFreeCallback ff = nullptr;
  // Guarded by `mutex`.
  int events = 0;
  bool removed = false;
  bool dirty = false;
  // Loop thread only.
  bool initialized = false;
  bool closing = false;
  int applied = 0;  // the libuv events the handle polls for now
  uv_poll_t handle;
};

struct Timer {
  int id = 0;
  virEventTimeoutCallback cb = nullptr;
  void* opaque = nullptr;
  virFreeCallback ff = nullptr;
  // Guarded by `mutex`. Milliseconds; -1 off, 0 on every loop iteration.
  int timeout = -1;
  bool removed = false;
  bool dirty = false;
  // Loop thread only.
  bool initialized = false;
  bool closing = false;
  uv_timer_t handle;
};

uv_loop_t* loop = nullptr;
std::atomic<std::thread::id> loopThread;
uv_async_t wake;

std::mutex mutex;  // guards what follows, and the guarded fields above
bool started = false;
bool stopped = false;
int nextId = 1;
std::unordered_map<int, Watch*> watches;
std::unordered_map<int, Timer*> timers;
std::vector<Watch*> dirtyWatches;
std::vector<Timer*> dirtyTimers;
std::vector<std::function<void()>> tasks;

// Loop thread only. Timers set to fire at once (timeout 0) from a watch's
// callback, such as libvirt's queue of events after it has read one: fired
// as soon as that callback returns, in the same pass of the loop (libvirt's
// own loop fires them on its next pass, which does not wait). Through libuv
// they would wait for the loop's check and close phases and its next pass.
bool inWatchCallback = false;
std::vector<Timer*> dueNow;

// `mutex` held, so that Stop() cannot close the async handle meanwhile.
void WakeLocked() {
  if (started && !stopped) uv_async_send(&wake);
}

void MarkDirtyLocked(Watch* w) {
  if (w->dirty) return;
  w->dirty = true;
  dirtyWatches.push_back(w);
}

void MarkDirtyLocked(Timer* t) {
  if (t->dirty) return;
  t->dirty = true;
  dirtyTimers.push_back(t);
}

int ToUv(int events) {
  int uvEvents = 0;
  if (events & VIR_EVENT_HANDLE_READABLE) uvEvents |= UV_READABLE;
  if (events & VIR_EVENT_HANDLE_WRITABLE) uvEvents |= UV_WRITABLE;
  // Whoever polls at all wants to hear of a hang-up (an error always comes).
  if (events != 0) uvEvents |= UV_DISCONNECT;
  return uvEvents;
}

int FromUv(int status, int uvEvents) {
  if (status < 0) return VIR_EVENT_HANDLE_ERROR;
  int events = 0;
  if (uvEvents & UV_READABLE) events |= VIR_EVENT_HANDLE_READABLE;
  if (uvEvents & UV_WRITABLE) events |= VIR_EVENT_HANDLE_WRITABLE;
  if (uvEvents & UV_DISCONNECT) events |= VIR_EVENT_HANDLE_HANGUP;
  return events;
}

// ---- loop thread --------------------------------------------------------

void FireTimer(Timer* t) {
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (t->removed) return;
  }
  t->cb(t->id, t->opaque);
  std::lock_guard<std::mutex> lock(mutex);
  // A timeout of 0 fires on every iteration; libuv's of 0 fires once. It is
  // armed again on the next iteration, unless the callback changed it.
  if (!t->removed && t->timeout == 0 && !uv_is_active(reinterpret_cast<uv_handle_t*>(&t->handle))) {
    MarkDirtyLocked(t);
    WakeLocked();
  }
}

void OnTimer(uv_timer_t* handle) { FireTimer(static_cast<Timer*>(handle->data)); }

// Fires the timers set to 0 during a watch's callback, once it has returned.
// Only the loop thread frees a timer, and not before the loop's next
// round: those listed are still there.
void FireDueTimers() {
  std::vector<Timer*> due;
  due.swap(dueNow);
  for (Timer* t : due) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      // Removed or changed since, or an update from another thread pending:
      // the libuv timer, as last armed, decides.
      if (t->removed || t->dirty || t->timeout != 0) continue;
    }
    auto* handle = reinterpret_cast<uv_handle_t*>(&t->handle);
    if (t->closing || !uv_is_active(handle)) continue;
    uv_timer_stop(&t->handle);
    FireTimer(t);
  }
}

void OnPoll(uv_poll_t* handle, int status, int uvEvents) {
  auto* w = static_cast<Watch*>(handle->data);
  // libuv stops a handle that reports an error; an update starts it again.
  if (status < 0) w->applied = 0;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (w->removed) return;
  }
  inWatchCallback = true;
  w->cb(w->id, w->fd, FromUv(status, uvEvents), w->opaque);
  inWatchCallback = false;
  if (!dueNow.empty()) FireDueTimers();
}

void FreeWatch(Watch* w) {
  close(w->dupFd);
  if (w->ff != nullptr) w->ff(w->opaque);
  delete w;
}

void FreeTimer(Timer* t) {
  if (t->ff != nullptr) t->ff(t->opaque);
  delete t;
}

// Applies what libvirt last asked of a watch that is not removed.
// `safePoint`: called outside any libvirt call, so libvirt's callback may run.
void ApplyWatch(Watch* w, bool safePoint) {
  int events;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (w->removed) return;
    events = w->events;
  }
  if (!w->initialized) {
    if (uv_poll_init(loop, &w->handle, w->dupFd) != 0) {
      // Only a file epoll cannot poll gets here, which libvirt never
      // watches; it hears of it as an error on the handle, from a point
      // where its callback may run.
      if (safePoint) {
        w->cb(w->id, w->fd, VIR_EVENT_HANDLE_ERROR, w->opaque);
      } else {
        std::lock_guard<std::mutex> lock(mutex);
        MarkDirtyLocked(w);
        WakeLocked();
      }
      return;
    }
    w->handle.data = w;
    // An open connection keeps the process alive by other means.
    uv_unref(reinterpret_cast<uv_handle_t*>(&w->handle));
    w->initialized = true;
  }
  int want = ToUv(events);
  if (want == w->applied) return;
  if (want == 0) {
    uv_poll_stop(&w->handle);
  } else {
    uv_poll_start(&w->handle, want, OnPoll);
  }
  w->applied = want;
}

void ApplyTimer(Timer* t) {
  int timeout;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (t->removed) return;
    timeout = t->timeout;
  }
  if (!t->initialized) {
    uv_timer_init(loop, &t->handle);
    t->handle.data = t;
    uv_unref(reinterpret_cast<uv_handle_t*>(&t->handle));
    t->initialized = true;
  }
  // As libvirt's own loop does, every update starts the period anew.
  if (timeout < 0) {
    uv_timer_stop(&t->handle);
  } else {
    uv_timer_start(&t->handle, OnTimer, timeout, timeout);
    if (timeout == 0 && inWatchCallback) dueNow.push_back(t);
  }
}

// At a point where no libvirt callback runs: free callbacks may run here.
void ProcessWatch(Watch* w) {
  bool removed;
  {
    std::lock_guard<std::mutex> lock(mutex);
    // Queued again meanwhile: the next round handles it.
    if (w->dirty) return;
    removed = w->removed;
  }
  if (!removed) {
    ApplyWatch(w, true);
    return;
  }
  if (w->closing) return;
  w->closing = true;
  if (w->initialized) {
    uv_close(reinterpret_cast<uv_handle_t*>(&w->handle),
             [](uv_handle_t* handle) { FreeWatch(static_cast<Watch*>(handle->data)); });
  } else {
    FreeWatch(w);
  }
}

void ProcessTimer(Timer* t) {
  bool removed;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (t->dirty) return;
    removed = t->removed;
  }
  if (!removed) {
    ApplyTimer(t);
    return;
  }
  if (t->closing) return;
  t->closing = true;
  if (t->initialized) {
    uv_close(reinterpret_cast<uv_handle_t*>(&t->handle),
             [](uv_handle_t* handle) { FreeTimer(static_cast<Timer*>(handle->data)); });
  } else {
    FreeTimer(t);
  }
}

void OnWake(uv_async_t*) {
  std::vector<Watch*> changedWatches;
  std::vector<Timer*> changedTimers;
  std::vector<std::function<void()>> ready;
  {
    std::lock_guard<std::mutex> lock(mutex);
    changedWatches.swap(dirtyWatches);
    changedTimers.swap(dirtyTimers);
    ready.swap(tasks);
    for (Watch* w : changedWatches) w->dirty = false;
    for (Timer* t : changedTimers) t->dirty = false;
  }
  for (Watch* w : changedWatches) ProcessWatch(w);
  for (Timer* t : changedTimers) ProcessTimer(t);
  for (auto& task : ready) task();
}

// ---- libvirt's event API, from any thread --------------------------------

int AddHandle(int fd, int events, virEventHandleCallback cb, void* opaque, virFreeCallback ff) {
  int dupFd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dupFd < 0) return -1;
  auto* w = new Watch();
  w->fd = fd;
  w->dupFd = dupFd;
  w->cb = cb;
  w->opaque = opaque;
  w->ff = ff;
  w->events = events;
  bool here = OnLoopThread();
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (stopped) {
      close(dupFd);
      delete w;
      return -1;
    }
    w->id = nextId++;
    watches[w->id] = w;
    if (!here) {
      MarkDirtyLocked(w);
      WakeLocked();
    }
  }
  if (here) ApplyWatch(w, false);
  return w->id;
}

void UpdateHandle(int id, int events) {
  bool here = OnLoopThread();
  Watch* w;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = watches.find(id);
    if (found == watches.end()) return;
    w = found->second;
    w->events = events;
    if (!here) {
      MarkDirtyLocked(w);
      WakeLocked();
      return;
    }
  }
  // Only the loop thread frees a watch: it is still there.
  ApplyWatch(w, false);
}

int RemoveHandle(int id) {
  bool here = OnLoopThread();
  Watch* w;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = watches.find(id);
    if (found == watches.end()) return -1;
    w = found->second;
    watches.erase(found);
    w->removed = true;
    // Closed and freed on the next round, outside this libvirt call.
    MarkDirtyLocked(w);
    WakeLocked();
  }
  if (here && w->initialized && !w->closing) {
    uv_poll_stop(&w->handle);
    w->applied = 0;
  }
  return 0;
}

int AddTimeout(int timeout, virEventTimeoutCallback cb, void* opaque, virFreeCallback ff) {
  auto* t = new Timer();
  t->cb = cb;
  t->opaque = opaque;
  t->ff = ff;
  t->timeout = timeout;
  bool here = OnLoopThread();
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (stopped) {
      delete t;
      return -1;
    }
    t->id = nextId++;
    timers[t->id] = t;
    if (!here) {
      MarkDirtyLocked(t);
      WakeLocked();
    }
  }
  if (here) ApplyTimer(t);
  return t->id;
}

void UpdateTimeout(int id, int timeout) {
  bool here = OnLoopThread();
  Timer* t;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = timers.find(id);
    if (found == timers.end()) return;
    t = found->second;
    t->timeout = timeout;
    if (!here) {
      MarkDirtyLocked(t);
      WakeLocked();
      return;
    }
  }
  ApplyTimer(t);
}

int RemoveTimeout(int id) {
  bool here = OnLoopThread();
  Timer* t;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = timers.find(id);
    if (found == timers.end()) return -1;
    t = found->second;
    timers.erase(found);
    t->removed = true;
    MarkDirtyLocked(t);
    WakeLocked();
  }
  if (here && t->initialized && !t->closing) uv_timer_stop(&t->handle);
  return 0;
}

uv_loop_t* LoopOf(napi_env env) {
  uv_loop_t* envLoop = nullptr;
  if (napi_get_uv_event_loop(env, &envLoop) != napi_ok) return nullptr;
  return envLoop;
}

}  // namespace

bool Init(napi_env env, std::string& error) {
  std::lock_guard<std::mutex> lock(mutex);
  if (started) return true;
  uv_loop_t* envLoop = LoopOf(env);
  if (envLoop == nullptr || envLoop != uv_default_loop()) {
    error =
        "load the libvirt binding on the main thread first: libvirt's events run on the main "
        "thread's event loop";
    return false;
  }
  if (uv_async_init(envLoop, &wake, OnWake) != 0) {
    error = "libuv refused an async handle for libvirt's event loop";
    return false;
  }
  uv_unref(reinterpret_cast<uv_handle_t*>(&wake));
  loop = envLoop;
  loopThread = std::this_thread::get_id();
  started = true;
  virEventRegisterImpl(AddHandle, UpdateHandle, RemoveHandle, AddTimeout, UpdateTimeout,
                       RemoveTimeout);
  return true;
}

bool IsLoopEnv(napi_env env) { return loop != nullptr && LoopOf(env) == loop; }

bool OnLoopThread() { return std::this_thread::get_id() == loopThread.load(); }

void Post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (started && !stopped) {
      tasks.push_back(std::move(task));
      WakeLocked();
      return;
    }
  }
  task();
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

void Stop() {
  std::vector<std::function<void()>> pending;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (!started || stopped) return;
    stopped = true;
    // The loop will not run our callbacks again; what libvirt still holds
    // is left as it is, as the process is ending.
    auto stopWatch = [](Watch* w) {
      if (w->initialized && !w->closing) uv_poll_stop(&w->handle);
    };
    auto stopTimer = [](Timer* t) {
      if (t->initialized && !t->closing) uv_timer_stop(&t->handle);
    };
    for (auto& entry : watches) stopWatch(entry.second);
    for (Watch* w : dirtyWatches) stopWatch(w);
    for (auto& entry : timers) stopTimer(entry.second);
    for (Timer* t : dirtyTimers) stopTimer(t);
    pending.swap(tasks);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&wake), nullptr);
  for (auto& task : pending) task();
}

}  // namespace vmdevd::event_loop
