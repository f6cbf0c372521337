#include "events.h"

#include <chrono>
#include <utility>

#include "event-loop.h"

namespace vmdevd {

namespace {

// How long Deregister waits for the event loop. It waits only for an event
// dispatch in progress, which takes microseconds; the bound only matters
// if the loop were stuck.
constexpr auto kReleaseWait = std::chrono::milliseconds(5000);

std::unique_ptr<EventData> DomainEvent(EventData::Kind kind, virDomainPtr dom) {
  auto data = std::make_unique<EventData>();
  data->kind = kind;
  // Both read the domain object libvirt handed us: no call to the daemon.
  const char* name = virDomainGetName(dom);
  if (name != nullptr) data->name = name;
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(dom, uuid) == 0) data->uuid = uuid;
  return data;
}

EventSink& SinkOf(void* opaque) { return **static_cast<std::shared_ptr<EventSink>*>(opaque); }

}  // namespace

std::shared_ptr<EventSink> EventSink::Create(Napi::Env env, Napi::Value onEvent,
                                             Napi::Value onClose, std::shared_ptr<JsQueue> queue) {
  auto sink = std::make_shared<EventSink>(Private{});
  sink->env_ = env;
  sink->queue_ = std::move(queue);
  sink->direct_ = event_loop::IsLoopEnv(env);
  if (onEvent.IsFunction()) {
    sink->onEvent_ = Napi::Persistent(onEvent.As<Napi::Function>());
    sink->wantsEvents_ = true;
  }
  if (onClose.IsFunction()) sink->onClose_ = Napi::Persistent(onClose.As<Napi::Function>());
  if (sink->direct_) {
    sink->asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "vmdevd:libvirt-event");
  }
  sink->usable_ = true;
  return sink;
}

bool EventSink::Register(virConnectPtr conn, CallError& error) {
  struct Registration {
    int eventId;
    virConnectDomainEventGenericCallback callback;
  };
  const Registration registrations[4] = {
      {VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(OnLifecycle)},
      {VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, VIR_DOMAIN_EVENT_CALLBACK(OnDeviceAdded)},
      {VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, VIR_DOMAIN_EVENT_CALLBACK(OnDeviceRemoved)},
      {VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, VIR_DOMAIN_EVENT_CALLBACK(OnDeviceRemovalFailed)},
  };
  for (int i = 0; i < (wantsEvents_ ? 4 : 0); i++) {
    auto* hold = new std::shared_ptr<EventSink>(shared_from_this());
    int id = virConnectDomainEventRegisterAny(conn, nullptr, registrations[i].eventId,
                                              registrations[i].callback, hold, FreeHold);
    if (id < 0) {
      error.Capture();
      // On failure libvirt does not call the free callback: the hold is ours.
      delete hold;
      Deregister(conn);
      return false;
    }
    callbackIds_[i] = id;
  }
  // libvirt calls the close callback under its own lock and Unregister takes
  // that lock, so a plain pointer is safe: the sink outlives Deregister.
  if (virConnectRegisterCloseCallback(conn, OnClose, this, nullptr) < 0) {
    error.Capture();
    Deregister(conn);
    return false;
  }
  closeRegistered_ = true;
  return true;
}

void EventSink::Deregister(virConnectPtr conn) {
  if (closeRegistered_) {
    virConnectUnregisterCloseCallback(conn, OnClose);
    closeRegistered_ = false;
  }
  for (int& id : callbackIds_) {
    if (id >= 0) virConnectDomainEventDeregisterAny(conn, id);
    id = -1;
  }
  // A callback deregistered while libvirt is dispatching events (on the
  // loop thread) is only marked; libvirt frees it, and drops its reference
  // on the connection, when that dispatch ends. Once the loop has run one
  // more task, it has.
  event_loop::Sync(kReleaseWait);
}

void EventSink::FreeHold(void* opaque) { delete static_cast<std::shared_ptr<EventSink>*>(opaque); }

void EventSink::Shutdown() {
  std::lock_guard<std::mutex> lock(mutex_);
  usable_ = false;
}

