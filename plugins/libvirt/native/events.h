// Domain events and the connection-close callback, from libvirt's event
// loop thread to JavaScript through a thread-safe function.
#pragma once

#include <libvirt/libvirt.h>
#include <napi.h>

#include <memory>
#include <mutex>
#include <string>

#include "errors.h"

namespace vmdevd {

struct EventData {
  enum class Kind { Lifecycle, DeviceAdded, DeviceRemoved, DeviceRemovalFailed, Close };
  Kind kind;
  std::string name;
  std::string uuid;
  std::string alias;
  int event = 0;
  int detail = 0;
  int reason = 0;
};

class EventSink;
void CallEventJs(Napi::Env env, Napi::Function, EventSink* sink, EventData* data);
using EventTsfn = Napi::TypedThreadSafeFunction<EventSink, EventData, CallEventJs>;

// One per connection. Shared by the Connection, libvirt's registrations
// (each holds a reference until libvirt calls its free callback) and the
// thread-safe function (until it is finalized on the JavaScript thread).
class EventSink : public std::enable_shared_from_this<EventSink> {
 public:
  // JavaScript thread. Either callback may be undefined.
  static std::shared_ptr<EventSink> Create(Napi::Env env, Napi::Value onEvent, Napi::Value onClose);

  // Registers LIFECYCLE, DEVICE_ADDED, DEVICE_REMOVED, DEVICE_REMOVAL_FAILED for all
  // domains, and the close callback. Any thread but JavaScript's (it may
  // talk to the daemon). On failure nothing stays registered.
  bool Register(virConnectPtr conn, CallError& error);

  // Undoes Register and waits (briefly, bounded) until libvirt has dropped
  // the references its callbacks held on the connection, so that
  // virConnectClose sees none. Errors are ignored: on a broken connection
  // libvirt still removes its local registrations.
  void Deregister(virConnectPtr conn);

  // Stops delivery: no callback reaches JavaScript after this, queued
  // events included; releases the thread-safe function. Any thread.
  void Shutdown();

 private:
  struct Private {};

 public:
  explicit EventSink(Private) {}

 private:
  friend void CallEventJs(Napi::Env env, Napi::Function, EventSink* sink, EventData* data);
  static void OnFinalize(Napi::Env env, std::shared_ptr<EventSink>* hold, EventSink* sink);
  static void FreeHold(void* opaque);
  static void OnLifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque);
  static void OnDeviceAdded(virConnectPtr conn, virDomainPtr dom, const char* alias, void* opaque);
  static void OnDeviceRemoved(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque);
  static void OnDeviceRemovalFailed(virConnectPtr, virDomainPtr dom, const char* alias,
                                    void* opaque);
  static void OnClose(virConnectPtr, int reason, void* opaque);

  void Deliver(std::unique_ptr<EventData> data);
  void Dispatch(Napi::Env env, const EventData& data);

  std::mutex mutex_;
  bool usable_ = false;  // the thread-safe function may be called
  int callbackIds_[4] = {-1, -1, -1, -1};
  bool closeRegistered_ = false;
  EventTsfn tsfn_;
  // JavaScript thread only; emptied when the thread-safe function is finalized.
  Napi::FunctionReference onEvent_;
  Napi::FunctionReference onClose_;
};

}  // namespace vmdevd
