// A connection's way back to its JavaScript thread: a thread-safe function
// that runs closures there (settling calls, and events that cannot be
// delivered directly). It lives while something holds it (the connection
// being open, each call in flight), and while it lives it keeps the
// Node.js process alive, as an open connection does.
#pragma once

#include <napi.h>

#include <functional>
#include <memory>
#include <mutex>

namespace vmdevd {

class JsQueue;
using JsTask = std::function<void(Napi::Env)>;
void RunJsTask(Napi::Env env, Napi::Function, JsQueue* queue, JsTask* task);
using JsTaskTsfn = Napi::TypedThreadSafeFunction<JsQueue, JsTask, RunJsTask>;

class JsQueue {
 public:
  // JavaScript thread. Created with one hold, for its creator.
  static std::shared_ptr<JsQueue> Create(Napi::Env env, const char* name);

  // Runs `task` on the JavaScript thread, in order. Any thread. False (and
  // the task dropped) once the queue is released or its environment ends.
  bool Post(JsTask task);

  // JavaScript thread: one more (or one less) reason to keep the queue.
  // The last Release ends it.
  void Hold();
  void Release();

 private:
  struct Private {};

 public:
  explicit JsQueue(Private) {}

 private:
  static void OnFinalize(Napi::Env env, std::shared_ptr<JsQueue>* self, JsQueue*);

  std::mutex mutex_;
  bool alive_ = false;  // guarded; the thread-safe function may be called
  int holds_ = 0;       // JavaScript thread only
  JsTaskTsfn tsfn_;
};

}  // namespace vmdevd
