// The calls on one domain, addressed by UUID: each looks the domain up on
// the worker thread (or takes the handle kept from an earlier call, see
// domain-cache.h), calls libvirt and lets go of the handle, on every path.
#include <optional>
#include <string>

#include "args.h"
#include "connection.h"
#include "domain-info.h"

namespace vmdevd {

namespace {

struct Nothing {};

Napi::Value Undefined(Napi::Env env, Nothing&) { return env.Undefined(); }
Napi::Value String(Napi::Env env, std::string& text) { return Napi::String::New(env, text); }
Napi::Value OptionalString(Napi::Env env, std::optional<std::string>& text) {
  return text ? Napi::String::New(env, *text) : env.Undefined();
}

}  // namespace

Napi::Value Connection::GetDomain(const Napi::CallbackInfo& info) {
  std::string uuid = StringArg(info, 0, "uuid");
  return Call<DomainInfo>(
      info.Env(),
      [uuid](virConnectPtr conn, DomainInfo& result, CallError& error) {
        return WithDomain(conn, uuid, error,
                          [&](virDomainPtr dom) { return ReadDomainInfo(dom, result, error); });
      },
      DomainInfoResult);
}

Napi::Value Connection::GetXml(const Napi::CallbackInfo& info) {
  std::string uuid = StringArg(info, 0, "uuid");
  unsigned int flags = BoolArg(info, 1) ? VIR_DOMAIN_XML_INACTIVE : 0;
  return Call<std::string>(
      info.Env(),
      [uuid, flags, domains = calls_.domains](virConnectPtr conn, std::string& xml,
                                              CallError& error) {
        return WithKnownDomain(conn, *domains, uuid, error, [&](virDomainPtr dom) {
          LibvirtString text(virDomainGetXMLDesc(dom, flags));
          if (!text) return false;
          xml = text.get();
          return true;
        });
      },
      String);
}

Napi::Value Connection::GetMetadata(const Napi::CallbackInfo& info) {
  std::string uuid = StringArg(info, 0, "uuid");
  std::string namespaceUri = StringArg(info, 1, "namespaceUri");
  unsigned int flags = BoolArg(info, 2) ? VIR_DOMAIN_AFFECT_CONFIG : VIR_DOMAIN_AFFECT_CURRENT;
  return Call<std::optional<std::string>>(
      info.Env(),
      [uuid, namespaceUri, flags, domains = calls_.domains](
          virConnectPtr conn, std::optional<std::string>& metadata, CallError& error) {
        return WithKnownDomain(conn, *domains, uuid, error, [&](virDomainPtr dom) {
          LibvirtString text(
              virDomainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, namespaceUri.c_str(), flags));
          if (!text) {
            virErrorPtr last = virGetLastError();
            // No element in that namespace: an answer, not a failure.
            return last != nullptr && last->code == VIR_ERR_NO_DOMAIN_METADATA;
          }
          metadata = std::string(text.get());
          return true;
        });
      },
      OptionalString);
}

Napi::Value Connection::DeviceAction(const Napi::CallbackInfo& info, const char* what,
                                     int (*action)(virDomainPtr, const char*, unsigned int)) {
  std::string uuid = StringArg(info, 0, "uuid");
  std::string text = StringArg(info, 1, what);
  unsigned int flags = FlagsArg(info, 2);
  return Call<Nothing>(
      info.Env(),
      [uuid, text, flags, action, domains = calls_.domains](virConnectPtr conn, Nothing&,
                                                            CallError& error) {
        return WithKnownDomain(conn, *domains, uuid, error, [&](virDomainPtr dom) {
          return action(dom, text.c_str(), flags) == 0;
        });
      },
      Undefined);
}

Napi::Value Connection::DetachDevice(const Napi::CallbackInfo& info) {
  return DeviceAction(info, "xml", virDomainDetachDeviceFlags);
}

Napi::Value Connection::DetachDeviceAlias(const Napi::CallbackInfo& info) {
  return DeviceAction(info, "alias", virDomainDetachDeviceAlias);
}

Napi::Value Connection::AttachDevice(const Napi::CallbackInfo& info) {
  return DeviceAction(info, "xml", virDomainAttachDeviceFlags);
}

Napi::Value Connection::Undefine(const Napi::CallbackInfo& info) {
  std::string uuid = StringArg(info, 0, "uuid");
  unsigned int flags = FlagsArg(info, 1);
  return Call<Nothing>(
      info.Env(),
      [uuid, flags, domains = calls_.domains](virConnectPtr conn, Nothing&, CallError& error) {
        bool done = WithKnownDomain(conn, *domains, uuid, error, [&](virDomainPtr dom) {
          return virDomainUndefineFlags(dom, flags) == 0;
        });
        // Gone, unless it is still running; either way looked up afresh.
        if (done) domains->Forget(uuid);
        return done;
      },
      Undefined);
}

Napi::Value Connection::DomainAction(const Napi::CallbackInfo& info, int (*action)(virDomainPtr)) {
  std::string uuid = StringArg(info, 0, "uuid");
  return Call<Nothing>(
      info.Env(),
      [uuid, action, domains = calls_.domains](virConnectPtr conn, Nothing&, CallError& error) {
        return WithKnownDomain(conn, *domains, uuid, error,
                               [&](virDomainPtr dom) { return action(dom) == 0; });
      },
      Undefined);
}

Napi::Value Connection::Create(const Napi::CallbackInfo& info) {
  return DomainAction(info, virDomainCreate);
}
Napi::Value Connection::Resume(const Napi::CallbackInfo& info) {
  return DomainAction(info, virDomainResume);
}
Napi::Value Connection::Suspend(const Napi::CallbackInfo& info) {
  return DomainAction(info, virDomainSuspend);
}
Napi::Value Connection::Shutdown(const Napi::CallbackInfo& info) {
  return DomainAction(info, virDomainShutdown);
}
Napi::Value Connection::Destroy(const Napi::CallbackInfo& info) {
  return DomainAction(info, virDomainDestroy);
}

}  // namespace vmdevd
