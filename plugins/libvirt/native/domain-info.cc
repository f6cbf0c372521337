#include "domain-info.h"

namespace vmdevd {

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
  return object;
}

}  // namespace vmdevd
