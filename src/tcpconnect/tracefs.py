"""Whether the connect() syscall tracepoints can be attached.

Classic tracepoints are attached through perf_event_open(2) with an id that
only tracefs tells: libbpf reads events/syscalls/<name>/id under
/sys/kernel/debug/tracing when that path exists, else under
/sys/kernel/tracing. Hosts without systemd (which mounts it at boot) often
have tracefs unmounted; mounting it where the kernel provides its mount
point changes nothing else, so the tool does that when it must.
"""

from __future__ import annotations

import ctypes
import os

DEBUGFS_TRACING = "/sys/kernel/debug/tracing"
TRACEFS = "/sys/kernel/tracing"
CONNECT_TRACEPOINTS = ("sys_enter_connect", "sys_exit_connect")


def _tracing_dir() -> str:
    """The directory libbpf 1.x looks in (its use_debugfs())."""
    return DEBUGFS_TRACING if os.access(DEBUGFS_TRACING, os.F_OK) else TRACEFS


def _mount_tracefs() -> str | None:
    """None once tracefs is mounted at TRACEFS, else why it is not."""
    if not os.path.isdir(TRACEFS):
        return f"{TRACEFS} does not exist (kernel without tracefs)"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", ctypes.c_ulong(0), None) != 0:
        err = ctypes.get_errno()
        return f"tracefs is not mounted at {TRACEFS} and mounting it failed: {os.strerror(err)}"
    return None


def connect_tracepoints() -> str | None:
    """None when syscalls:sys_enter_connect and sys_exit_connect can be
    attached (mounting tracefs if need be), else the reason they cannot."""
    tracing = _tracing_dir()
    if tracing == TRACEFS and not os.path.isdir(os.path.join(TRACEFS, "events")):
        problem = _mount_tracefs()
        if problem:
            return problem
    for name in CONNECT_TRACEPOINTS:
        if not os.access(os.path.join(tracing, "events", "syscalls", name, "id"), os.R_OK):
            return (f"{tracing}/events/syscalls/{name} is missing "
                    "(a kernel without CONFIG_FTRACE_SYSCALLS)")
    return None
