// Owning handles for what libvirt hands out, so that every path frees them.
#pragma once

#include <libvirt/libvirt.h>

#include <cstdlib>
#include <memory>

namespace vmdevd {

struct DomainFree {
  void operator()(virDomainPtr dom) const { virDomainFree(dom); }
};
using DomainHandle = std::unique_ptr<virDomain, DomainFree>;

struct StringFree {
  void operator()(char* text) const { free(text); }
};
using LibvirtString = std::unique_ptr<char, StringFree>;

}  // namespace vmdevd
