// A connection's own threads for its libvirt calls.
//
// libuv's shared pool has four threads, and a detach that waits for a
// guest holds its thread about 5 s inside libvirt: four of them would stall
// every other libvirt call, and Node's own file and DNS work. Here a call
// starts at once on an idle thread of its connection, or on a new one, so
// no call waits behind another one, up to kMaxThreads at once per
// connection (past that, calls start in order as threads come free).
// A thread with nothing to do for a while ends.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

namespace vmdevd {

class CallThreads : public std::enable_shared_from_this<CallThreads> {
 public:
  static constexpr int kMaxThreads = 16;

  static std::shared_ptr<CallThreads> Create();

  // Runs `work` on one of the connection's threads. Any thread.
  void Submit(std::function<void()> work);

  // Nothing more will be submitted (the connection is closed): threads end
  // as soon as what is queued is done. Any thread.
  void Retire();

 private:
  struct Private {};

 public:
  explicit CallThreads(Private) {}

 private:
  void Run();

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  int threads_ = 0;
  int idle_ = 0;  // threads waiting for work
  bool retired_ = false;
};

}  // namespace vmdevd
