#include "connection.h"

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
  std::shared_ptr<EventSink> sink;
};

namespace {

// Deregisters the callbacks, closes, and stops event delivery. Any thread
// but JavaScript's, except at environment teardown. Returns what
// virConnectClose returns: the references still held, or -1.
int CloseOpened(virConnectPtr conn, EventSink& sink, CallError& error) {
  sink.Deregister(conn);
  virResetLastError();
  int remaining = virConnectClose(conn);
  if (remaining < 0) error.Capture();
  sink.Shutdown();
  return remaining;
}

class OpenWorker final : public Napi::AsyncWorker {
 public:
  OpenWorker(Napi::Env env, std::string uri, bool readOnly, std::shared_ptr<EventSink> sink)
      : Napi::AsyncWorker(env, "vmdevd:libvirt-open"),
        deferred_(Napi::Promise::Deferred::New(env)),
        uri_(std::move(uri)),
        readOnly_(readOnly),
        sink_(std::move(sink)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 private:
  void Execute() override {
    virResetLastError();
    conn_ = readOnly_ ? virConnectOpenReadOnly(uri_.c_str()) : virConnectOpen(uri_.c_str());
    if (conn_ == nullptr) {
      error_.Capture();
      return;
    }
    if (!sink_->Register(conn_, error_)) {
      virConnectClose(conn_);
      conn_ = nullptr;
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (conn_ == nullptr) {
      sink_->Shutdown();
      deferred_.Reject(MakeLibvirtError(env, error_));
      return;
    }
    Opened opened{conn_, sink_};
    AddonData& data = GetAddonData(env);
    data.constructing = &opened;
    struct Reset {
      AddonData& data;
      ~Reset() { data.constructing = nullptr; }
    } reset{data};
    deferred_.Resolve(data.connectionClass.New({}));
  }

  void OnError(const Napi::Error& error) override {
    // Only a C++ exception in Execute gets here.
    if (conn_ != nullptr) {
      CallError ignored;
      CloseOpened(conn_, *sink_, ignored);
    } else {
      sink_->Shutdown();
    }
    deferred_.Reject(error.Value());
  }

  Napi::Promise::Deferred deferred_;
  std::string uri_;
  bool readOnly_;
  std::shared_ptr<EventSink> sink_;
  virConnectPtr conn_ = nullptr;
  CallError error_;
};

class CloseWorker final : public Napi::AsyncWorker {
 public:
  CloseWorker(Napi::Env env, virConnectPtr conn, std::shared_ptr<EventSink> sink)
      : Napi::AsyncWorker(env, "vmdevd:libvirt-close"),
        deferred_(Napi::Promise::Deferred::New(env)),
        conn_(conn),
        sink_(std::move(sink)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

 private:
  void Execute() override { remaining_ = CloseOpened(conn_, *sink_, error_); }

  void OnOK() override {
    Napi::Env env = Env();
    if (remaining_ < 0) {
      deferred_.Reject(MakeLibvirtError(env, error_));
    } else {
      deferred_.Resolve(Napi::Number::New(env, remaining_));
    }
  }

  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

  Napi::Promise::Deferred deferred_;
  virConnectPtr conn_;
  std::shared_ptr<EventSink> sink_;
  int remaining_ = -1;
  CallError error_;
};

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
  // The loop must run before the connection exists: the remote driver
  // watches its socket and keepalive through it.
  event_loop::Start();
  auto sink = EventSink::Create(env, info[2], info[3]);
  auto* worker = new OpenWorker(env, std::move(uri), readOnly, std::move(sink));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Connection::Connection(const Napi::CallbackInfo& info)
    : ObjectWrap<Connection>(info), env_(info.Env()) {
  Opened* opened = GetAddonData(info.Env()).constructing;
  if (opened == nullptr)
    throw Napi::TypeError::New(info.Env(), "use open() to create a connection");
  GetAddonData(info.Env()).constructing = nullptr;
  conn_ = opened->conn;
  sink_ = std::move(opened->sink);
  napi_add_env_cleanup_hook(env_, OnEnvironmentCleanup, this);
}

Connection::~Connection() {
  if (conn_ == nullptr) return;
  virConnectPtr conn = conn_;
  std::shared_ptr<EventSink> sink = sink_;
  Detach();
  // Closing may wait for the daemon: not on the JavaScript thread.
  event_loop::Post([conn, sink] {
    CallError ignored;
    CloseOpened(conn, *sink, ignored);
  });
}

void Connection::Detach() {
  napi_remove_env_cleanup_hook(env_, OnEnvironmentCleanup, this);
  conn_ = nullptr;
  sink_.reset();
}

void Connection::OnEnvironmentCleanup(void* self) {
  auto* connection = static_cast<Connection*>(self);
  virConnectPtr conn = connection->conn_;
  std::shared_ptr<EventSink> sink = connection->sink_;
  connection->Detach();
  CallError ignored;
  CloseOpened(conn, *sink, ignored);
}

Napi::Value Connection::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (conn_ == nullptr) {
    auto deferred = Napi::Promise::Deferred::New(env);
    deferred.Reject(MakeClosedError(env));
    return deferred.Promise();
  }
  auto* worker = new CloseWorker(env, conn_, sink_);
  Detach();
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
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
  return Call<std::vector<DomainInfo>>(
      info.Env(),
      [](virConnectPtr conn, std::vector<DomainInfo>& list, CallError& error) {
        virDomainPtr* domains = nullptr;
        int count = virConnectListAllDomains(conn, &domains, 0);
        if (count < 0) return error.Capture();
        std::vector<DomainHandle> handles;
        handles.reserve(count);
        for (int i = 0; i < count; i++) handles.emplace_back(domains[i]);
        free(domains);
        for (auto& dom : handles) {
          DomainInfo info;
          if (!ReadDomainInfo(dom.get(), info, error)) {
            // A transient domain that went away since the list was taken.
            if (error.code == VIR_ERR_NO_DOMAIN) continue;
            return false;
          }
          list.push_back(std::move(info));
        }
        return true;
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
