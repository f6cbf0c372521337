#include "connection.h"

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "addon-data.h"
#include "args.h"
#include "domain-info.h"
#include "event-loop.h"

namespace vmdevd {

// What open() hands to the Connection constructor.
struct Opened {
  virConnectPtr conn;
  CallContext calls;
  std::shared_ptr<EventSink> sink;
};

namespace {

// Deregisters the callbacks, lets go of the domains kept, closes, and stops
// event delivery. Any thread but JavaScript's, except at environment
// teardown. Returns what virConnectClose returns: the references still held
// (by calls still running), or -1.
int CloseOpened(virConnectPtr conn, EventSink& sink, DomainCache& domains, CallError& error) {
  sink.Shutdown();
  sink.Deregister(conn);
  domains.Close();
  virResetLastError();
  int remaining = virConnectClose(conn);
  if (remaining < 0) error.Capture();
  return remaining;
}

// Closes on one of the connection's own threads (a remote close waits for
// the daemon: never on the JavaScript thread, which runs libvirt's event
// loop), then lets those threads end. `deferred`, if any, settles with
// virConnectClose's count. Holds the JsQueue until it has.
void CloseOnCallThread(virConnectPtr conn, const CallContext& calls,
                       std::shared_ptr<EventSink> sink,
                       std::optional<Napi::Promise::Deferred> deferred) {
  calls.js->Hold();
  std::shared_ptr<JsQueue> js = calls.js;
  std::shared_ptr<CallThreads> threads = calls.threads;
  std::shared_ptr<DomainCache> domains = calls.domains;
  threads->Submit([conn, js, threads, sink, domains, deferred] {
    auto error = std::make_shared<CallError>();
    int remaining = CloseOpened(conn, *sink, *domains, *error);
    threads->Retire();
    js->Post([js, remaining, error, deferred](Napi::Env env) {
      if (deferred) {
        if (remaining < 0) {
          deferred->Reject(MakeLibvirtError(env, *error));
        } else {
          deferred->Resolve(Napi::Number::New(env, remaining));
        }
      }
      js->Release();
    });
  });
}

Napi::Value Boolean(Napi::Env env, bool& value) { return Napi::Boolean::New(env, value); }
Napi::Value InfoList(Napi::Env env, std::vector<DomainInfo>& list) {
  Napi::Array array = Napi::Array::New(env, list.size());
  for (size_t i = 0; i < list.size(); i++) array.Set(i, DomainInfoToJs(env, list[i]));
  return array;
}

}  // namespace

Napi::Function Connection::DefineClass(Napi::Env env) {
  return ObjectWrap<Connection>::DefineClass(
      env, "LibvirtConnection",
      {
          InstanceMethod<&Connection::Close>("close"),
          InstanceMethod<&Connection::SetKeepAlive>("setKeepAlive"),
          InstanceMethod<&Connection::IsAlive>("isAlive"),
          InstanceMethod<&Connection::ListDomains>("listDomains"),
          InstanceMethod<&Connection::DefineXml>("defineXml"),
          InstanceMethod<&Connection::GetDomain>("getDomain"),
          InstanceMethod<&Connection::GetXml>("getXml"),
          InstanceMethod<&Connection::GetMetadata>("getMetadata"),
          InstanceMethod<&Connection::DetachDevice>("detachDevice"),
          InstanceMethod<&Connection::DetachDeviceAlias>("detachDeviceAlias"),
          InstanceMethod<&Connection::AttachDevice>("attachDevice"),
          InstanceMethod<&Connection::Create>("create"),
          InstanceMethod<&Connection::Resume>("resume"),
          InstanceMethod<&Connection::Suspend>("suspend"),
          InstanceMethod<&Connection::Shutdown>("shutdown"),
          InstanceMethod<&Connection::Destroy>("destroy"),
          InstanceMethod<&Connection::Undefine>("undefine"),
      });
}

Napi::Value Connection::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string uri = StringArg(info, 0, "uri");
  bool readOnly = BoolArg(info, 1);
  // The queue is created with the hold of this open() call.
  CallContext calls{CallThreads::Create(), JsQueue::Create(env, "vmdevd:libvirt-connection"),
                    std::make_shared<DomainCache>()};
  auto sink = EventSink::Create(env, info[2], info[3], calls.js);
  auto deferred = Napi::Promise::Deferred::New(env);
  struct Result {
    virConnectPtr conn = nullptr;
    CallError error;
  };
  calls.threads->Submit([uri, readOnly, calls, sink, deferred] {
    auto result = std::make_shared<Result>();
    virResetLastError();
    result->conn = readOnly ? virConnectOpenReadOnly(uri.c_str()) : virConnectOpen(uri.c_str());
    if (result->conn == nullptr) {
      result->error.Capture();
    } else if (!sink->Register(result->conn, result->error)) {
      virConnectClose(result->conn);
      result->conn = nullptr;
    }
    if (result->conn == nullptr) calls.threads->Retire();
    std::shared_ptr<JsQueue> js = calls.js;
    bool posted = js->Post([calls, sink, deferred, result](Napi::Env env) {
      if (result->conn == nullptr) {
        sink->Shutdown();
        sink->ReleaseJs();
        deferred.Reject(MakeLibvirtError(env, result->error));
        calls.js->Release();
        return;
      }
      Opened opened{result->conn, calls, sink};
      AddonData& data = GetAddonData(env);
      data.constructing = &opened;
      struct Reset {
        AddonData& data;
        ~Reset() { data.constructing = nullptr; }
      } reset{data};
      try {
        deferred.Resolve(data.connectionClass.New({}));
      } catch (const Napi::Error& error) {
        deferred.Reject(error.Value());
      }
      // The connection, if made, holds the queue from now on.
      calls.js->Release();
    });
    // The environment is gone: nobody will take the connection.
    if (!posted && result->conn != nullptr) {
      CallError ignored;
      CloseOpened(result->conn, *sink, *calls.domains, ignored);
      calls.threads->Retire();
    }
  });
  return deferred.Promise();
}

