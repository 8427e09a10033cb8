"""Attempts that fail before a SYN is sent, against the real kernel: no route,
a blackhole or prohibit route, a cgroup program that refuses, no free local
port. Each is made for real, in network namespaces and cgroups of the test's
own, and must be a row with its result and errno."""

from __future__ import annotations

import errno
import subprocess
import sys
import uuid
from typing import Iterator

import pytest
from conftest import (
    attach_connect_programs,
    comm_of,
    free_port,
    perf_event_paranoid,
    refused_connect,
    row,
    sh,
)

from test_outcome import ROW_LAT, COUNT_HEADER, count_row, latency_of, with_outcome

from tcpconnect import tracefs

# Documentation ranges (RFC 5737, RFC 3849). They are only ever connected
# to from namespaces with no route to them: no packet leaves.
NOWHERE = {4: "192.0.2.1", 6: "2001:db8::1"}
ANY = {4: "0.0.0.0", 6: "::"}


@pytest.fixture
def lonely() -> Iterator[str]:
    """A network namespace with only loopback up: no route anywhere else."""
    name = f"tcf{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.parametrize("family", [4, 6])
def test_no_route_is_a_row(trace, workload, lonely, family):
    # As bcc's row: the attempt happened, whatever its result.
    w = workload(netns=lonely)
    port = free_port()
    t = trace("-P", str(port))
    assert w.connect(family, NOWHERE[family], port) == (0, errno.ENETUNREACH)
    t.stop()
    assert t.rows == [row(w.pid, w.comm, family, ANY[family], NOWHERE[family], port)]


@pytest.mark.parametrize("family", [4, 6])
def test_no_route_result(trace, workload, lonely, family):
    w = workload(netns=lonely)
    port = free_port()
    t = trace("--outcome", "-L", "-P", str(port))
    assert w.connect(family, NOWHERE[family], port) == (0, errno.ENETUNREACH)
    t.stop()
    [line] = t.rows
    assert line == with_outcome(row(w.pid, w.comm, family, ANY[family], NOWHERE[family], port,
                                    lport=0), "no-route", "%.2f" % latency_of(line), "no SYN sent")


def test_v4_mapped_destination_without_route_is_ipv4(trace, workload, lonely):
    w = workload(netns=lonely)
    port = free_port()
    t = trace("--outcome", "-P", str(port))
    assert w.connect(6, "::ffff:" + NOWHERE[4], port) == (0, errno.ENETUNREACH)
    t.stop()
    [line] = t.rows
    assert line == with_outcome(row(w.pid, w.comm, 4, ANY[4], NOWHERE[4], port), "no-route",
                                "%.2f" % latency_of(line), "no SYN sent")


def test_routes_that_refuse_in_json(trace, workload, lonely):
    # unreachable: EHOSTUNREACH; blackhole: EINVAL; prohibit: EACCES.
    for kind, prefix in (("unreachable", "198.51.100.0/26"), ("blackhole", "198.51.100.64/26"),
                         ("prohibit", "198.51.100.128/26")):
        sh("ip", "-n", lonely, "route", "add", kind, prefix)
    w = workload(netns=lonely)
    port = free_port()
    t = trace("--outcome", "-j", "-L", "-P", str(port))
    expected = [("198.51.100.1", errno.EHOSTUNREACH, "no-route"),
                ("198.51.100.65", errno.EINVAL, "no-route"),
                ("198.51.100.129", errno.EACCES, "denied"),
                (NOWHERE[4], errno.ENETUNREACH, "no-route")]
    for daddr, error, _ in expected:
        assert w.connect(4, daddr, port) == (0, error)
    t.stop()
    events = t.json_rows()
    assert [(e["daddr"], e["errno_code"], e["result"]) for e in events] == expected
    for event, (_, error, _) in zip(events, expected):
        assert (event["pid"], event["saddr"], event["lport"],
                event["errno"]) == (w.pid, ANY[4], 0, errno.errorcode[error])
        assert 0 <= event["latency_ms"] < 1000


