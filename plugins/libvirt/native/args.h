// Argument checks for the methods the TypeScript wrapper calls. A wrong
// type is a bug in the caller, so it throws a TypeError at once.
#pragma once

#include <napi.h>

#include <string>

namespace vmdevd {

inline std::string StringArg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (!info[index].IsString()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  }
  return info[index].As<Napi::String>().Utf8Value();
}

inline unsigned int FlagsArg(const Napi::CallbackInfo& info, size_t index) {
  if (info[index].IsUndefined()) return 0;
  if (!info[index].IsNumber()) throw Napi::TypeError::New(info.Env(), "flags must be a number");
  return info[index].As<Napi::Number>().Uint32Value();
}

inline int IntArg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (!info[index].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  }
  return info[index].As<Napi::Number>().Int32Value();
}

inline bool BoolArg(const Napi::CallbackInfo& info, size_t index) {
  return info[index].ToBoolean().Value();
}

}  // namespace vmdevd
