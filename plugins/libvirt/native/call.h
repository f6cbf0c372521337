// One libvirt call, run on one of its connection's call threads and settling
// a Promise on the JavaScript thread. The call holds its own reference on
// the connection, so a close() issued meanwhile cannot free it under the
// call (close() then reports that reference in its count).
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <napi.h>

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "call-threads.h"
#include "domain-cache.h"
#include "errors.h"
#include "js-queue.h"
#include "libvirt-handles.h"

namespace vmdevd {

// What a connection's calls run on and settle through, and the domains
// they have looked up.
struct CallContext {
  std::shared_ptr<CallThreads> threads;
  std::shared_ptr<JsQueue> js;
  std::shared_ptr<DomainCache> domains;
};

template <typename Result>
class LibvirtCall {
 public:
  // Runs on a call thread; on failure captures libvirt's error into `error`
  // (CallError::Capture) and returns false.
  using Work = std::function<bool(virConnectPtr conn, Result& result, CallError& error)>;
  // Runs on the JavaScript thread with the result of a successful Work.
  using ToJs = Napi::Value (*)(Napi::Env env, Result& result);

  // JavaScript thread.
  static Napi::Value Start(Napi::Env env, const CallContext& context, virConnectPtr conn, Work work,
                           ToJs toJs) {
    auto deferred = Napi::Promise::Deferred::New(env);
    virConnectRef(conn);  // an atomic increment, nothing blocking
    context.js->Hold();
    std::shared_ptr<JsQueue> js = context.js;
    context.threads->Submit([js, conn, work = std::move(work), toJs, deferred] {
      auto outcome = std::make_shared<Outcome>();
      try {
        virResetLastError();
        outcome->ok = work(conn, outcome->result, outcome->error);
      } catch (const std::exception& e) {
        outcome->ok = false;
        outcome->error.Set(VIR_ERR_INTERNAL_ERROR, e.what());
      }
      virConnectClose(conn);
      js->Post([js, outcome, toJs, deferred](Napi::Env env) {
        Settle(env, *outcome, toJs, deferred);
        js->Release();
      });
    });
    return deferred.Promise();
  }

 private:
  struct Outcome {
    Result result{};
    bool ok = false;
    CallError error;
  };

  static void Settle(Napi::Env env, Outcome& outcome, ToJs toJs, Napi::Promise::Deferred deferred) {
    try {
      if (outcome.ok) {
        deferred.Resolve(toJs(env, outcome.result));
      } else {
        deferred.Reject(MakeLibvirtError(env, outcome.error));
      }
    } catch (const Napi::Error& error) {
      deferred.Reject(error.Value());
    }
  }
};

// Looks the domain up by UUID, runs `fn` on it and frees it. `fn` returns
// false when a libvirt call failed; the error is captured before the
// domain is freed (virDomainFree resets the thread's last error).
template <typename Fn>
bool WithDomain(virConnectPtr conn, const std::string& uuid, CallError& error, Fn&& fn) {
  DomainHandle dom(virDomainLookupByUUIDString(conn, uuid.c_str()));
  if (!dom) return error.Capture();
  if (!fn(dom.get())) return error.Capture();
  return true;
}

// As WithDomain, with the handle kept from an earlier call when there is
// one (see domain-cache.h). For calls that do not read the domain's name
// or id from the handle.
template <typename Fn>
bool WithKnownDomain(virConnectPtr conn, DomainCache& domains, const std::string& uuid,
                     CallError& error, Fn&& fn) {
  DomainHandle dom = domains.Get(conn, uuid);
  if (!dom) return error.Capture();
  if (fn(dom.get())) return true;
  error.Capture();
  if (error.code == VIR_ERR_NO_DOMAIN) domains.Forget(uuid);
  return false;
}

}  // namespace vmdevd
