// One libvirt call run on a libuv worker thread, settling a Promise on the
// JavaScript thread. The call holds its own reference on the connection,
// so a close() issued meanwhile cannot free it under the call (close()
// then reports that reference in its count).
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <napi.h>

#include <functional>
#include <string>
#include <utility>

#include "errors.h"
#include "libvirt-handles.h"

namespace vmdevd {

template <typename Result>
class LibvirtCall final : public Napi::AsyncWorker {
 public:
  // Runs on the worker thread; on failure captures libvirt's error into
  // `error` (CallError::Capture) and returns false.
  using Work = std::function<bool(virConnectPtr conn, Result& result, CallError& error)>;
  // Runs on the JavaScript thread with the result of a successful Work.
  using ToJs = Napi::Value (*)(Napi::Env env, Result& result);

  static Napi::Value Start(Napi::Env env, virConnectPtr conn, Work work, ToJs toJs) {
    auto* call = new LibvirtCall(env, conn, std::move(work), toJs);
    Napi::Promise promise = call->deferred_.Promise();
    call->Queue();  // the worker deletes itself once settled
    return promise;
  }

 private:
  LibvirtCall(Napi::Env env, virConnectPtr conn, Work work, ToJs toJs)
      : Napi::AsyncWorker(env, "vmdevd:libvirt-call"),
        deferred_(Napi::Promise::Deferred::New(env)),
        conn_(conn),
        work_(std::move(work)),
        toJs_(toJs) {
    virConnectRef(conn_);  // an atomic increment, nothing blocking
  }

  void Execute() override {
    struct Unref {
      virConnectPtr conn;
      ~Unref() { virConnectClose(conn); }
    } unref{conn_};
    virResetLastError();
    ok_ = work_(conn_, result_, error_);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (ok_) {
      deferred_.Resolve(toJs_(env, result_));
    } else {
      deferred_.Reject(MakeLibvirtError(env, error_));
    }
  }

  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

  Napi::Promise::Deferred deferred_;
  virConnectPtr conn_;
  Work work_;
  ToJs toJs_;
  Result result_{};
  bool ok_ = false;
  CallError error_;
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

}  // namespace vmdevd