Connection::Connection(const Napi::CallbackInfo& info)
    : ObjectWrap<Connection>(info), env_(info.Env()) {
  Opened* opened = GetAddonData(info.Env()).constructing;
  if (opened == nullptr)
    throw Napi::TypeError::New(info.Env(), "use open() to create a connection");
  GetAddonData(info.Env()).constructing = nullptr;
  conn_ = opened->conn;
  calls_ = opened->calls;
  sink_ = std::move(opened->sink);
  opened->conn = nullptr;
  calls_.js->Hold();  // released by Detach()
  napi_add_env_cleanup_hook(env_, OnEnvironmentCleanup, this);
}

Connection::~Connection() {
  if (conn_ == nullptr) return;
  CallContext calls = calls_;
  std::shared_ptr<EventSink> sink = sink_;
  // The close holds the queue before Detach() lets go of it.
  calls.js->Hold();
  virConnectPtr conn = Detach();
  CloseOnCallThread(conn, calls, sink, std::nullopt);
  calls.js->Release();
}

virConnectPtr Connection::Detach() {
  napi_remove_env_cleanup_hook(env_, OnEnvironmentCleanup, this);
  virConnectPtr conn = conn_;
  conn_ = nullptr;
  // No event reaches JavaScript from now on.
  sink_->Shutdown();
  sink_->ReleaseJs();
  sink_.reset();
  calls_.js->Release();
  return conn;
}

void Connection::OnEnvironmentCleanup(void* self) {
  auto* connection = static_cast<Connection*>(self);
  std::shared_ptr<EventSink> sink = connection->sink_;
  std::shared_ptr<CallThreads> threads = connection->calls_.threads;
  std::shared_ptr<DomainCache> domains = connection->calls_.domains;
  virConnectPtr conn = connection->Detach();
  CallError ignored;
  CloseOpened(conn, *sink, *domains, ignored);
  threads->Retire();
}

Napi::Value Connection::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  if (conn_ == nullptr) {
    deferred.Reject(MakeClosedError(env));
    return deferred.Promise();
  }
  CallContext calls = calls_;
  std::shared_ptr<EventSink> sink = sink_;
  calls.js->Hold();
  virConnectPtr conn = Detach();
  CloseOnCallThread(conn, calls, sink, deferred);
  calls.js->Release();
  return deferred.Promise();
}

Napi::Value Connection::SetKeepAlive(const Napi::CallbackInfo& info) {
  int interval = IntArg(info, 0, "interval");
  unsigned int count = static_cast<unsigned int>(IntArg(info, 1, "count"));
  return Call<bool>(
      info.Env(),
      [interval, count](virConnectPtr conn, bool& supported, CallError& error) {
        int result = virConnectSetKeepAlive(conn, interval, count);
        if (result < 0) return error.Capture();
        supported = result == 0;  // 1: the daemon does not support keepalive
        return true;
      },
      Boolean);
}

// virConnectIsAlive: whether the connection still works (false once a
// remote connection lost its socket or keepalive), to tell a lost
// connection from an error the daemon reported.
Napi::Value Connection::IsAlive(const Napi::CallbackInfo& info) {
  return Call<bool>(
      info.Env(),
      [](virConnectPtr conn, bool& alive, CallError& error) {
        int result = virConnectIsAlive(conn);
        if (result < 0) return error.Capture();
        alive = result == 1;
        return true;
      },
      Boolean);
}

Napi::Value Connection::ListDomains(const Napi::CallbackInfo& info) {
  std::optional<std::string> metadataNamespace;
  if (!info[0].IsUndefined()) metadataNamespace = StringArg(info, 0, "metadataNamespace");
  return Call<std::vector<DomainInfo>>(
      info.Env(),
      [metadataNamespace](virConnectPtr conn, std::vector<DomainInfo>& list, CallError& error) {
        return ListDomainInfo(conn, metadataNamespace, list, error);
      },
      InfoList);
}

Napi::Value Connection::DefineXml(const Napi::CallbackInfo& info) {
  std::string xml = StringArg(info, 0, "xml");
  return Call<DomainInfo>(
      info.Env(),
      [xml](virConnectPtr conn, DomainInfo& result, CallError& error) {
        DomainHandle dom(virDomainDefineXML(conn, xml.c_str()));
        if (!dom) return error.Capture();
        return ReadDomainInfo(dom.get(), result, error);
      },
      DomainInfoResult);
}

}  // namespace vmdevd