@pytest.mark.parametrize("family", [4, 6])
def test_cgroup_program_refusal_is_denied(trace, workload, cgroups, tmp_path, family):
    denied = cgroups.make("denied")
    attach_connect_programs("deny", denied, tmp_path)
    w = workload()
    cgroups.move(w.pid, denied)
    port = free_port()
    t = trace("--outcome", "-P", str(port))
    loopback = "127.0.0.1" if family == 4 else "::1"
    assert w.connect(family, loopback, port) == (0, errno.EPERM)
    t.stop()
    [line] = t.rows
    assert line == with_outcome(row(w.pid, w.comm, family, ANY[family], loopback, port),
                                "denied", "%.2f" % latency_of(line), "no SYN sent")


# Three connects to one listener from a namespace with two ephemeral ports:
# the third finds none free (EADDRNOTAVAIL) once the kernel has moved its
# socket to SYN_SENT, and goes back to CLOSE without a port.
EXHAUST = """
import socket, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 5000))
listener.listen(8)
kept = []
for _ in range(3):
    s = socket.socket()
    kept.append(s)
    try:
        s.connect(("127.0.0.1", 5000))
        print(s.getsockname()[1], 0, flush=True)
    except OSError as exc:
        print(0, exc.errno, flush=True)
sys.stdin.read()
"""


def test_no_free_local_port(trace, lonely):
    sh("ip", "netns", "exec", lonely, "sysctl", "-qw",
       "net.ipv4.ip_local_port_range=40000 40001")
    t = trace("--outcome", "-L", "-P", "5000")
    proc = subprocess.Popen(["ip", "netns", "exec", lonely, sys.executable, "-c", EXHAUST],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        results = [tuple(map(int, proc.stdout.readline().split())) for _ in range(3)]
        comm = comm_of(proc.pid)
    finally:
        proc.communicate("", timeout=10)
    assert sorted(results[:2]) == [(40000, 0), (40001, 0)]
    assert results[2] == (0, errno.EADDRNOTAVAIL)
    t.stop()
    lines = t.rows
    assert len(lines) == 3
    expected = [(lport, "ok", "1 SYN") for lport, _ in results[:2]] + [
        (0, "no-local-port", "no SYN sent")]
    for line, (lport, result, cause) in zip(lines, expected):
        assert line == with_outcome(row(proc.pid, comm, 4, "127.0.0.1", "127.0.0.1", 5000,
                                        lport=lport), result, "%.2f" % latency_of(line), cause)


def test_filters_apply_before_syn_sent(trace, workload, lonely):
    other_ns = f"tcf{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", other_ns)
    try:
        a, b = workload(netns=lonely), workload(netns=lonely)
        elsewhere = workload(netns=other_ns)
        port, other = free_port(), free_port()
        t = trace("-p", str(a.pid), "-4", "-P", str(port), "--netns", f"/run/netns/{lonely}")
        a.connect(6, NOWHERE[6], port)       # -4
        a.connect(4, NOWHERE[4], other)      # -P
        b.connect(4, NOWHERE[4], port)       # -p
        a.connect(4, NOWHERE[4], port)       # the one row
        t2 = trace("--netns", f"/run/netns/{lonely}", "-P", str(port))
        elsewhere.connect(4, NOWHERE[4], port)  # --netns
        b.connect(4, NOWHERE[4], port)
        t.stop()
        t2.stop()
    finally:
        subprocess.run(["ip", "netns", "del", other_ns], capture_output=True)
    assert t.rows == [row(a.pid, a.comm, 4, ANY[4], NOWHERE[4], port)]
    assert t2.rows == [row(b.pid, b.comm, 4, ANY[4], NOWHERE[4], port)]


