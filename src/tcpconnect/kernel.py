"""What the running kernel offers the tracer, found by probing it at start-up:
never by its version string, which distributions backport features under."""

from __future__ import annotations

import os
from typing import NamedTuple

from .libbpf import BPF_MAP_TYPE_RINGBUF, BpfError, kernel_has_map_type

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


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
    if not kernel_has_map_type(BPF_MAP_TYPE_RINGBUF):
        raise UnsupportedKernel(
            "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF): "
            "tcpconnect needs Linux 5.8 or later")
    own_btf = os.path.exists(VMLINUX_BTF)
    if not own_btf and btf_path is None:
        raise UnsupportedKernel(
            f"this kernel has no BTF ({VMLINUX_BTF} is missing): give this kernel's BTF "
            "with --btf FILE (BTFHub has them for many distribution kernels), or use a "
            "kernel built with CONFIG_DEBUG_INFO_BTF=y")
    return KernelSupport(own_btf=own_btf)
