// The domains a connection has looked up, by UUID, so that a call on a
// known domain costs one libvirt call and not two: over the remote
// protocol virDomainLookupByUUIDString is a round trip to the daemon, and a
// detach or a state change would otherwise pay it every time.
//
// A kept handle stays right for as long as the domain exists. A handle is
// its UUID, name and id; the daemon finds the domain of a call by its UUID
// (remote_nonnull_domain carries all three, and every stateful driver looks
// the UUID up), so a domain renamed or restarted meanwhile is still found.
// Calls that read the name or the id from the handle itself (getDomain) do
// not use the cache. A call that fails with VIR_ERR_NO_DOMAIN drops its
// entry: the domain is gone, and one defined again later under the same
// UUID is looked up afresh.
//
// Shared by the connection's call threads; emptied, for good, before the
// connection is closed, since every kept handle holds a reference on it.
#pragma once

#include <libvirt/libvirt.h>

#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>

#include "libvirt-handles.h"

namespace vmdevd {

class DomainCache {
 public:
  DomainCache() = default;
  DomainCache(const DomainCache&) = delete;
  DomainCache& operator=(const DomainCache&) = delete;
  ~DomainCache() { Close(); }

  // A handle on the domain with this UUID, owned by the caller: the kept
  // one, or one looked up now (and kept). Null when the lookup failed, with
  // libvirt's error left for CallError::Capture.
  DomainHandle Get(virConnectPtr conn, const std::string& uuid) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = domains_.find(uuid);
      if (found != domains_.end() && virDomainRef(found->second) == 0)
        return DomainHandle(found->second);
    }
    DomainHandle dom(virDomainLookupByUUIDString(conn, uuid.c_str()));
    if (!dom) return dom;
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_ || domains_.count(uuid) != 0) return dom;
    // A bound, not a policy: more domains than this on one host means
    // lookups again, not unbounded memory.
    if (domains_.size() >= kMaxDomains) ClearLocked();
    if (virDomainRef(dom.get()) == 0) domains_.emplace(uuid, dom.get());
    return dom;
  }

  // The domain is gone (a call on it failed with VIR_ERR_NO_DOMAIN).
  void Forget(const std::string& uuid) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = domains_.find(uuid);
    if (found == domains_.end()) return;
    virDomainFree(found->second);
    domains_.erase(found);
  }

  // Lets go of every kept handle and keeps none from now on. Before the
  // connection is closed, so that virConnectClose counts only the
  // references of calls still running.
  void Close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    ClearLocked();
  }

  size_t Size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return domains_.size();
  }

 private:
  static constexpr size_t kMaxDomains = 16384;

  void ClearLocked() {
    for (auto& entry : domains_) virDomainFree(entry.second);
    domains_.clear();
  }

  std::mutex mutex_;
  bool closed_ = false;
  std::unordered_map<std::string, virDomainPtr> domains_;
};

}  // namespace vmdevd
