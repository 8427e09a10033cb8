"""A real seccomp filter for a child process, as a container runtime's
default profile installs one: one system call answered with an errno,
every other allowed. Built from classic BPF by hand (no libseccomp here)."""

from __future__ import annotations

import ctypes
import platform
import struct
from typing import Callable

# (AUDIT_ARCH_*, {name: number}) of the machines the suite runs on.
ARCHES = {
    "x86_64": (0xC000003E, {"bpf": 321, "perf_event_open": 298, "chroot": 161}),
    "aarch64": (0xC00000B7, {"bpf": 280, "perf_event_open": 241, "chroot": 51}),
}
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# Classic BPF opcodes: load a word of seccomp_data, jump if equal, return.
LD_ABS_W, JEQ_K, RET_K = 0x20, 0x15, 0x06
NR_OFFSET, ARCH_OFFSET = 0, 4


def refusing(syscall: str, err: int) -> Callable[[], None]:
    """A preexec_fn that makes `syscall` fail with `err` in the child."""
    arch, numbers = ARCHES[platform.machine()]
    program = [
        (LD_ABS_W, 0, 0, ARCH_OFFSET),
        (JEQ_K, 1, 0, arch),
        (RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (LD_ABS_W, 0, 0, NR_OFFSET),
        (JEQ_K, 0, 1, numbers[syscall]),
        (RET_K, 0, 0, SECCOMP_RET_ERRNO | err),
        (RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)

    def install() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        # prctl is variadic: its arguments are unsigned longs, all of each.
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        filters = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("@HP", len(program), ctypes.addressof(filters))
        prog = ctypes.create_string_buffer(fprog, len(fprog))
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")

    return install


if __name__ == "__main__":
    # As a command prefix (for tracers started by the trace fixture):
    #   python seccomp_filter.py SYSCALL ERRNO-NAME COMMAND...
    import errno
    import os
    import sys

    refusing(sys.argv[1], getattr(errno, sys.argv[2]))()
    os.execvp(sys.argv[3], sys.argv[3:])
