"""A small seccomp filter for the sandbox (x86-64 only): system calls a test program never needs are refused.

The namespaces and the lost capabilities already contain the program; this narrows the kernel it can
reach, as container runtimes do. Refused with EPERM: new namespaces of any kind (unshare, setns, and
clone with a CLONE_NEW* flag: in particular a user namespace, in which it would hold capabilities),
ptrace, mount and friends, kernel keyrings, bpf, perf events, userfaultfd, io_uring, module and kexec
loading. clone3 answers ENOSYS so that the C library falls back to clone, whose flags the filter can
read. System calls of another ABI (i386's int 0x80, x32) are refused too, since their numbers differ.

The filter is classic BPF, written out by hand: bwrap reads it from a file descriptor (--seccomp).
"""
from __future__ import annotations

import errno
import os
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
CLONE_NEW_ANY = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
REFUSED = {  # x86-64 numbers
    "ptrace": 101, "pivot_root": 155, "mount": 165, "umount2": 166, "init_module": 175, "delete_module": 176,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "setns": 308, "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}
CLONE, CLONE3 = 56, 435
# classic BPF opcodes
LD_ABS_W, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW, ERRNO = 0x7FFF0000, 0x00050000
NR, ARCH, ARG0 = 0, 4, 16  # offsets in struct seccomp_data


def supported() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


def program() -> bytes:
    """The filter as bwrap wants it: an array of struct sock_filter {u16 code; u8 jt, jf; u32 k}."""
    deny, enosys = ERRNO | errno.EPERM, ERRNO | errno.ENOSYS
    refused = sorted(REFUSED.values())
    # each jump's targets count instructions from the next one; the returns sit at the end:
    # [..., RET ALLOW, RET deny, RET enosys]
    body = [(LD_ABS_W, 0, 0, ARCH), None, (LD_ABS_W, 0, 0, NR), None]
    body += [None] * len(refused) + [None, None, (LD_ABS_W, 0, 0, ARG0), None]
    n = len(body)
    allow_at, deny_at, enosys_at = n, n + 1, n + 2

    def jump(at, code, k, yes, no):  # yes / no: absolute indices
        body[at] = (code, yes - at - 1, no - at - 1, k)

    jump(1, JEQ_K, AUDIT_ARCH_X86_64, 2, deny_at)
    jump(3, JGE_K, X32_BIT, deny_at, 4)
    for i, nr in enumerate(refused):
        jump(4 + i, JEQ_K, nr, deny_at, 5 + i)
    at = 4 + len(refused)
    jump(at, JEQ_K, CLONE3, enosys_at, at + 1)
    jump(at + 1, JEQ_K, CLONE, at + 2, allow_at)
    jump(at + 3, JSET_K, CLONE_NEW_ANY, deny_at, allow_at)
    body += [(RET_K, 0, 0, ALLOW), (RET_K, 0, 0, deny), (RET_K, 0, 0, enosys)]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in body)


def filter_fd() -> int | None:
    """A file descriptor holding the filter, positioned at its start (None where there is no filter)."""
    if not supported():
        return None
    fd = os.memfd_create("rlkit-seccomp")  # close-on-exec: only the bwrap it is passed to inherits it
    os.write(fd, program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
