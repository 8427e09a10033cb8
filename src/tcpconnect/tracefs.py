"""Whether the connect() syscall tracepoints can be attached.

Classic tracepoints are attached through perf_event_open(2) with an id that
only tracefs tells: libbpf reads events/syscalls/<name>/id under
/sys/kernel/debug/tracing when that path exists, else under
/sys/kernel/tracing. Hosts without systemd (which mounts it at boot) often
have tracefs unmounted; mounting it where the kernel provides its mount
point changes nothing else, so the tool does that when it must.

Debian's and Ubuntu's kernels add kernel.perf_event_paranoid = 3, which
refuses perf_event_open(2) to any process without CAP_SYS_ADMIN, whatever
else it holds: a run with only CAP_BPF and CAP_PERFMON is told so here, by
name, rather than by libbpf's EACCES.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from .kernel import seccomp_mode, seccomp_refusal

DEBUGFS_TRACING = "/sys/kernel/debug/tracing"
TRACEFS = "/sys/kernel/tracing"
CONNECT_TRACEPOINTS = ("sys_enter_connect", "sys_exit_connect")
PERF_EVENT_PARANOID = "/proc/sys/kernel/perf_event_paranoid"
CAP_SYS_ADMIN = 21
PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}


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
        return (f"tracefs is not mounted at {TRACEFS} and mounting it failed: "
                f"{os.strerror(err)} (in a container, mount the host's {TRACEFS})")
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
    return perf_events_refused()


def perf_events_refused() -> str | None:
    """Why perf_event_open(2) would refuse this process, if it would."""
    filtered = perf_event_open_filtered()
    if filtered:
        return filtered
    try:
        with open(PERF_EVENT_PARANOID) as f:
            paranoid = int(f.read())
        with open("/proc/self/status") as f:
            effective = next(int(line.split()[1], 16) for line in f
                             if line.startswith("CapEff:"))
    except (OSError, ValueError, StopIteration):
        return None  # attaching will tell
    if paranoid > 2 and not effective >> CAP_SYS_ADMIN & 1:
        return (f"kernel.perf_event_paranoid is {paranoid}, which refuses perf_event_open() "
                "without CAP_SYS_ADMIN (set it to 2 or less, or grant CAP_SYS_ADMIN)")
    return None


def perf_event_open_filtered() -> str | None:
    """A seccomp filter's refusal of perf_event_open(2), found by calling it
    without attributes: the kernel answers EFAULT before any other check,
    so any other answer is the filter's."""
    number = PERF_EVENT_OPEN.get(platform.machine())
    if number is None or seccomp_mode() != 2:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(ctypes.c_long(number), None, ctypes.c_long(0), ctypes.c_long(-1),
                 ctypes.c_long(-1), ctypes.c_ulong(0))
    err = ctypes.get_errno()
    return None if err == errno.EFAULT else seccomp_refusal("perf_event_open", err)