void EventSink::ReleaseJs() {
  // Called by a listener, from inside a dispatch: once that returns.
  if (dispatching_ > 0) {
    releasePending_ = true;
    return;
  }
  releasePending_ = false;
  onEvent_.Reset();
  onClose_.Reset();
  asyncContext_.reset();
}

void EventSink::Deliver(std::unique_ptr<EventData> data) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!usable_) return;
  if (direct_ && event_loop::OnLoopThread()) {
    // A listener may close the connection (and so take the lock).
    lock.unlock();
    Napi::Env env(env_);
    Napi::HandleScope scope(env);
    Dispatch(env, *data);
    return;
  }
  // Posted under the lock: once Shutdown() has run, nothing more is.
  std::shared_ptr<EventData> shared(std::move(data));
  queue_->Post(
      [self = shared_from_this(), shared](Napi::Env env) { self->DispatchQueued(env, *shared); });
}

void EventSink::OnLifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque) {
  auto data = DomainEvent(EventData::Kind::Lifecycle, dom);
  data->event = event;
  data->detail = detail;
  SinkOf(opaque).Deliver(std::move(data));
}

void EventSink::OnDeviceAdded(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque) {
  auto data = DomainEvent(EventData::Kind::DeviceAdded, dom);
  if (alias != nullptr) data->alias = alias;
  SinkOf(opaque).Deliver(std::move(data));
}

void EventSink::OnDeviceRemoved(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque) {
  auto data = DomainEvent(EventData::Kind::DeviceRemoved, dom);
  if (alias != nullptr) data->alias = alias;
  SinkOf(opaque).Deliver(std::move(data));
}

void EventSink::OnDeviceRemovalFailed(virConnectPtr, virDomainPtr dom, const char* alias,
                                      void* opaque) {
  auto data = DomainEvent(EventData::Kind::DeviceRemovalFailed, dom);
  if (alias != nullptr) data->alias = alias;
  SinkOf(opaque).Deliver(std::move(data));
}

void EventSink::OnClose(virConnectPtr, int reason, void* opaque) {
  auto data = std::make_unique<EventData>();
  data->kind = EventData::Kind::Close;
  data->reason = reason;
  static_cast<EventSink*>(opaque)->Deliver(std::move(data));
}

void EventSink::DispatchQueued(Napi::Env env, const EventData& data) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!usable_) return;
  }
  Dispatch(env, data);
}

void EventSink::Invoke(Napi::Env env, Napi::FunctionReference& listener,
                       const std::initializer_list<napi_value>& args) {
  if (asyncContext_) {
    // Straight from libuv, outside any JavaScript: MakeCallback runs the
    // microtasks and process.nextTick callbacks the listener queues.
    listener.MakeCallback(env.Global(), args, *asyncContext_);
  } else {
    listener.Call(args);
  }
}

void EventSink::Dispatch(Napi::Env env, const EventData& data) {
  Napi::FunctionReference& listener = data.kind == EventData::Kind::Close ? onClose_ : onEvent_;
  if (listener.IsEmpty()) return;
  dispatching_++;
  try {
    // Plain values, not an object: the binding's JavaScript builds the event
    // (an object literal there costs a fraction of setting its properties
    // one by one from here, on the path of every state change).
    if (data.kind == EventData::Kind::Close) {
      Invoke(env, listener, {Napi::Number::New(env, data.reason)});
    } else if (data.kind == EventData::Kind::Lifecycle) {
      Invoke(env, listener,
             {Napi::Number::New(env, static_cast<int>(data.kind)),
              Napi::String::New(env, data.name), Napi::String::New(env, data.uuid),
              Napi::Number::New(env, data.event), Napi::Number::New(env, data.detail)});
    } else {
      Invoke(
          env, listener,
          {Napi::Number::New(env, static_cast<int>(data.kind)), Napi::String::New(env, data.name),
           Napi::String::New(env, data.uuid), Napi::String::New(env, data.alias)});
    }
  } catch (const Napi::Error& error) {
    // A throwing listener is an uncaught exception, as in any event
    // emitter; Node would otherwise only warn about it for this API level.
    napi_fatal_exception(env, error.Value());
  }
  if (--dispatching_ == 0 && releasePending_) ReleaseJs();
}

}  // namespace vmdevd
