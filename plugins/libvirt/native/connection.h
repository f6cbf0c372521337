// A libvirt connection as a JavaScript object. JavaScript only ever sees
// this object and domain UUIDs: no libvirt pointer crosses into JS.
#pragma once

#include <libvirt/libvirt.h>
#include <napi.h>

#include <memory>

#include "call.h"
#include "events.h"

namespace vmdevd {

class Connection : public Napi::ObjectWrap<Connection> {
 public:
  static Napi::Function DefineClass(Napi::Env env);
  // open(uri, readOnly, onEvent, onClose): Promise<Connection>. Events are
  // registered before the promise resolves.
  static Napi::Value Open(const Napi::CallbackInfo& info);

  // Only open() constructs it; `new` from JavaScript throws.
  explicit Connection(const Napi::CallbackInfo& info);
  // Garbage collected while still open: closed on one of its call threads.
  ~Connection() override;

 private:
  // connection.cc
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value SetKeepAlive(const Napi::CallbackInfo& info);
  Napi::Value IsAlive(const Napi::CallbackInfo& info);
  Napi::Value ListDomains(const Napi::CallbackInfo& info);
  Napi::Value DefineXml(const Napi::CallbackInfo& info);
  // domain-calls.cc: each takes the domain's UUID string first.
  Napi::Value GetDomain(const Napi::CallbackInfo& info);
  Napi::Value GetXml(const Napi::CallbackInfo& info);
  Napi::Value GetMetadata(const Napi::CallbackInfo& info);
  Napi::Value DetachDevice(const Napi::CallbackInfo& info);
  Napi::Value DetachDeviceAlias(const Napi::CallbackInfo& info);
  Napi::Value AttachDevice(const Napi::CallbackInfo& info);
  Napi::Value Create(const Napi::CallbackInfo& info);
  Napi::Value Resume(const Napi::CallbackInfo& info);
  Napi::Value Suspend(const Napi::CallbackInfo& info);
  Napi::Value Shutdown(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  Napi::Value Undefine(const Napi::CallbackInfo& info);

  // Starts `work` on one of the connection's threads, or rejects when
  // already closed.
  template <typename Result>
  Napi::Value Call(Napi::Env env, typename LibvirtCall<Result>::Work work,
                   typename LibvirtCall<Result>::ToJs toJs) {
    if (conn_ == nullptr) {
      auto deferred = Napi::Promise::Deferred::New(env);
      deferred.Reject(MakeClosedError(env));
      return deferred.Promise();
    }
    return LibvirtCall<Result>::Start(env, calls_, conn_, std::move(work), toJs);
  }
  Napi::Value DomainAction(const Napi::CallbackInfo& info, int (*action)(virDomainPtr));
  // (uuid, text, flags): a device given by its XML or alias.
  Napi::Value DeviceAction(const Napi::CallbackInfo& info, const char* what,
                           int (*action)(virDomainPtr, const char*, unsigned int));

  // Environment teardown with the connection still open: closes it
  // synchronously (nothing else can run any more).
  static void OnEnvironmentCleanup(void* self);
  // Takes the open state out of this object (it then counts as closed) and
  // stops its events. Returns the connection.
  virConnectPtr Detach();

  napi_env env_;
  virConnectPtr conn_ = nullptr;
  CallContext calls_;
  std::shared_ptr<EventSink> sink_;
};

}  // namespace vmdevd
