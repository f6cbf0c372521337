#!/usr/bin/env bash
# Runs every load kind once on a private bus: against ref-server (1000 VMs)
# and against libvirt-dbus on libvirt's test driver. Starts and stops its own
# dbus-daemon, ref-server and libvirt-dbus, by PID.
#
#   bench/c/check-bus.sh [DURATION_S] [JSON_OUT]
#
# DURATION_S: seconds per measured run (default 5). JSON_OUT: also append
# each run's JSON object to this file.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=$here/build
duration=${1:-5}
json_out=${2:-}
make -s -C "$here"

work=$(mktemp -d /tmp/vmdevd-bench-bus.XXXXXX)
pids=()
cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Waits until file $1 has a line starting with $2, or fails after 10 s.
wait_for_line() {
    local i
    for ((i = 0; i < 100; i++)); do
        grep -q "^$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "check-bus: no '$2' in $1" >&2
    cat "$1" >&2
    return 1
}

dbus-daemon --session --nofork --print-address=3 3>"$work/address" 2>"$work/dbus.log" &
pids+=($!)
wait_for_line "$work/address" unix:
address=$(head -n1 "$work/address")

"$bin/ref-server" --address "$address" --vms 1000 >"$work/ref.out" 2>&1 &
pids+=($!)
wait_for_line "$work/ref.out" READY

# libvirt-dbus --session serves fixed URIs (test:///default on
# /org/libvirt/Test among them) and ignores LIBVIRT_DEFAULT_URI.
DBUS_SESSION_BUS_ADDRESS=$address LIBVIRT_DEFAULT_URI=test:///default \
    /usr/sbin/libvirt-dbus --session >"$work/libvirt-dbus.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 100; i++)); do
    busctl --address="$address" status org.libvirt >/dev/null 2>&1 && break
    sleep 0.1
done

status=0
run() {
    echo "\$ load $*"
    if [ -n "$json_out" ]; then
        "$bin/load" --address "$address" --duration "$duration" --json "$@" | tee -a "$json_out" ||
            status=1
    else
        "$bin/load" --address "$address" --duration "$duration" "$@" || status=1
    fi
}

run --call ping
run --call ping --inflight 8
run --call peer-ping
run --call testmethod --expect-bool true --floor 2000
run --call testmethod --expect-bool true --inflight 8
run --call testmethod-invalid
run --call get-testproperty --expect-entries 1000
run --call get-testproperty --expect-entries 1000 --inflight 8
run --call peer-ping --dest org.libvirt --path /org/libvirt/Test
run --call libvirt-listdomains --expect-entries 1
run --call libvirt-listdomains --expect-entries 1 --inflight 8
run --call libvirt-get-name
exit $status
