"""Start-up probing of the running kernel (tcpconnect.kernel)."""

from __future__ import annotations

import os

import pytest
from conftest import WITHOUT_KERNEL_BTF, comm_of, free_port, refused_connect, row

from tcpconnect import kernel
from tcpconnect.libbpf import BPF_MAP_TYPE_RINGBUF, kernel_has_map_type


def test_this_kernel_has_what_every_mode_needs():
    assert kernel_has_map_type(BPF_MAP_TYPE_RINGBUF)
    assert kernel.probe_kernel(None) == kernel.KernelSupport(own_btf=True)


def test_kernel_without_ring_buffer_is_named_with_the_minimum(monkeypatch):
    # No kernel older than 5.8 can be booted here (Debian's archive has none
    # left), so this checks only the wording the probe's answer leads to.
    monkeypatch.setattr(kernel, "kernel_has_map_type", lambda map_type: False)
    with pytest.raises(kernel.UnsupportedKernel, match=r"^this kernel has no BPF ring buffer "
                       r"\(BPF_MAP_TYPE_RINGBUF\): tcpconnect needs Linux 5\.8 or later$"):
        kernel.probe_kernel(None)


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
