"""Least privilege once attached: every capability the run no longer needs
is dropped, from the permitted set too, so nothing can take it back.

Loading and attaching need CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN),
mounting tracefs CAP_SYS_ADMIN, maps on kernels before 5.11
CAP_SYS_RESOURCE, --metrics on a low port CAP_NET_BIND_SERVICE: all done
by then. What a running tracer still does:

- bpf() on the descriptors it holds (reading and swapping count tables,
  emptying `pending`, reading program statistics). Linux 5.10 checks every
  bpf() command against kernel.unprivileged_bpf_disabled (set by Debian and
  Ubuntu), so the capability that gave BPF rights is kept: CAP_BPF, or
  CAP_SYS_ADMIN where the run had no CAP_BPF;
- open_by_handle_at(2) for the attribution of cgroup ids (-j, --container,
  --metrics): CAP_DAC_READ_SEARCH is kept for those runs, if it was held;
- --args checks /proc/PID/exe, which the kernel shows only to a reader
  that may ptrace the process (a root process holds capabilities this one
  dropped): CAP_SYS_PTRACE is kept for those runs, if it was held.

Everything else (closing its links and maps, reading rings through their
mappings, writing to descriptors already open) needs no capability.
"""

from __future__ import annotations

import ctypes
import os

CAP_DAC_READ_SEARCH = 2
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_BPF = 39
# capset(2)'s 64-bit interface.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


class PrivilegeError(OSError):
    pass


def _effective() -> int:
    """The effective set of this thread."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"capget: {os.strerror(err)}")
    return data[0].effective | data[1].effective << 32


def kept_after_attach(effective: int, attribution: bool, command_lines: bool = False) -> int:
    """The capabilities of `effective` a running tracer still needs."""
    def held(cap: int) -> int:
        return effective & 1 << cap

    keep = held(CAP_BPF) or held(CAP_SYS_ADMIN)
    if attribution:
        keep |= held(CAP_DAC_READ_SEARCH)
    if command_lines:
        keep |= held(CAP_SYS_PTRACE)
    return keep


def drop_after_attach(attribution: bool, command_lines: bool = False) -> int:
    """Keeps only kept_after_attach() in the effective and permitted sets
    (the inheritable set emptied); returns what was kept."""
    keep = kept_after_attach(_effective(), attribution, command_lines)
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in range(2):
        word = keep >> 32 * i & 0xFFFFFFFF
        data[i] = _Data(word, word, 0)
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"capset: {os.strerror(err)}")
    return keep
