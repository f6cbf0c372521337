#include "events.h"

#include <chrono>

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
                                             Napi::Value onClose) {
  auto sink = std::make_shared<EventSink>(Private{});
  if (onEvent.IsFunction()) sink->onEvent_ = Napi::Persistent(onEvent.As<Napi::Function>());
  if (onClose.IsFunction()) sink->onClose_ = Napi::Persistent(onClose.As<Napi::Function>());
  // The finalizer's data keeps the sink alive until the thread-safe
  // function is gone, so the function references die on this thread.
  sink->tsfn_ = EventTsfn::New(env, "vmdevd:libvirt-events", 0, 1, sink.get(), OnFinalize,
                               new std::shared_ptr<EventSink>(sink));
  sink->usable_ = true;
  return sink;
}

void EventSink::OnFinalize(Napi::Env, std::shared_ptr<EventSink>* hold, EventSink* sink) {
  {
    std::lock_guard<std::mutex> lock(sink->mutex_);
    sink->usable_ = false;
  }
  sink->onEvent_.Reset();
  sink->onClose_.Reset();
  delete hold;
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
  for (int i = 0; i < 4; i++) {
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
  if (!usable_) return;
  usable_ = false;
  tsfn_.Release();
}

void EventSink::Deliver(std::unique_ptr<EventData> data) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!usable_) return;
  // The queue is unbounded: this never blocks libvirt's loop.
  if (tsfn_.NonBlockingCall(data.get()) == napi_ok) data.release();
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

void CallEventJs(Napi::Env env, Napi::Function, EventSink* sink, EventData* raw) {
  std::unique_ptr<EventData> data(raw);
  // A null env: the function is being torn down with events still queued.
  if (env == nullptr || data == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(sink->mutex_);
    if (!sink->usable_) return;
  }
  try {
    sink->Dispatch(env, *data);
  } catch (const Napi::Error& error) {
    // A throwing listener is an uncaught exception, as in any event
    // emitter; Node would otherwise only warn about it for this API level.
    napi_fatal_exception(env, error.Value());
  }
}

void EventSink::Dispatch(Napi::Env env, const EventData& data) {
  if (data.kind == EventData::Kind::Close) {
    if (!onClose_.IsEmpty()) onClose_.Call({Napi::Number::New(env, data.reason)});
    return;
  }
  if (onEvent_.IsEmpty()) return;
  Napi::Object event = Napi::Object::New(env);
  switch (data.kind) {
    case EventData::Kind::Lifecycle:
      event.Set("kind", "lifecycle");
      break;
    case EventData::Kind::DeviceAdded:
      event.Set("kind", "device-added");
      break;
    case EventData::Kind::DeviceRemoved:
      event.Set("kind", "device-removed");
      break;
    default:
      event.Set("kind", "device-removal-failed");
      break;
  }
  event.Set("name", data.name);
  event.Set("uuid", data.uuid);
  if (data.kind == EventData::Kind::Lifecycle) {
    event.Set("event", data.event);
    event.Set("detail", data.detail);
  } else {
    event.Set("alias", data.alias);
  }
  onEvent_.Call({event});
}

}  // namespace vmdevd
