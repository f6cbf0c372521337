#include "js-queue.h"

#include <utility>

namespace vmdevd {

std::shared_ptr<JsQueue> JsQueue::Create(Napi::Env env, const char* name) {
  auto queue = std::make_shared<JsQueue>(Private{});
  // The finalizer's data keeps the queue until the function is gone.
  queue->tsfn_ = JsTaskTsfn::New(env, name, 0, 1, queue.get(), OnFinalize,
                                 new std::shared_ptr<JsQueue>(queue));
  queue->alive_ = true;
  queue->holds_ = 1;
  return queue;
}

void JsQueue::OnFinalize(Napi::Env, std::shared_ptr<JsQueue>* self, JsQueue*) {
  {
    std::lock_guard<std::mutex> lock((*self)->mutex_);
    (*self)->alive_ = false;
  }
  delete self;
}

bool JsQueue::Post(JsTask task) {
  auto* owned = new JsTask(std::move(task));
  std::lock_guard<std::mutex> lock(mutex_);
  // The queue is unbounded: this never blocks the caller.
  if (alive_ && tsfn_.NonBlockingCall(owned) == napi_ok) return true;
  delete owned;
  return false;
}

void JsQueue::Hold() { holds_++; }

void JsQueue::Release() {
  if (--holds_ > 0) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!alive_) return;
    alive_ = false;
  }
  tsfn_.Release();
}

void RunJsTask(Napi::Env env, Napi::Function, JsQueue*, JsTask* raw) {
  std::unique_ptr<JsTask> task(raw);
  // A null env: the function is being torn down with tasks still queued.
  if (env == nullptr || task == nullptr) return;
  (*task)(env);
}

}  // namespace vmdevd
