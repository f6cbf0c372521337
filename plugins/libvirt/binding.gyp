{
  "targets": [
    {
      "target_name": "vmdevd_libvirt",
      "sources": [
        "native/module.cc",
        "native/constants.cc",
        "native/errors.cc",
        "native/event-loop.cc",
        "native/loop-slice.cc",
        "native/call-threads.cc",
        "native/js-queue.cc",
        "native/events.cc",
        "native/connection.cc",
        "native/domain-calls.cc",
        "native/domain-info.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-Wall", "-Wextra", "<!@(pkg-config --cflags libvirt)"],
      "libraries": ["<!@(pkg-config --libs libvirt)"]
    }
  ]
}
