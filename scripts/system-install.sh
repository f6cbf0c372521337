#!/usr/bin/env bash
# Installs vmdevd as a system service from a built checkout, or removes it.
#
#   scripts/system-install.sh install   [--destdir DIR] [--prefix DIR] [--sysconfdir DIR] [--node PATH]
#   scripts/system-install.sh uninstall [--destdir DIR] [--prefix DIR] [--sysconfdir DIR]
#
# `npm run install-system` builds and then runs `install`; `npm run
# uninstall-system` runs `uninstall`. DESTDIR, PREFIX, SYSCONFDIR and NODE
# may be given as environment variables instead of options.
#
# PREFIX (default /usr/local) holds the program: PREFIX/lib/vmdevd (the
# build output in dist/ but tests, bin, the production node_modules, the
# plugins with their native builds) and links in PREFIX/bin. The unit and the sysusers file go
# to PREFIX/lib/systemd/system and PREFIX/lib/sysusers.d when PREFIX is /usr
# or /usr/local (systemd reads both), else to /etc/systemd/system and
# /etc/sysusers.d. The bus policy, activation file and interface XML go to
# /usr/share/dbus-1 whatever PREFIX is: the system bus reads only there and
# in /etc. The config is SYSCONFDIR/vmdevd/config.json (default /etc), and
# is never overwritten or removed. NODE (default: the node running npm, or
# the first node in PATH) is the interpreter the unit runs.
#
# With DESTDIR, everything is put under DESTDIR (for packaging and tests)
# and the system is not touched. Without it, install also creates the
# vmdevd user and vmdevd-admin group (systemd-sysusers) and tells systemd
# and the system bus to reload; uninstall first stops and disables the
# service. Neither enables or starts anything.
set -euo pipefail
# Whatever the caller's umask, what is installed is readable by the service user.
umask 022
cd "$(dirname "$0")/.."
root=$PWD
# The daemon's environment and node options: those on the first line of
# bin/vmdevd, "#!/usr/bin/env -S [NAME=VALUE ...] node [OPTION ...]".
shebang=$(head -n 1 "$root/bin/vmdevd")
daemon_env=$(sed -n 's|^#!/usr/bin/env -S \(\([^ =]*=[^ ]* \)*\)node.*$|\1|p' <<<"$shebang" | sed 's/ *$//')
node_args=$(sed -n 's|^#!/usr/bin/env -S \([^ =]*=[^ ]* \)*node *||p' <<<"$shebang")

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() {
  echo "system-install: $*" >&2
  exit 1
}

action=${1:-}
[ "$action" = install ] || [ "$action" = uninstall ] || usage
shift
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
NODE=${NODE:-${npm_node_execpath:-$(command -v node || true)}}
while [ $# -gt 0 ]; do
  case $1 in
    --destdir) DESTDIR=${2:?}; shift 2 ;;
    --destdir=*) DESTDIR=${1#*=}; shift ;;
    --prefix) PREFIX=${2:?}; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --sysconfdir) SYSCONFDIR=${2:?}; shift 2 ;;
    --sysconfdir=*) SYSCONFDIR=${1#*=}; shift ;;
    --node) NODE=${2:?}; shift 2 ;;
    --node=*) NODE=${1#*=}; shift ;;
    *) usage ;;
  esac
done

# The paths end up unquoted in the unit and the activation file.
for var in PREFIX SYSCONFDIR NODE; do
  value=${!var}
  [[ $value =~ ^/[A-Za-z0-9._+/-]*$ ]] || die "$var must be an absolute path of letters, digits and ._+-/ (got \"$value\")"
