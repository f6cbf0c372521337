// The summary of one domain that listDomains, getDomain and defineXml return.
#pragma once

#include <libvirt/libvirt.h>
#include <napi.h>

#include <string>

#include "errors.h"

namespace vmdevd {

struct DomainInfo {
  std::string name;
  std::string uuid;
  int id = -1;  // -1 while the domain is not running
  int state = 0;
  int reason = 0;
  bool persistent = false;
  bool active = false;
};

// Worker thread: asks libvirt (for a remote connection, the daemon).
bool ReadDomainInfo(virDomainPtr dom, DomainInfo& info, CallError& error);

Napi::Object DomainInfoToJs(Napi::Env env, const DomainInfo& info);

// DomainInfoToJs in the shape LibvirtCall's ToJs wants.
inline Napi::Value DomainInfoResult(Napi::Env env, DomainInfo& info) {
  return DomainInfoToJs(env, info);
}

}  // namespace vmdevd
