"""Least privilege once attached: the running tracer's threads hold only the
capabilities reading still needs (src/tcpconnect/privileges.py). That every
mode works with them is the rest of the suite's business: every run of the
tool drops them (count tables swapped and drained, parked attempts swept at
exit, attribution), on every kernel of the matrix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import free_port, refused_connect
from test_metrics import scrape

from tcpconnect.privileges import (
    CAP_BPF,
    CAP_DAC_READ_SEARCH,
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    kept_after_attach,
)

BPF = 1 << CAP_BPF
DAC_READ_SEARCH = 1 << CAP_DAC_READ_SEARCH


def capabilities(pid: int) -> set[tuple[int, int, int]]:
    """(effective, permitted, inheritable) of each of the process's threads
    that still runs when read: a scrape's thread may end between the listing
    and the read, taking its status file with it."""
    sets = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        sets.add(tuple(int(re.search(rf"^{name}:\s*(\w+)", status, re.M)[1], 16)
                       for name in ("CapEff", "CapPrm", "CapInh")))
    return sets


@pytest.mark.parametrize("options,kept", [
    ((), BPF),
    (("-j",), BPF | DAC_READ_SEARCH),
    (("--container",), BPF | DAC_READ_SEARCH),
], ids=["default", "json", "container"])
def test_only_what_reading_needs_is_kept(trace, options, kept):
    port = free_port()
    t = trace("-P", str(port), *options)
    held = capabilities(t.proc.pid)
    refused_connect(4, port)
    t.stop()
    assert held == {(kept, kept, 0)}, [tuple(map(hex, h)) for h in held]
    assert len(t.rows) == 1 and (t.returncode, t.stderr) == (0, "")


def test_the_metrics_threads_hold_no_more_and_still_read_the_kernel(trace):
    # The exporter's thread starts after the drop, and each scrape's thread
    # is made by it: none holds more than the main thread. A scrape drains
    # the kernel's count table, bpf() on held descriptors.
    port, metrics = free_port(), free_port()
    t = trace("-P", str(port), "--metrics", f"127.0.0.1:{metrics}")
    refused_connect(4, port)
    samples = scrape(metrics)
    held = capabilities(t.proc.pid)
    t.stop()
    assert held == {(BPF | DAC_READ_SEARCH, BPF | DAC_READ_SEARCH, 0)}
    [(labels, value)] = samples["tcpconnect_connects_total"].items()
    assert value == 1 and ("dport", str(port)) in labels


@pytest.mark.host_only
def test_which_capabilities_are_kept():
    everything = (1 << 41) - 1
    assert kept_after_attach(everything, attribution=False) == BPF
    assert kept_after_attach(everything, attribution=True) == BPF | DAC_READ_SEARCH
    # --args reads /proc/PID/exe of processes that may hold more than it.
    assert kept_after_attach(everything, attribution=True, command_lines=True) == (
        BPF | DAC_READ_SEARCH | 1 << CAP_SYS_PTRACE)
    # BPF rights from CAP_SYS_ADMIN alone: that one is kept instead.
    admin = 1 << CAP_SYS_ADMIN | DAC_READ_SEARCH
    assert kept_after_attach(admin, attribution=True) == admin
    assert kept_after_attach(0, attribution=True) == 0
