#!/usr/bin/env bash
# Event latency on a real libvirtd with a small KVM/TCG VM:
#  1. event-probe: call start -> libvirt lifecycle event (the libvirt floor);
#  2. the same suspend/resume cycles seen as libvirt-dbus DomainEvent signals
#     by signal-probe, timed against event-probe's call timestamps;
#  3. load's libvirt kinds against libvirt-dbus on qemu:///system.
# Starts virtlogd and libvirtd unless a libvirtd already answers (then it is
# used and left running), a private dbus-daemon, and libvirt-dbus --system
# on it; defines a 64 MiB VM vmdevd-bench-<pid> with no disk. Everything
# started here is stopped here, by PID, and the VM is destroyed and
# undefined.
#
#   bench/c/check-events.sh [CYCLES] [LOAD_DURATION_S]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=$here/build
cycles=${1:-50}
duration=${2:-3}
uri=qemu:///system
vm=vmdevd-bench-$$
make -s -C "$here"

work=$(mktemp -d /tmp/vmdevd-bench-events.XXXXXX)
pids=()
vm_defined=
cleanup() {
    local i
    if [ -n "$vm_defined" ]; then
        virsh -q -c "$uri" destroy "$vm" >/dev/null 2>&1 || true
        virsh -q -c "$uri" undefine "$vm" >/dev/null 2>&1 || true
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

wait_until() { # seconds command...
    local tries=$(($1 * 10))
    shift
    while ! "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.1
    done
}

if virsh -q -c "$uri" version >/dev/null 2>&1; then
    echo "check-events: using the libvirtd already running"
else
    virtlogd >"$work/virtlogd.log" 2>&1 &
    pids+=($!)
    libvirtd >"$work/libvirtd.log" 2>&1 &
    pids+=($!)
    wait_until 20 virsh -q -c "$uri" version || {
        echo "check-events: libvirtd did not come up" >&2
        cat "$work/libvirtd.log" >&2
        exit 1
    }
fi

virt_type=qemu
[ -w /dev/kvm ] && virt_type=kvm
cat >"$work/vm.xml" <<EOF
<domain type='$virt_type'>
  <name>$vm</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
virsh -q -c "$uri" define "$work/vm.xml" >/dev/null
vm_defined=1
virsh -q -c "$uri" start "$vm" >/dev/null
# libvirt-dbus names a domain by its UUID, '-' written as '_'.
vm_path=/org/libvirt/QEMU/domain/_$(virsh -q -c "$uri" domuuid "$vm" | tr - _)

echo "\$ event-probe --uri $uri --domain $vm --cycles $cycles   # alone"
"$bin/event-probe" --uri "$uri" --domain "$vm" --cycles "$cycles"

# libvirt-dbus serves qemu:///system only with --system; point its
# "system bus" at a private dbus-daemon.
dbus-daemon --session --nofork --print-address=3 3>"$work/address" 2>"$work/dbus.log" &
pids+=($!)
wait_until 10 grep -q unix: "$work/address"
address=$(head -n1 "$work/address")
DBUS_SYSTEM_BUS_ADDRESS=$address /usr/sbin/libvirt-dbus --system >"$work/libvirt-dbus.log" 2>&1 &
pids+=($!)
wait_until 10 busctl --address="$address" status org.libvirt
# libvirt-dbus opens its libvirt connection, and only then registers for
# events, on the first call to that connection's object: make one.
busctl --address="$address" call org.libvirt /org/libvirt/QEMU org.libvirt.Connect \
    ListDomains u 0 >/dev/null

"$bin/signal-probe" --address "$address" --sender org.libvirt --interface org.libvirt.Connect \
    --member DomainEvent >"$work/signals" &
pids+=($!)
wait_until 10 grep -q '^READY' "$work/signals"
"$bin/event-probe" --uri "$uri" --domain "$vm" --cycles "$cycles" --emit-timestamps \
    >"$work/calls"
sleep 0.5
echo "\$ event-probe --uri $uri --domain $vm --cycles $cycles --emit-timestamps   # libvirt-dbus listening"
grep -v '^CALL ' "$work/calls"

# The nth suspend call matches the nth SUSPENDED (3) DomainEvent of our
# domain, the nth resume the nth RESUMED (4). Per change: call start ->
# signal receipt, and direct libvirt event -> signal receipt (what
# libvirt-dbus and the bus add over a plain libvirt client).
awk -v dom="$vm_path" '
    $1 == "CALL" { call[$3, n[$3]] = $4; ev[$3, n[$3]++] = $6 }
    $1 == "SIGNAL" && $5 == "org.libvirt.Connect.DomainEvent" && $6 == dom {
        op = $7 == 3 ? "suspend" : $7 == 4 ? "resume" : ""
        if (op != "") sig[op, m[op]++] = $2
    }
    END {
        for (o = 0; o < 2; o++) {
            op = o == 0 ? "suspend" : "resume"
            k = n[op] < m[op] ? n[op] : m[op]
            for (i = 0; i < k; i++) {
                print "call", op, (sig[op, i] - call[op, i]) / 1000
                if (ev[op, i] > 0) print "event", op, (sig[op, i] - ev[op, i]) / 1000
            }
            if (n[op] != m[op])
                printf "mismatch %s: %d calls, %d signals\n", op, n[op], m[op] > "/dev/stderr"
        }
    }' "$work/calls" "$work/signals" >"$work/deltas"
percentiles() { # from: "call" or "event"
    awk -v from="$1" '$1 == from { print $2, $3 }' "$work/deltas" | sort -k1,1 -k2,2n | awk '
        { v[$1, c[$1]++] = $2 }
        function pct(op, p,   r) { r = int(p / 100 * c[op] + 0.999999); if (r < 1) r = 1; return v[op, r - 1] }
        END {
            for (o = 0; o < 2; o++) {
                op = o == 0 ? "suspend" : "resume"
                if (c[op]) printf "  %-8s n %d  p50 %.1f  p90 %.1f  p99 %.1f us\n", op, c[op], pct(op, 50), pct(op, 90), pct(op, 99)
            }
        }'
}
echo "libvirt-dbus DomainEvent in the same cycles, call start -> signal-probe receipt:"
percentiles call
echo "libvirt-dbus DomainEvent after event-probe's own event for the same change:"
percentiles event

# Other domains may exist on a shared libvirtd: expect what virsh sees.
n_domains=$(virsh -q -c "$uri" list --all --name | grep -c .)
echo "\$ load --call libvirt-listdomains --path /org/libvirt/QEMU --expect-entries $n_domains"
"$bin/load" --address "$address" --call libvirt-listdomains --path /org/libvirt/QEMU \
    --expect-entries "$n_domains" --duration "$duration"
echo "\$ load --call libvirt-get-name --path /org/libvirt/QEMU"
"$bin/load" --address "$address" --call libvirt-get-name --path /org/libvirt/QEMU \
    --duration "$duration"
