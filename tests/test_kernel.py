"""Start-up probing of the running kernel (tcpconnect.kernel)."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess

import pytest
from conftest import ROOT, TOOL, WITHOUT_KERNEL_BTF, comm_of, free_port, refused_connect, row
from seccomp_filter import refusing

from tcpconnect import kernel
from tcpconnect.libbpf import BPF_MAP_TYPE_RINGBUF, map_creation_error


def test_this_kernel_has_what_every_mode_needs():
    assert map_creation_error(BPF_MAP_TYPE_RINGBUF, mmap.PAGESIZE) == 0
    assert kernel.probe_kernel(None) == kernel.KernelSupport(own_btf=True)


def test_kernel_without_ring_buffer_is_named_with_the_minimum():
    # No kernel older than 5.8 can be booted here (Debian's archive has none
    # left): bpf() answers EINVAL for a map type it does not know.
    assert map_creation_error(0x7FFF, mmap.PAGESIZE) == errno.EINVAL
    assert kernel.ring_buffer_refusal(errno.EINVAL, 0) == (
        "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF): "
        "tcpconnect needs Linux 5.8 or later")


SECCOMP_REFUSAL = (
    "tcpconnect: bpf() was refused ({}) by this process's seccomp filter, not by the kernel: "
    "runtimes' default filters allow it only with CAP_SYS_ADMIN; run with a profile that "
    "allows bpf() and perf_event_open() (deploy/seccomp-tcpconnect.json; Kubernetes: "
    "seccompProfile Localhost) or with CAP_SYS_ADMIN\n")


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS], ids=["EPERM", "ENOSYS"])
def test_a_seccomp_filter_refusing_bpf_is_named_not_the_kernel(err):
    # containers-common's default profile (podman, CRI-O) answers EPERM
    # without CAP_SYS_ADMIN; others answer ENOSYS for what they do not list.
    result = subprocess.run([*TOOL, "-P", "80"], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL, cwd=ROOT,
                            preexec_fn=refusing("bpf", err))
    assert result.returncode == 1, result
    assert result.stderr == SECCOMP_REFUSAL.format(errno.errorcode[err])


def test_refusals_without_a_seccomp_filter_blame_the_right_thing():
    assert kernel.ring_buffer_refusal(errno.EPERM, 0).startswith(
        "bpf() was refused (EPERM) although this process has the capabilities it needs: "
        "a Linux security module")
    assert kernel.ring_buffer_refusal(errno.ENOSYS, 0) == (
        "this kernel has no bpf() system call (built without CONFIG_BPF_SYSCALL)")
    assert kernel.ring_buffer_refusal(errno.ENOMEM, 0) == (
        "cannot create a BPF ring buffer: Cannot allocate memory")


def test_hidden_kernel_btf_with_btf_file_traces(trace, tmp_path):
    # The whole tracing suite runs this way too (TEST_WITHOUT_KERNEL_BTF=1 in
    # make test); this is the quick check that the option is honoured at all.
    btf = tmp_path / "vmlinux.btf"
    btf.write_bytes(open("/sys/kernel/btf/vmlinux", "rb").read())
    port = free_port()
    t = trace("-P", str(port), "--btf", str(btf), prefix=WITHOUT_KERNEL_BTF)
    refused_connect(4, port)
    t.stop()
    assert t.rows == [row(os.getpid(), comm_of(os.getpid()), 4, "127.0.0.1", "127.0.0.1", port)]
    assert t.returncode == 0
    assert t.stderr == ""
