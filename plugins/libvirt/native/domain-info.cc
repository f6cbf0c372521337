#include "domain-info.h"

#include <libvirt/virterror.h>

#include <algorithm>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "libvirt-handles.h"

namespace vmdevd {

namespace {

// Threads that read the metadata of a listing's domains.
constexpr size_t kMetadataThreads = 4;

// Owns what virConnectListAllDomains hands out.
struct DomainList {
  std::vector<DomainHandle> domains;

  bool Read(virConnectPtr conn, unsigned int flags, CallError& error) {
    virDomainPtr* raw = nullptr;
    int count = virConnectListAllDomains(conn, &raw, flags);
    if (count < 0) return error.Capture();
    domains.reserve(count);
    for (int i = 0; i < count; i++) domains.emplace_back(raw[i]);
    free(raw);
    return true;
  }
};

std::string UuidOf(virDomainPtr dom) {
  char uuid[VIR_UUID_STRING_BUFLEN];
  return virDomainGetUUIDString(dom, uuid) == 0 ? std::string(uuid) : std::string();
}

bool UuidsOf(virConnectPtr conn, unsigned int flags, std::unordered_set<std::string>& uuids,
             CallError& error) {
  DomainList list;
  if (!list.Read(conn, flags, error)) return false;
  for (auto& dom : list.domains) uuids.insert(UuidOf(dom.get()));
  return true;
}

// State and reason of every domain, by UUID. False with error.code
// VIR_ERR_NO_SUPPORT when the driver cannot say them all at once.
bool AllStates(virConnectPtr conn, std::unordered_map<std::string, std::pair<int, int>>& states,
               CallError& error) {
  virDomainStatsRecordPtr* records = nullptr;
  int count = virConnectGetAllDomainStats(conn, VIR_DOMAIN_STATS_STATE, &records, 0);
  if (count < 0) return error.Capture();
  for (int i = 0; i < count; i++) {
    int state = 0;
    int reason = 0;
    if (virTypedParamsGetInt(records[i]->params, records[i]->nparams, "state.state", &state) != 1)
      continue;
    virTypedParamsGetInt(records[i]->params, records[i]->nparams, "state.reason", &reason);
    states[UuidOf(records[i]->dom)] = {state, reason};
  }
  virDomainStatsRecordListFree(records);
  return true;
}

// An error that means the connection is gone, not the domain or its metadata.
bool IsConnectionError(const CallError& error) {
  return error.domain == VIR_FROM_RPC || error.domain == VIR_FROM_REMOTE ||
         error.code == VIR_ERR_NO_CONNECT || error.code == VIR_ERR_INVALID_CONN;
}

}  // namespace

bool ListDomainInfo(virConnectPtr conn, const std::optional<std::string>& metadataNamespace,
                    std::vector<DomainInfo>& list, CallError& error) {
  DomainList all;
  if (!all.Read(conn, 0, error)) return false;
  std::unordered_set<std::string> active;
  std::unordered_set<std::string> persistent;
  if (!UuidsOf(conn, VIR_CONNECT_LIST_DOMAINS_ACTIVE, active, error) ||
      !UuidsOf(conn, VIR_CONNECT_LIST_DOMAINS_PERSISTENT, persistent, error)) {
    return false;
  }
  std::unordered_map<std::string, std::pair<int, int>> states;
  if (!AllStates(conn, states, error)) {
    if (error.code != VIR_ERR_NO_SUPPORT) return false;
    error = CallError();
  }
  list.reserve(all.domains.size());
  // The listed domain of each entry of `list` (owned by `all`).
  std::vector<virDomainPtr> listed;
  listed.reserve(all.domains.size());
  for (auto& handle : all.domains) {
    virDomainPtr dom = handle.get();
    DomainInfo info;
    const char* name = virDomainGetName(dom);
    if (name == nullptr) return error.Capture();
    info.name = name;
    info.uuid = UuidOf(dom);
    unsigned int id = virDomainGetID(dom);
    info.id = id == static_cast<unsigned int>(-1) ? -1 : static_cast<int>(id);
    info.active = active.count(info.uuid) > 0;
    info.persistent = persistent.count(info.uuid) > 0;
    auto state = states.find(info.uuid);
    if (state != states.end()) {
      info.state = state->second.first;
      info.reason = state->second.second;
    } else if (virDomainGetState(dom, &info.state, &info.reason, 0) < 0) {
      error.Capture();
      // A transient domain that went away since the list was taken.
      if (error.code == VIR_ERR_NO_DOMAIN) {
        error = CallError();
        continue;
      }
      return false;
    }
    list.push_back(std::move(info));
    listed.push_back(dom);
  }
  if (!metadataNamespace) return true;

  // One call per domain: spread over a few threads, as libvirtd serves a
  // few requests of a client at a time (five by default).
  std::vector<bool> gone(list.size(), false);
  std::vector<CallError> failures(kMetadataThreads);
  auto fetch = [&](size_t part) {
    for (size_t i = part; i < list.size(); i += kMetadataThreads) {
      LibvirtString text(virDomainGetMetadata(listed[i], VIR_DOMAIN_METADATA_ELEMENT,
                                              metadataNamespace->c_str(),
                                              VIR_DOMAIN_AFFECT_CURRENT));
      if (text) {
        list[i].metadata = std::string(text.get());
        continue;
      }
      CallError failure;
      failure.Capture();
      if (IsConnectionError(failure)) {
        failures[part] = failure;
        return;
      }
      // Gone since the listing; or no metadata in that namespace, or
      // metadata libvirt cannot read: none.
      if (failure.code == VIR_ERR_NO_DOMAIN) gone[i] = true;
    }
  };
  std::vector<std::thread> helpers;
  size_t parts = std::min(kMetadataThreads, list.size());
  for (size_t part = 1; part < parts; part++) helpers.emplace_back(fetch, part);
  if (parts > 0) fetch(0);
  for (auto& helper : helpers) helper.join();
  for (auto& failure : failures) {
    if (failure.code != 0) {
      error = failure;
      return false;
    }
  }
  size_t kept = 0;
  for (size_t i = 0; i < list.size(); i++) {
    if (gone[i]) continue;
    // Never onto itself: a moved-from string is left empty.
    if (kept != i) list[kept] = std::move(list[i]);
    kept++;
  }
  list.resize(kept);
  return true;
}

bool ReadDomainInfo(virDomainPtr dom, DomainInfo& info, CallError& error) {
  const char* name = virDomainGetName(dom);
  if (name == nullptr) return error.Capture();
  info.name = name;
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(dom, uuid) < 0) return error.Capture();
  info.uuid = uuid;
  unsigned int id = virDomainGetID(dom);
  info.id = id == static_cast<unsigned int>(-1) ? -1 : static_cast<int>(id);
  if (virDomainGetState(dom, &info.state, &info.reason, 0) < 0) return error.Capture();
  int persistent = virDomainIsPersistent(dom);
  if (persistent < 0) return error.Capture();
  info.persistent = persistent == 1;
  int active = virDomainIsActive(dom);
  if (active < 0) return error.Capture();
  info.active = active == 1;
  return true;
}

Napi::Object DomainInfoToJs(Napi::Env env, const DomainInfo& info) {
  Napi::Object object = Napi::Object::New(env);
  object.Set("name", info.name);
  object.Set("uuid", info.uuid);
  object.Set("id", info.id);
  object.Set("state", info.state);
  object.Set("reason", info.reason);
  object.Set("persistent", info.persistent);
  object.Set("active", info.active);
  if (info.metadata) object.Set("metadata", *info.metadata);
  return object;
}

}  // namespace vmdevd