def test_counted_with_and_without_results(trace, workload, lonely):
    w = workload(netns=lonely)
    port = free_port()
    plain = trace("-c", "-P", str(port))
    results = trace("-c", "--outcome", "-P", str(port))
    failed = trace("--failed", "-P", str(port))
    for _ in range(2):
        assert w.connect(4, NOWHERE[4], port) == (0, errno.ENETUNREACH)
    for t in (plain, results, failed):
        t.stop()
    assert plain.rows[-1] == "%-25s %-25s %-20s %-10d" % (ANY[4], NOWHERE[4], port, 2)
    assert results.rows[-2:] == [COUNT_HEADER, count_row(ANY[4], NOWHERE[4], port, "no-route", 2)]
    assert [ROW_LAT.search(line).group(1) for line in failed.rows] == ["no-route", "no-route"]


# ---- tracefs ----------------------------------------------------------------

@pytest.mark.host_only
def test_tracefs_is_mounted_where_it_is_missing(tmp_path, monkeypatch):
    mountpoint = tmp_path / "tracing"
    mountpoint.mkdir()
    monkeypatch.setattr(tracefs, "DEBUGFS_TRACING", str(tmp_path / "no-debugfs"))
    monkeypatch.setattr(tracefs, "TRACEFS", str(mountpoint))
    try:
        assert tracefs.connect_tracepoints() is None
        assert (mountpoint / "events/syscalls/sys_exit_connect/id").exists()
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True)


@pytest.mark.host_only
def test_without_tracefs_the_reason_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr(tracefs, "DEBUGFS_TRACING", str(tmp_path / "no-debugfs"))
    monkeypatch.setattr(tracefs, "TRACEFS", str(tmp_path / "no-tracefs"))
    assert tracefs.connect_tracepoints() == (
        f"{tmp_path}/no-tracefs does not exist (kernel without tracefs)")


# The capabilities the deployments in deploy/ grant: no CAP_SYS_ADMIN.
LEAST_PRIVILEGE = ("setpriv", "--inh-caps=-all",
                   "--bounding-set=-all,+bpf,+perfmon,+sys_resource,+dac_read_search", "--")
UNTRACED = ("tcpconnect: connect() calls that fail before a SYN is sent (no route, refused by "
            "a cgroup BPF program or an LSM) are not traced: ")


def traced_with_warning(trace, prefix: tuple[str, ...]) -> str:
    """Runs the tool with `prefix`, checks that a connect is still traced,
    returns its stderr."""
    port = free_port()
    t = trace("-P", str(port), prefix=prefix)
    refused_connect(4, port)
    t.stop()
    assert len(t.rows) == 1
    return t.stderr


def test_a_run_that_cannot_mount_tracefs_says_so_and_traces(trace):
    # In a mount namespace where tracefs is not mounted, without
    # CAP_SYS_ADMIN to mount it: the tool warns once and traces the rest.
    hide = "umount -l /sys/kernel/tracing; umount -l /sys/kernel/debug 2>/dev/null; true"
    stderr = traced_with_warning(trace, ("unshare", "-m", "sh", "-c", hide + ' && exec "$@"',
                                         "sh", *LEAST_PRIVILEGE))
    assert stderr == UNTRACED + ("tracefs is not mounted at /sys/kernel/tracing and mounting it "
                                 "failed: Operation not permitted (in a container, mount the "
                                 "host's /sys/kernel/tracing)\n")


def test_perf_events_refused_without_cap_sys_admin_is_named(trace):
    # Debian's kernels refuse perf_event_open() without CAP_SYS_ADMIN at
    # kernel.perf_event_paranoid 3; CAP_BPF and CAP_PERFMON still trace the
    # rest.
    with perf_event_paranoid(3):
        stderr = traced_with_warning(trace, LEAST_PRIVILEGE)
    assert stderr == UNTRACED + ("kernel.perf_event_paranoid is 3, which refuses "
                                 "perf_event_open() without CAP_SYS_ADMIN (set it to 2 or less, "
                                 "or grant CAP_SYS_ADMIN)\n")