done
PREFIX=${PREFIX%/}
[ -n "$PREFIX" ] || PREFIX=/
if [ -n "$DESTDIR" ]; then
  [[ $DESTDIR = /* ]] || DESTDIR=$PWD/$DESTDIR
  DESTDIR=${DESTDIR%/}
fi

pkglibdir=${PREFIX%/}/lib/vmdevd
bindir=${PREFIX%/}/bin
case $PREFIX in
  /usr | /usr/local)
    unitdir=$PREFIX/lib/systemd/system
    sysusersdir=$PREFIX/lib/sysusers.d
    ;;
  *)
    unitdir=/etc/systemd/system
    sysusersdir=/etc/sysusers.d
    ;;
esac
dbusdir=/usr/share/dbus-1
configdir=${SYSCONFDIR%/}/vmdevd

unit=$unitdir/vmdevd.service
sysusers=$sysusersdir/vmdevd.conf
policy=$dbusdir/system.d/org.example.dbustest.conf
activation=$dbusdir/system-services/org.example.dbustest.service
interface=$dbusdir/interfaces/org.example.dbustest.xml
config=$configdir/config.json

stage=
say() { printf '%s\n' "$*"; }
# Only a real install or removal touches the running system.
live() { [ -z "$DESTDIR" ]; }
systemd_running() { [ -d /run/systemd/system ]; }

reload_system() {
  live || return 0
  if systemd_running; then
    systemctl daemon-reload || true
  fi
  if [ -S /run/dbus/system_bus_socket ]; then
    # The bus re-reads policy files by itself, but not the user database:
    # a policy for a user that did not exist at the last reload is ignored.
    dbus-send --system --type=method_call --print-reply=literal --dest=org.freedesktop.DBus \
      /org/freedesktop/DBus org.freedesktop.DBus.ReloadConfig >/dev/null 2>&1 || say "note: could not ask the system bus to reload its policy"
  fi
}

# Replaces the placeholders of a template and installs it with mode 0644.
render() {
  local src=$1 dest=$DESTDIR$2
  install -d -m 0755 "$(dirname "$dest")"
  sed -e "s|@NODE@|$NODE|g" -e "s|@NODE_ARGS@|$node_args|g" -e "s|@DAEMON_ENV@|$daemon_env|g" -e "s|@PKGLIBDIR@|$pkglibdir|g" -e "s|@SYSCONFDIR@|${SYSCONFDIR%/}|g" "$src" >"$dest.tmp"
  chmod 0644 "$dest.tmp"
  mv -f "$dest.tmp" "$dest"
  say "installed $dest"
}

copy() {
  install -D -m "$3" "$1" "$DESTDIR$2"
  say "installed $DESTDIR$2"
}

# Copies paths (relative to the checkout) into a directory, symlinks as
# symlinks, leaving out TypeScript's build info.
copy_tree() {
  local dest=$1
  shift
  [ $# -gt 0 ] || return 0
  tar -C "$root" --exclude='*.tsbuildinfo' -cf - -- "$@" | tar -C "$dest" --no-same-owner -xf -
}

# Copies a package's build output (DIR/dist: compiled code, and bundles if
# the build makes them), without its compiled tests and benchmarks.
copy_dist() {
  local dest=$1 dir=$2
  tar -C "$root" --exclude='*.tsbuildinfo' --exclude="$dir/dist/test" --exclude="$dir/dist/bench" \
    -cf - -- "$dir/dist" | tar -C "$dest" --no-same-owner -xf -
}

# The program: bin, compiled sources, interface XML, production node_modules
# and the plugins, staged next to the old copy and then swapped in.
install_program() {
  [ -f dist/src/daemon/main.js ] || die "no build in $root/dist: run npm ci && npm run build first"
  local parent=$DESTDIR${pkglibdir%/*}
  install -d -m 0755 "$parent"
  stage=$(mktemp -d "$parent/.vmdevd-install.XXXXXX")
  trap 'rm -rf "$stage" "$stage.old"' EXIT

  copy_tree "$stage" package.json README.md bin dbus/org.example.dbustest.xml
  copy_dist "$stage" .

  # Every package `npm ls` counts as production (dependencies of vmdevd and
  # of the plugins, not devDependencies), where npm put it. A tree npm finds
  # fault with (an extraneous or invalid copy) is installed as it is, with a
  # warning: the build ran against it.
  local listing problems modules=()
  problems=$(mktemp)
  if ! listing=$(npm ls --omit=dev --all --parseable 2>"$problems"); then
    [ -n "$listing" ] || die "npm ls cannot list node_modules (run npm ci): $(cat "$problems")"
    echo "system-install: warning: npm ls finds problems in node_modules; installing them as they are:" >&2
    grep -v '^npm error A complete log' "$problems" | sed 's/^/  /' >&2 || true
  fi
  rm -f "$problems"
  while IFS= read -r path; do
    case $path in
      "$root"/*/node_modules/* | "$root"/node_modules/*) modules+=("${path#"$root"/}") ;;
    esac
  done <<<"$listing"
  copy_tree "$stage" "${modules[@]}"
  # Plugins import vmdevd/plugin-api: vmdevd is their peer dependency, so
  # the installed vmdevd provides itself, as the workspace link does in a checkout.
  install -d -m 0755 "$stage/node_modules"
  ln -sfn .. "$stage/node_modules/vmdevd"

  # A plugin at run time: its package.json, its build output, and its
  # native build (build/Release/*.node) if it has a binding.gyp.
  local dir name natives
  for dir in plugins/*/; do
    [ -f "$dir/package.json" ] || continue
    name=${dir%/}
    [ -d "$name/dist" ] || die "plugin $name is not built (no $name/dist): run npm run build"
    copy_tree "$stage" "$name/package.json"
    copy_dist "$stage" "$name"
    if [ -f "$name/binding.gyp" ]; then
      natives=("$name"/build/Release/*.node)
      [ -e "${natives[0]}" ] || die "plugin $name has no native build ($name/build/Release/*.node): run npm ci"
      copy_tree "$stage" "${natives[@]}"
    fi
  done

  # Readable by everyone (the service user), writable by the owner only.
  if [ "$(id -u)" -eq 0 ]; then chown -R -h 0:0 "$stage"; fi
  chmod -R u+rwX,go+rX,go-w "$stage"
  chmod 0755 "$stage" "$stage"/bin/*

  local target=$DESTDIR$pkglibdir
  if [ -e "$target" ]; then
    mv "$target" "$stage.old"
    mv "$stage" "$target"
    rm -rf "$stage.old"
  else
    mv "$stage" "$target"
  fi
  trap - EXIT
  say "installed $target"

  install -d -m 0755 "$DESTDIR$bindir"
  local bin
  for bin in bin/*; do
    ln -sfn "../lib/vmdevd/$bin" "$DESTDIR$bindir/${bin#bin/}"
    say "installed $DESTDIR$bindir/${bin#bin/} -> ../lib/vmdevd/$bin"
  done
}

do_install() {
  [ -x "$NODE" ] || die "node is not executable at $NODE (give --node PATH)"
  install_program
  render systemd/vmdevd.service "$unit"
  render systemd/jitless.conf "$pkglibdir/systemd/jitless.conf"
  copy systemd/vmdevd.sysusers.conf "$sysusers" 0644
  copy dbus/org.example.dbustest.conf "$policy" 0644
  render dbus/org.example.dbustest.service "$activation"
  copy dbus/org.example.dbustest.xml "$interface" 0644
  if [ -e "$DESTDIR$config" ]; then
    say "kept $DESTDIR$config (the default is systemd/config.json)"
  else
    copy systemd/config.json "$config" 0644
  fi

  if live; then
    if command -v systemd-sysusers >/dev/null; then
      systemd-sysusers "$sysusers"
    else
      die "systemd-sysusers is missing: create the user vmdevd and the group vmdevd-admin yourself"
    fi
  fi
  reload_system
  if live; then
    say ""
    say "vmdevd is installed. Add administrators with: usermod -aG vmdevd-admin NAME"
    say "Start it with: systemctl enable --now vmdevd (or let D-Bus activation start it)"
  fi
}

do_uninstall() {
  if live && systemd_running; then
    systemctl disable --now vmdevd.service 2>/dev/null || true
  fi
  local bin link
  for bin in "$DESTDIR$bindir"/*; do
    [ -L "$bin" ] || continue
    link=$(readlink "$bin")
    case $link in ../lib/vmdevd/bin/*) rm -f "$bin" && say "removed $bin" ;; esac
  done
  if [ -e "$DESTDIR$pkglibdir" ]; then
    rm -rf "$DESTDIR$pkglibdir"
    say "removed $DESTDIR$pkglibdir"
  fi
  local file
  for file in "$unit" "$sysusers" "$policy" "$activation" "$interface"; do
    if [ -e "$DESTDIR$file" ]; then
      rm -f "$DESTDIR$file"
      say "removed $DESTDIR$file"
    fi
  done
  reload_system
  [ -e "$DESTDIR$config" ] && say "kept $DESTDIR$config"
  if live && getent passwd vmdevd >/dev/null; then
    say "kept the user vmdevd and the group vmdevd-admin (userdel vmdevd; groupdel vmdevd-admin)"
  fi
  return 0
}

"do_$action"
