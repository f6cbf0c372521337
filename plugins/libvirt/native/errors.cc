#include "errors.h"

#include <libvirt/virterror.h>

#include "addon-data.h"

namespace vmdevd {

bool CallError::Capture() {
  virErrorPtr last = virGetLastError();
  if (last == nullptr) {
    return Set(VIR_ERR_INTERNAL_ERROR, "libvirt reported a failure without an error");
  }
  code = last->code;
  domain = last->domain;
  level = last->level;
  message = last->message != nullptr ? last->message : "unknown libvirt error";
  return false;
}

bool CallError::Set(int newCode, std::string newMessage) {
  code = newCode;
  domain = VIR_FROM_NONE;
  level = VIR_ERR_ERROR;
  message = std::move(newMessage);
  return false;
}

static void IgnoreError(void*, virErrorPtr) {}

void SilenceLibvirtErrors() { virSetErrorFunc(nullptr, IgnoreError); }

void SetErrorClass(Napi::Env env, Napi::Function constructor) {
  GetAddonData(env).errorClass = Napi::Persistent(constructor);
}

Napi::Value MakeLibvirtError(Napi::Env env, const CallError& error) {
  Napi::FunctionReference& errorClass = GetAddonData(env).errorClass;
  Napi::Value message = Napi::String::New(env, error.message);
  Napi::Value code = Napi::Number::New(env, error.code);
  Napi::Value domain = Napi::Number::New(env, error.domain);
  Napi::Value level = Napi::Number::New(env, error.level);
  if (!errorClass.IsEmpty()) {
    return errorClass.New({message, code, domain, level});
  }
  // Without the TypeScript class (the addon loaded on its own), a plain
  // Error with the same fields.
  Napi::Object plain = Napi::Error::New(env, error.message).Value();
  plain.Set("name", "LibvirtError");
  plain.Set("code", code);
  plain.Set("domain", domain);
  plain.Set("level", level);
  return plain;
}

Napi::Value MakeClosedError(Napi::Env env) {
  Napi::Object error = Napi::Error::New(env, "the libvirt connection is closed").Value();
  error.Set("code", "ERR_LIBVIRT_CONNECTION_CLOSED");
  return error;
}

}  // namespace vmdevd
