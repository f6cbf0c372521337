// The summary of one domain that listDomains, getDomain and defineXml return.
#pragma once

#include <libvirt/libvirt.h>
#include <napi.h>

#include <optional>
#include <string>
#include <vector>

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
  // The metadata element of the namespace a listing asked for, if the domain has one.
  std::optional<std::string> metadata;
};

// Call thread: asks libvirt (for a remote connection, the daemon).
bool ReadDomainInfo(virDomainPtr dom, DomainInfo& info, CallError& error);

// Every domain, in a few calls whatever their number: the list, which of
// them are active and which persistent (a filtered list each), and all
// their states at once (virConnectGetAllDomainStats; per domain where the
// driver lacks it). With `metadataNamespace`, each domain's metadata
// element of that namespace too (a call per domain). A domain that goes
// away meanwhile is left out. Call thread.
bool ListDomainInfo(virConnectPtr conn, const std::optional<std::string>& metadataNamespace,
                    std::vector<DomainInfo>& list, CallError& error);

Napi::Object DomainInfoToJs(Napi::Env env, const DomainInfo& info);

// DomainInfoToJs in the shape LibvirtCall's ToJs wants.
inline Napi::Value DomainInfoResult(Napi::Env env, DomainInfo& info) {
  return DomainInfoToJs(env, info);
}

}  // namespace vmdevd
