// What the addon keeps per Node.js environment (main thread or worker).
#pragma once

#include <napi.h>

namespace vmdevd {

struct AddonData {
  Napi::FunctionReference errorClass;       // LibvirtError, see errors.h
  Napi::FunctionReference connectionClass;  // the wrapped Connection class
};

inline AddonData& GetAddonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace vmdevd
