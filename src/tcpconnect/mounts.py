"""Whether a path the tool needs is missing because the kernel lacks it or
because nobody mounted it here. In a container, /sys/kernel/btf,
/sys/fs/bpf and /sys/kernel/tracing are the host's only if the runtime was
told to mount them; an empty directory, or another file system, stands in
their place otherwise, and the fix is the mount, not another kernel."""

from __future__ import annotations

import os

from .libbpf import BPF_FS_MAGIC, BpfError, filesystem_magic

SYSFS_MAGIC = 0x62656572
BTF_DIR = "/sys/kernel/btf"


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _magic(path: str) -> int | None:
    try:
        return filesystem_magic(path)
    except BpfError:
        return None


def btf_not_mounted() -> str | None:
    """Where the kernel's BTF would be but sysfs is not (so the kernel may
    well have BTF), or None: then sysfs itself says the kernel has none."""
    where = _nearest_existing(BTF_DIR)
    return None if _magic(where) == SYSFS_MAGIC else where


def bpffs_not_mounted(pin: str) -> str | None:
    """The directory that should hold a missing pin but is on no BPF file
    system, or None."""
    where = _nearest_existing(os.path.dirname(os.path.abspath(pin)))
    return None if _magic(where) == BPF_FS_MAGIC else where
