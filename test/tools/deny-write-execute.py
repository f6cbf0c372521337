#!/usr/bin/env python3
"""Runs a command under the seccomp filter of systemd's MemoryDenyWriteExecute=yes.

    deny-write-execute.py COMMAND [ARG...]

The same rules as systemd's seccomp_memory_deny_write_execute(), each
failing with EPERM: mmap() with PROT_WRITE and PROT_EXEC together,
mprotect() and pkey_mprotect() with PROT_EXEC, shmat() with SHM_EXEC.
Without systemd as PID 1 this is how the tests check that the daemon, run
with the unit's node options, works under the unit's restriction (and that
node with its JIT does not). x86_64 and aarch64 only; other architectures'
system calls pass unfiltered.
"""
import ctypes
import os
import platform
import struct
import sys

# (AUDIT_ARCH_*, mmap, mprotect, pkey_mprotect, shmat)
ARCHES = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ALLOW, RET_EPERM = 0x7FFF0000, 0x00050000 | 1
LD_ABS, JEQ, AND, RET = 0x20, 0x15, 0x54, 0x06
# struct seccomp_data: int nr; __u32 arch; __u64 ip; __u64 args[6] (little endian)
OFF_NR, OFF_ARCH, OFF_ARG2 = 0, 4, 16 + 2 * 8


def program(arch, nr_mmap, nr_mprotect, nr_pkey_mprotect, nr_shmat):
    def masked(mask):
        # A = args[2] & mask; deny if A == mask. Three instructions.
        return [(LD_ABS, 0, 0, OFF_ARG2), (AND, 0, 0, mask), (JEQ, 0, 0, mask)]

    # Layout: 0-1 arch check, 2 load nr, 3-6 dispatch, 7 allow,
    # 8-10 mmap, 11-13 mprotect/pkey_mprotect, 14-16 shmat, 17 allow, 18 deny.
    insns = [
        (LD_ABS, 0, 0, OFF_ARCH),
        (JEQ, 0, 5, arch),  # another ABI: to 7 (allow)
        (LD_ABS, 0, 0, OFF_NR),
        (JEQ, 4, 0, nr_mmap),  # to 8
        (JEQ, 6, 0, nr_mprotect),  # to 11
        (JEQ, 5, 0, nr_pkey_mprotect),  # to 11
        (JEQ, 7, 0, nr_shmat),  # to 14
        (RET, 0, 0, RET_ALLOW),
    ]
    for mask in (PROT_WRITE | PROT_EXEC, PROT_EXEC, SHM_EXEC):
        insns += masked(mask)
    # Each block's JEQ goes to the deny at 18 when equal, else to the allow at 17.
    for start in (8, 11, 14):
        jeq = start + 2
        code, _, _, k = insns[jeq]
        insns[jeq] = (code, 18 - jeq - 1, 17 - jeq - 1, k)
    insns += [(RET, 0, 0, RET_ALLOW), (RET, 0, 0, RET_EPERM)]
    return b"".join(struct.pack("<HBBI", *i) for i in insns), len(insns)


def main():
    if len(sys.argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    machine = platform.machine()
    if machine not in ARCHES:
        sys.stderr.write(f"deny-write-execute: {machine} is not supported\n")
        return 2
    code, count = program(*ARCHES[machine])
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
