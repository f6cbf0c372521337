// What the addon keeps per Node.js environment (main thread or worker).
#pragma once

#include <napi.h>

namespace vmdevd {

struct Opened;

struct AddonData {
  Napi::FunctionReference errorClass;       // LibvirtError, see errors.h
  Napi::FunctionReference connectionClass;  // the wrapped Connection class
  // Set by open() only while it constructs a Connection: the only way to
  // make one (a napi External would cost an allocation that Node leaks
  // when a worker's environment ends before it is collected).
  Opened* constructing = nullptr;
};

inline AddonData& GetAddonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace vmdevd
