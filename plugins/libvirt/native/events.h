// Domain events and the connection-close callback, from libvirt to
// JavaScript. libvirt's event loop runs on the main thread's libuv loop
// (event-loop.h), so an event of a connection opened there is handed to
// JavaScript directly, on the thread that received it. Anything else (a
// connection of a worker thread, a close detected by a call thread) goes
// through the connection's JsQueue.
#pragma once

#include <libvirt/libvirt.h>
#include <napi.h>

#include <memory>
#include <mutex>
#include <string>

#include "errors.h"
#include "js-queue.h"

namespace vmdevd {

struct EventData {
  // The numbers are what JavaScript receives (binding.ts, EVENT_KINDS).
  enum class Kind {
    Lifecycle = 0,
    DeviceAdded = 1,
    DeviceRemoved = 2,
    DeviceRemovalFailed = 3,
    Close = 4
  };
  Kind kind;
  std::string name;
  std::string uuid;
  std::string alias;
  int event = 0;
  int detail = 0;
  int reason = 0;
};

// One per connection. Shared by the Connection, libvirt's registrations
// (each holds a reference until libvirt calls its free callback) and the
// tasks queued for JavaScript.
class EventSink : public std::enable_shared_from_this<EventSink> {
 public:
  // JavaScript thread. Either callback may be undefined.
  static std::shared_ptr<EventSink> Create(Napi::Env env, Napi::Value onEvent, Napi::Value onClose,
                                           std::shared_ptr<JsQueue> queue);

  // Registers LIFECYCLE, DEVICE_ADDED, DEVICE_REMOVED, DEVICE_REMOVAL_FAILED
  // for all domains (when there is an onEvent), and the close callback. A call thread (it may talk
  // to the daemon). On failure nothing stays registered.
  bool Register(virConnectPtr conn, CallError& error);

  // Undoes Register and waits (briefly, bounded) until libvirt has dropped
  // the references its callbacks held on the connection, so that
  // virConnectClose sees none. Errors are ignored: on a broken connection
  // libvirt still removes its local registrations.
  void Deregister(virConnectPtr conn);

  // Stops delivery: no callback reaches JavaScript after this, queued
  // events included. Any thread.
  void Shutdown();

  // Drops the JavaScript callbacks (after Shutdown). JavaScript thread.
  void ReleaseJs();

 private:
  struct Private {};

 public:
  explicit EventSink(Private) {}

 private:
  static void FreeHold(void* opaque);
  static void OnLifecycle(virConnectPtr, virDomainPtr dom, int event, int detail, void* opaque);
  static void OnDeviceAdded(virConnectPtr conn, virDomainPtr dom, const char* alias, void* opaque);
  static void OnDeviceRemoved(virConnectPtr, virDomainPtr dom, const char* alias, void* opaque);
  static void OnDeviceRemovalFailed(virConnectPtr, virDomainPtr dom, const char* alias,
                                    void* opaque);
  static void OnClose(virConnectPtr, int reason, void* opaque);

  void Deliver(std::unique_ptr<EventData> data);
  // JavaScript thread.
  void DispatchQueued(Napi::Env env, const EventData& data);
  void Dispatch(Napi::Env env, const EventData& data);
  void Invoke(Napi::Env env, Napi::FunctionReference& listener,
              const std::initializer_list<napi_value>& args);

  napi_env env_ = nullptr;
  // Events are dispatched straight from libvirt's callbacks when they run
  // on this connection's JavaScript thread.
  bool direct_ = false;
  // Whether JavaScript listens for domain events: without a listener the
  // connection does not ask libvirtd for them.
  bool wantsEvents_ = false;
  std::shared_ptr<JsQueue> queue_;

  std::mutex mutex_;
  bool usable_ = false;  // guarded: events may reach JavaScript
  int callbackIds_[4] = {-1, -1, -1, -1};
  bool closeRegistered_ = false;

  // JavaScript thread only.
  Napi::FunctionReference onEvent_;
  Napi::FunctionReference onClose_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  int dispatching_ = 0;
  bool releasePending_ = false;
};

}  // namespace vmdevd
