#include "call-threads.h"

#include <chrono>
#include <thread>
#include <utility>

namespace vmdevd {

namespace {

// How long a thread without work waits before it ends.
constexpr auto kIdle = std::chrono::seconds(10);

}  // namespace

std::shared_ptr<CallThreads> CallThreads::Create() {
  return std::make_shared<CallThreads>(Private{});
}

void CallThreads::Submit(std::function<void()> work) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(work));
    // A thread already woken still counts as idle until it runs: one idle
    // thread per queued call, else a new thread.
    if (static_cast<int>(queue_.size()) > idle_) {
      if (threads_ < kMaxThreads) {
        threads_++;
        // The thread holds the pool until it ends.
        std::thread([self = shared_from_this()] { self->Run(); }).detach();
      }
      return;
    }
  }
  // Woken after the lock is let go: woken while it is held, the thread
  // would find it taken and sleep again until the caller lets it go (two
  // more switches on a busy core, before every call).
  ready_.notify_one();
}

void CallThreads::Retire() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    retired_ = true;
  }
  ready_.notify_all();
}

void CallThreads::Run() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    if (queue_.empty()) {
      if (retired_) break;
      idle_++;
      bool woken = ready_.wait_for(lock, kIdle, [this] { return !queue_.empty() || retired_; });
      idle_--;
      if (!woken || queue_.empty()) break;
    }
    std::function<void()> work = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    work();
    // What the work captured is released outside the lock.
    work = nullptr;
    lock.lock();
  }
  threads_--;
}

}  // namespace vmdevd
