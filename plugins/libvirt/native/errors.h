// libvirt errors: captured on the thread that made the call (libvirt keeps
// the last error per thread), turned into LibvirtError objects on the
// JavaScript thread.
#pragma once

#include <napi.h>

#include <string>

namespace vmdevd {

struct CallError {
  int code = 0;
  int domain = 0;
  int level = 0;
  std::string message;

  // Copies this thread's last libvirt error. Call it right after the
  // failing call: any later libvirt call (even virDomainFree) resets it.
  // Returns false so that a failing step can `return error.Capture();`.
  bool Capture();
  // For failures of our own, described in libvirt's terms.
  bool Set(int code, std::string message);
};

// Silences libvirt's default error printer (which writes to stderr) for
// the whole process; errors reach JavaScript through CallError instead.
void SilenceLibvirtErrors();

// The constructor used for errors: LibvirtError from the TypeScript side,
// registered once per environment through setErrorClass().
void SetErrorClass(Napi::Env env, Napi::Function constructor);
Napi::Value MakeLibvirtError(Napi::Env env, const CallError& error);
// The error for a call on a connection that was already closed.
Napi::Value MakeClosedError(Napi::Env env);

}  // namespace vmdevd
