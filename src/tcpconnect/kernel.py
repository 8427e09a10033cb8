"""What the running kernel offers the tracer, found by probing it at start-up:
never by its version string, which distributions backport features under."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import time
from typing import NamedTuple

from .libbpf import BPF_MAP_TYPE_RINGBUF, BpfError, map_creation_error
from .mounts import btf_not_mounted

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
# membarrier(2): MEMBARRIER_CMD_GLOBAL waits for an RCU grace period
# (kernel/sched/membarrier.c: synchronize_rcu() when more than one CPU runs).
MEMBARRIER = {"x86_64": 324, "aarch64": 283}
MEMBARRIER_CMD_GLOBAL = 1
# Where membarrier(2) is refused (a seccomp filter; nohz_full CPUs, EINVAL):
# far longer than a program run, which cannot sleep.
PROGRAM_RUN_BOUND_S = 0.05


class UnsupportedKernel(BpfError):
    """The kernel lacks something every mode needs."""


class KernelSupport(NamedTuple):
    # The kernel exposes its own BTF, so programs can take BTF-typed
    # arguments (tp_btf) and read them with plain loads. Without it they
    # are raw tracepoints relocated against the --btf file.
    own_btf: bool


def probe_kernel(btf_path: str | None) -> KernelSupport:
    """Raises UnsupportedKernel, naming what is missing and the minimum
    kernel, when no mode can run here."""
    failure = map_creation_error(BPF_MAP_TYPE_RINGBUF, mmap.PAGESIZE)
    if failure:
        raise UnsupportedKernel(ring_buffer_refusal(failure, seccomp_mode()))
    own_btf = os.path.exists(VMLINUX_BTF)
    if not own_btf and btf_path is None:
        hidden = btf_not_mounted()
        if hidden:
            raise UnsupportedKernel(
                f"{VMLINUX_BTF} is missing and {hidden} is not the kernel's sysfs, so this "
                "kernel may well have BTF: in a container, mount the host's /sys/kernel/btf "
                "(read-only), or give this kernel's BTF with --btf FILE")
        raise UnsupportedKernel(
            f"this kernel has no BTF ({VMLINUX_BTF} is missing): give this kernel's BTF "
            "with --btf FILE (BTFHub has them for many distribution kernels), or use a "
            "kernel built with CONFIG_DEBUG_INFO_BTF=y")
    return KernelSupport(own_btf=own_btf)


def wait_for_program_runs() -> None:
    """Returns once every run of a BPF program that had begun before the
    call has ended. Closing a tracepoint's link stops new runs only: the
    kernel frees the probe after an RCU grace period without waiting for it
    (tracepoint_probe_unregister), and a run in flight on another CPU may
    still submit or park an attempt after the tracer's last read. Runs are
    RCU readers (the tracepoint disables preemption around them), so one
    grace period after the last link closed covers them all."""
    number = MEMBARRIER.get(platform.machine())
    libc = ctypes.CDLL(None, use_errno=True)
    if number is None or libc.syscall(ctypes.c_long(number), ctypes.c_int(MEMBARRIER_CMD_GLOBAL),
                                      ctypes.c_uint(0), ctypes.c_int(0)) != 0:
        time.sleep(PROGRAM_RUN_BOUND_S)


def seccomp_mode() -> int:
    """This process's seccomp mode (2: a filter), 0 if unknown."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("Seccomp:"))
    except (OSError, StopIteration, ValueError):
        return 0


def ring_buffer_refusal(err: int, seccomp: int) -> str:
    """Why the probe's ring buffer could not be made. The capabilities were
    checked before (cli.check_environment), so EPERM here is a filter's."""
    if err in (errno.EPERM, errno.EACCES, errno.ENOSYS) and seccomp == 2:
        return seccomp_refusal("bpf", err)
    if err in (errno.EPERM, errno.EACCES):
        return (f"bpf() was refused ({errno.errorcode[err]}) although this process has the "
                "capabilities it needs: a Linux security module (lockdown, SELinux, AppArmor) "
                "refuses BPF here")
    if err == errno.ENOSYS:
        return "this kernel has no bpf() system call (built without CONFIG_BPF_SYSCALL)"
    if err == errno.EINVAL:
        return ("this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF): "
                "tcpconnect needs Linux 5.8 or later")
    return f"cannot create a BPF ring buffer: {os.strerror(err)}"


def seccomp_refusal(syscall: str, err: int) -> str:
    """A system call this process's seccomp filter answered with `err`.
    Default profiles (containers-common's, CRI-O's, older containerd's)
    tie bpf() and perf_event_open() to CAP_SYS_ADMIN, which the tool does
    not otherwise need."""
    return (f"{syscall}() was refused ({errno.errorcode.get(err, err)}) by this process's "
            "seccomp filter, not by the kernel: runtimes' default filters allow it only with "
            "CAP_SYS_ADMIN; run with a profile that allows bpf() and perf_event_open() "
            "(deploy/seccomp-tcpconnect.json; Kubernetes: seccompProfile Localhost) or with "
            "CAP_SYS_ADMIN")
