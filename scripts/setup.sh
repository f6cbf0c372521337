#!/usr/bin/env bash
# Prepares this machine (Debian 12, as root) to build, run and test vmdevd:
# installs the Debian packages that are missing, makes /dev/kvm usable by
# QEMU when it exists, installs the npm dependencies and builds.
# Safe to run again: it only does what is not done yet.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

PACKAGES=(
  # build of the native libvirt binding
  build-essential pkg-config python3 libvirt-dev
  # a private bus for the daemon and the tests, and foreign clients
  dbus systemd libglib2.0-bin python3-dbus-next
  # a second foreign client that writes big-endian messages (GLib's GDBus from Python)
  python3-gi gir1.2-glib-2.0
  # a real libvirtd with QEMU, for the libvirt backend and the demo; QEMU run
  # directly for the qmp backend
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  # the memory check of the native binding
  valgrind
  # benchmarks: an sd-bus client and reference server, and libvirt-dbus to compare with
  libsystemd-dev libvirt-dbus
  # the system install and bus policy tests: test accounts (useradd, groupadd),
  # running clients and the daemon as them (setpriv), the unit checks
  # (systemd-analyze, systemd-sysusers: package systemd, above)
  passwd util-linux
  # the system test: a Debian 12 tree (debootstrap, which checks the mirror's
  # signature with Debian's keyring) booted with systemd-nspawn, commands
  # inside it through nsenter (util-linux, above)
  debootstrap debian-archive-keyring systemd-container
  # npm run lint: the formatter of the native code, the shell checker
  clang-format shellcheck
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh installs Debian packages and starts libvirtd: run it as root" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # Without systemd running, package scripts cannot start services; that is fine here.
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all present"
fi

node_version=$(node -p 'process.versions.node')
if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'; then
  echo "vmdevd needs Node.js 20.19 or newer (found $node_version)" >&2
  exit 1
fi

# Debian's udev rule gives /dev/kvm to group kvm; machines without udev
# leave it root-only, and QEMU (user libvirt-qemu, group kvm) then falls
# back to software emulation. Do what the udev rule would.
if [ -c /dev/kvm ] && [ "$(stat -c %G /dev/kvm)" != kvm ] && getent group kvm >/dev/null; then
  say "giving /dev/kvm to group kvm (as Debian's udev rule does)"
  chgrp kvm /dev/kvm
  chmod 660 /dev/kvm
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund
fi
say "building (tsc -b)"
npm run build --silent
