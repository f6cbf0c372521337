// The addon's entry point: what `require('vmdevd_libvirt.node')` returns.
#include <napi.h>

#include <string>

#include "addon-data.h"
#include "connection.h"
#include "constants.h"
#include "errors.h"
#include "event-loop.h"
#include "loop-slice.h"

namespace vmdevd {

Napi::Value SetErrorClassFn(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction())
    throw Napi::TypeError::New(info.Env(), "setErrorClass needs a constructor");
  SetErrorClass(info.Env(), info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  SilenceLibvirtErrors();
  std::string error;
  if (!event_loop::Init(env, error)) throw Napi::Error::New(env, error);
  auto* data = new AddonData();
  env.SetInstanceData(data);
  data->connectionClass = Napi::Persistent(Connection::DefineClass(env));
  if (event_loop::IsLoopEnv(env)) {
    // Registered first, so it runs after every connection's own cleanup hook.
    napi_add_env_cleanup_hook(
        env, [](void*) { event_loop::Stop(); }, nullptr);
  }

  exports.Set("open", Napi::Function::New<Connection::Open>(env, "open"));
  exports.Set("setErrorClass", Napi::Function::New<SetErrorClassFn>(env, "setErrorClass"));
  exports.Set("requestLoopSlice", Napi::Function::New<RequestLoopSlice>(env, "requestLoopSlice"));
  exports.Set("constants", MakeConstants(env));
  return exports;
}

}  // namespace vmdevd

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  return vmdevd::Init(env, exports);
}

NODE_API_MODULE(vmdevd_libvirt, InitModule)
