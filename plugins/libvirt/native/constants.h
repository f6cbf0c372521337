#pragma once

#include <napi.h>

namespace vmdevd {

// { VIR_DOMAIN_RUNNING: 1, ... } for the names the TypeScript side uses.
Napi::Object MakeConstants(Napi::Env env);

}  // namespace vmdevd
