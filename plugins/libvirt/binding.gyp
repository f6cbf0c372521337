{
  "targets": [
    {
      "target_name": "vmdevd_libvirt",
      "sources": [
        "native/module.cc",
        "native/constants.cc",
        "native/errors.cc",
        "native/event-loop.cc",
        "native/events.cc",
        "native/connection.cc",
        "native/domain-calls.cc",
        "native/domain-info.cc"
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc": ["-Wall", "-Wextra", "<!@(pkg-config --cflags libvirt)"],
      "libraries": ["<!@(pkg-config --libs libvirt)"]
    }
  ]
}
