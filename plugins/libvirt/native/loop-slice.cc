#include "loop-slice.h"

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "event-loop.h"

namespace vmdevd {

namespace {

// The kernel's struct sched_attr (include/uapi/linux/sched/types.h);
// glibc 2.36 declares no wrapper for sched_getattr or sched_setattr.
struct SchedAttr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime;
  uint64_t sched_deadline;
  uint64_t sched_period;
  uint32_t sched_util_min;
  uint32_t sched_util_max;
};

constexpr int64_t kMinUs = 100;  // the kernel's bounds for a slice
constexpr int64_t kMaxUs = 100000;

Napi::Error SystemError(Napi::Env env, const char* call) {
  return Napi::Error::New(env, std::string(call) + ": " + std::strerror(errno));
}

SchedAttr GetAttr(Napi::Env env) {
  SchedAttr attr;
  std::memset(&attr, 0, sizeof attr);
  if (syscall(SYS_sched_getattr, 0, &attr, sizeof attr, 0) != 0)
    throw SystemError(env, "sched_getattr");
  return attr;
}

}  // namespace

Napi::Value RequestLoopSlice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber())
    throw Napi::TypeError::New(env, "requestLoopSlice needs a number of microseconds");
  double us = info[0].As<Napi::Number>().DoubleValue();
  if (!(us >= kMinUs && us <= kMaxUs) || us != static_cast<double>(static_cast<int64_t>(us)))
    throw Napi::RangeError::New(env,
                                "a slice is a whole number of microseconds from 100 to 100000");
  if (!event_loop::OnLoopThread())
    throw Napi::Error::New(
        env, "requestLoopSlice runs on the thread of libvirt's event loop (the main thread)");

  SchedAttr attr = GetAttr(env);
  if (attr.sched_policy != SCHED_OTHER)
    throw Napi::Error::New(
        env, "the main thread's scheduling policy is not SCHED_OTHER; its slice is left as it is");
  uint64_t before = attr.sched_runtime;
  uint64_t want = static_cast<uint64_t>(us) * 1000;
  // A kernel before 6.12 reports no slice (0) and would ignore one asked for.
  if (before != 0 && before > want) {
    attr.size = sizeof attr;
    attr.sched_flags = 0;
    attr.sched_runtime = want;
    if (syscall(SYS_sched_setattr, 0, &attr, 0) != 0) throw SystemError(env, "sched_setattr");
  }
  SchedAttr after = GetAttr(env);
  Napi::Object out = Napi::Object::New(env);
  out.Set("beforeUs", Napi::Number::New(env, static_cast<double>(before) / 1000));
  out.Set("afterUs", Napi::Number::New(env, static_cast<double>(after.sched_runtime) / 1000));
  return out;
}

}  // namespace vmdevd
