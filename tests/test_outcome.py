"""--outcome, --failed and -T against the real kernel: outcomes produced on
purpose, exact rows; and the pure functions behind them."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import io
import ipaddress
import heapq
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

import pytest
from conftest import (
    ATTRIBUTION_FIELDS,
    HELPERS,
    attach_connect_programs,
    cgroup_path_of,
    comm_of,
    free_port,
    impatient_socket,
    ip_batch,
    kernel_release,
    listening,
    nft,
    refused_connect,
    row,
    run_tool,
)

from test_trace import LISTENER

from tcpconnect import cause, session
from tcpconnect.cause import DropReasons, cause_text
from tcpconnect.cli import parse_args
from tcpconnect.libbpf import enum_values
from tcpconnect.events import (ERROR, LPORT, OUTCOME, OUTCOME_END_UNSEEN, OUTCOME_NO_SYN,
                               CountKey)
from tcpconnect.records import EventRecord, decoded
from tcpconnect.outcome import (
    TCP_CLOSE,
    TCP_ESTABLISHED,
    TCP_SYN_SENT,
    UNTRACKED,
    JsonFields,
    TextColumns,
    counts_with_pending,
    result_name,
)
from tcpconnect.plan import TracerConfig
from tcpconnect.tracer import Tracer
from tcpconnect.output import count_header, count_rows

ME = os.getpid()
# RESULT then LAT(ms) (CAUSE, which follows, has spaces of its own).
ROW_LAT = re.compile(r" (ok|refused|timeout|unreachable|reset|aborted|no-route|denied|"
                     r"no-local-port|pending|unknown|E[A-Z0-9]+|errno-\d+) +(\S+) ")


def my_comm() -> str:
    return comm_of(ME)


def with_outcome(base: str, result: str, lat: str, cause: str) -> str:
    """A row as bcc's layout gives it (conftest.row) with RESULT, LAT(ms) and
    CAUSE after DPORT, each followed by a space as DPORT is."""
    return base + "%-13s %-8s %-24s " % (result, lat, cause)


def latency_of(line: str) -> float:
    """The LAT(ms) of a row, checked to be a number with two decimals."""
    lat = ROW_LAT.search(line).group(2)  # type: ignore[union-attr]
    assert re.fullmatch(r"\d+\.\d\d", lat), line
    return float(lat)


def filter_input(netns: str, port: int, verdict: str) -> None:
    """What the test namespace does with packets to `port` it receives."""
    nft(netns, "add table inet t",
        "add chain inet t in { type filter hook input priority 0; }",
        f"add rule inet t in tcp dport {port} {verdict}")


def peer_of(veth, family: int) -> tuple[str, str]:
    return (veth.host4, veth.peer4) if family == 4 else (veth.host6, veth.peer6)


def failing_connect(family: int, peer: str, port: int, expected: int) -> int:
    """A blocking connect that must fail with errno `expected`; returns its
    local port. One retransmission at most, then it gives up (~1 s)."""
    with impatient_socket(family) as client:
        with pytest.raises(OSError) as failure:
            client.connect((peer, port))
        assert failure.value.errno == expected
        return client.getsockname()[1]


# ---- pure functions -------------------------------------------------------

@pytest.mark.parametrize("outcome,error,result", [
    (TCP_ESTABLISHED, 0, "ok"),
    (TCP_CLOSE, errno.ECONNREFUSED, "refused"),
    (TCP_CLOSE, errno.ETIMEDOUT, "timeout"),
    (TCP_CLOSE, errno.EHOSTUNREACH, "unreachable"),
    (TCP_CLOSE, errno.ENETUNREACH, "unreachable"),
    (TCP_CLOSE, errno.ECONNRESET, "reset"),
    (TCP_CLOSE, 0, "aborted"),
    (TCP_CLOSE, errno.EACCES, "unreachable"),  # ICMPv6 administratively prohibited
    (TCP_CLOSE, errno.EADDRNOTAVAIL, "no-local-port"),
    (OUTCOME_NO_SYN, errno.ENETUNREACH, "no-route"),
    (OUTCOME_NO_SYN, errno.EHOSTUNREACH, "no-route"),
    (OUTCOME_NO_SYN, errno.EINVAL, "no-route"),
    (OUTCOME_NO_SYN, errno.EACCES, "denied"),
    (OUTCOME_NO_SYN, errno.EPERM, "denied"),
    (OUTCOME_NO_SYN, errno.EADDRNOTAVAIL, "no-local-port"),
    (OUTCOME_NO_SYN, errno.ENOBUFS, "ENOBUFS"),
    (TCP_CLOSE, errno.EHOSTDOWN, "EHOSTDOWN"),
    (TCP_CLOSE, 4000, "errno-4000"),
    (TCP_SYN_SENT, 0, "pending"),
    (UNTRACKED, 0, "unknown"),
])
@pytest.mark.host_only
def test_result_names(outcome, error, result):
    assert result_name(outcome, error) == result


@pytest.mark.parametrize("outcome,error,retries,drops,reason,cause", [
    (TCP_ESTABLISHED, 0, 0, 0, 0, "1 SYN"),
    (TCP_ESTABLISHED, 0, 2, 0, 0, "3 SYNs"),
    (TCP_CLOSE, errno.ECONNREFUSED, 0, 0, 0, "RST after 1 SYN"),
    (TCP_CLOSE, errno.ETIMEDOUT, 6, 0, 0, "no answer to 7 SYNs"),
    (TCP_CLOSE, errno.EHOSTUNREACH, 1, 0, 0, "ICMP error after 2 SYNs"),
    (TCP_CLOSE, errno.EACCES, 0, 0, 0, "ICMP error after 1 SYN"),
    (TCP_CLOSE, 0, 0, 0, 0, "closed after 1 SYN"),
    (TCP_CLOSE, errno.EPROTO, 0, 0, 0, "EPROTO after 1 SYN"),
    (TCP_CLOSE, 4000, 0, 0, 0, "errno-4000 after 1 SYN"),
    (OUTCOME_NO_SYN, errno.ENOBUFS, 0, 0, 0, "no SYN sent"),
    (TCP_CLOSE, errno.EADDRNOTAVAIL, 0, 0, 0, "no SYN sent"),
    (OUTCOME_NO_SYN, errno.ENETUNREACH, 0, 0, 0, "no SYN sent"),
])
@pytest.mark.host_only
def test_cause_texts(outcome, error, retries, drops, reason, cause):
    event = decoded(EventRecord(ts_ns=0, cgroup_id=0, mntns_id=0, latency_ns=0, saddr=bytes(16),
                                daddr=bytes(16), pid=1, tid=1, uid=0, netns=0, lport=0, dport=1,
                                family=4, outcome=outcome, error=error, syn_retries=retries,
                                drops=drops, drop_reason=reason, comm=bytes(16)))
    assert cause_text(event, result_name(outcome, error)) == cause


def attempt_record(outcome: int, error: int, latency_ns: int) -> tuple:
    """The decoded record of an attempt to port 1 in this state, with this
    error and latency."""
    return decoded(EventRecord(ts_ns=0, cgroup_id=0, mntns_id=0, latency_ns=latency_ns,
                               saddr=bytes(16), daddr=bytes(16), pid=1, tid=1, uid=0, netns=0,
                               lport=0, dport=1, family=4, outcome=outcome, error=error,
                               comm=bytes(16)))


@pytest.mark.host_only
def test_text_columns_keep_each_rows_own_latency():
    # RESULT and CAUSE are kept per combination of the fields they come
    # from; LAT(ms) by the 10 us, rounded half up. Two attempts that share
    # the first still show their own latencies, and a pending one none.
    columns = TextColumns()
    refused = "refused       %-8s RST after 1 SYN          "
    assert [columns(attempt_record(TCP_CLOSE, errno.ECONNREFUSED, ns)) for ns in (
        149_999, 4_999, 5_000, 1_234_567_890, 0)] == [
        refused % "0.15", refused % "0.00", refused % "0.01", refused % "1234.57",
        refused % "0.00"]
    assert columns(attempt_record(TCP_SYN_SENT, 0, 5_000_000)) == (
        "pending       -        -" + " " * 24)
    assert columns(attempt_record(TCP_ESTABLISHED, 0, 99_999_999)) == (
        "ok            100.00   1 SYN                    ")


@pytest.mark.host_only
def test_json_fields_keep_each_rows_own_latency():
    # As the text columns: all but latency_ms kept per combination of the
    # fields they come from; latency_ms to the microsecond, half up, as
    # json.dumps writes it.
    def parsed(fields: str) -> dict:
        return json.loads("{" + fields[2:] + "}")

    fields = JsonFields()
    rows = [fields(attempt_record(TCP_CLOSE, errno.ECONNREFUSED, ns)) for ns in (
        1_234_499, 1_234_500, 310_000, 1_000_000_000, 0)]
    assert [re.search(r'"latency_ms": ([^,]*),', row).group(1) for row in rows] == [
        "1.234", "1.235", "0.31", "1000.0", "0.0"]
    assert parsed(rows[0]) == {
        "result": "refused", "errno": "ECONNREFUSED", "errno_code": errno.ECONNREFUSED,
        "latency_ms": 1.234, "syn_retries": 0, "drop_reason": None, "icmp_type": None,
        "icmp_code": None, "icmp_from": None, "rst_from": None, "answer_ttl": None,
        "cause": "RST after 1 SYN"}
    assert parsed(fields(attempt_record(TCP_SYN_SENT, 0, 5_000_000))) == {
        "result": "pending", "errno": None, "errno_code": None, "latency_ms": None,
        "syn_retries": None, "drop_reason": None, "icmp_type": None, "icmp_code": None,
        "icmp_from": None, "rst_from": None, "answer_ttl": None, "cause": None}
    unseen = parsed(fields(attempt_record(OUTCOME_END_UNSEEN, 0, 5_000_000)))
    assert (unseen["result"], unseen["latency_ms"], unseen["cause"]) == (
        "unknown", None, "end unseen: run skipped")
    assert parsed(fields(attempt_record(TCP_ESTABLISHED, 0, 99_999_999)))["latency_ms"] == 100.0


@pytest.mark.host_only
def test_cause_of_syns_dropped_here(monkeypatch, tmp_path):
    names = enum_values(cause.drop_reasons.btf_path, "skb_drop_reason")
    [number] = [n for n, v in names.items() if v == "SKB_DROP_REASON_NETFILTER_DROP"]
    event = decoded(EventRecord(ts_ns=0, cgroup_id=0, mntns_id=0, latency_ns=0, saddr=bytes(16),
                                daddr=bytes(16), pid=1, tid=1, uid=0, netns=0, lport=0, dport=1,
                                family=4, outcome=TCP_CLOSE, error=errno.ETIMEDOUT,
                                syn_retries=1, drops=3, drop_reason=number, comm=bytes(16)))
    assert cause_text(event, "timeout") == "3 SYNs dropped here: NETFILTER_DROP"
    # A kernel without drop reasons.
    monkeypatch.setattr(cause, "drop_reasons", DropReasons())
    cause.drop_reasons.btf_path = str(tmp_path / "missing")
    assert cause_text(event, "timeout") == "3 SYNs dropped here"


@pytest.mark.host_only
def test_drop_reasons_are_named_from_the_kernels_btf(tmp_path):
    reasons = DropReasons()
    names = enum_values(reasons.btf_path, "skb_drop_reason")
    [(number, name)] = [(n, v) for n, v in names.items() if v == "SKB_DROP_REASON_NOT_SPECIFIED"]
    assert reasons.name(number) == "NOT_SPECIFIED"
    assert reasons.name(max(names) + 1) == f"reason {max(names) + 1}"
    # A kernel without drop reasons (or whose BTF cannot be read): none.
    unreadable = DropReasons()
    unreadable.btf_path = str(tmp_path / "missing")
    assert unreadable.name(number) is None


@pytest.mark.host_only
def test_count_table_with_results_and_pending_attempts():
    def key(dport: int, outcome: int, error: int = 0) -> CountKey:
        k = CountKey(dport=dport, family=4, outcome=outcome, error=error)
        k.saddr[:4] = k.daddr[:4] = [127, 0, 0, 1]
        return k

    kernel_counts = [(key(80, TCP_ESTABLISHED), 5), (key(81, TCP_CLOSE, errno.ECONNREFUSED), 2),
                     (key(82, TCP_SYN_SENT), 1)]
    still_open = [decoded(EventRecord(ts_ns=0, cgroup_id=0, mntns_id=0, latency_ns=0,
                                      saddr=bytes(key(0, 0).saddr), daddr=bytes(key(0, 0).daddr),
                                      pid=1, tid=1, uid=0, netns=0, lport=0, dport=port, family=4,
                                      outcome=TCP_SYN_SENT, error=0, syn_retries=0, drops=0,
                                      drop_reason=0, comm=b"x".ljust(16, b"\0")))
                  for port in (82, 83, 83)]
    assert [count_header(True), *count_rows(counts_with_pending(kernel_counts, still_open),
                                            results=True)] == [
        "LADDR                     RADDR                     RPORT                RESULT        "
        "CONNECTS  ",
        "127.0.0.1                 127.0.0.1                 80                   ok            "
        "5         ",
        "127.0.0.1                 127.0.0.1                 81                   refused       "
        "2         ",
        "127.0.0.1                 127.0.0.1                 82                   pending       "
        "2         ",
        "127.0.0.1                 127.0.0.1                 83                   pending       "
        "2         ",
    ]


@pytest.mark.host_only
def test_failed_implies_outcome():
    assert parse_args(["--failed"]).outcome is True
    assert parse_args(["-c", "--failed"]).outcome is True
    assert parse_args([]).outcome is False


@pytest.mark.host_only
def test_time_column_cannot_go_with_count():
    done = run_tool("-c", "-T")
    assert done.returncode == 2
    assert done.stderr == ("tcpconnect: error: -T/--time cannot be used with -c/--count "
                           "(the table has no rows per connect)\n")


# ---- outcomes on the real kernel ------------------------------------------

@pytest.mark.parametrize("family,addr", [(4, "127.0.0.1"), (6, "::1")])
def test_ok_and_refused_rows(trace, family, addr):
    refused = free_port()
    with listening(addr) as listener:
        port = listener.getsockname()[1]
        t = trace("--outcome", "-L", "-P", f"{port},{refused}")
        assert t.header == ("PID     COMM         IP SADDR            LPORT  DADDR"
                            "            DPORT  RESULT        LAT(ms)  CAUSE" + " " * 19)
        with socket.create_connection((addr, port)) as client:
            lport = client.getsockname()[1]
        refused_lport = refused_connect(family, refused)
        t.stop()
    ok, no = t.rows
    for line in (ok, no):
        assert latency_of(line) < 1000  # loopback: well under a second
    assert ok == with_outcome(row(ME, my_comm(), family, addr, addr, port, lport=lport),
                              "ok", "%.2f" % latency_of(ok), "1 SYN")
    assert no == with_outcome(
        row(ME, my_comm(), family, addr, addr, refused, lport=refused_lport),
        "refused", "%.2f" % latency_of(no), "RST from destination")
    assert t.stderr == ""


@pytest.mark.parametrize("family", [4, 6])
def test_syn_dropped_times_out(trace, veth, family):
    host, peer = peer_of(veth, family)
    port = free_port()
    filter_input(veth.netns, port, "drop")
    t = trace("--outcome", "-L", "-P", str(port))
    lport = failing_connect(family, peer, port, errno.ETIMEDOUT)
    t.stop()
    [line] = t.rows
    # The SYN and one retransmission, 1 s apart, then TCP_USER_TIMEOUT.
    assert 900 <= latency_of(line) < 10_000
    assert line == with_outcome(row(ME, my_comm(), family, host, peer, port, lport=lport),
                                "timeout", "%.2f" % latency_of(line), "no answer to 2 SYNs")


# A client in the test's namespace whose SYNs that namespace's own firewall
# drops: the kernel tries again every 500 ms while sending fails, then gives
# up after TCP_SYNCNT's retransmissions (~3 s).
LOCALLY_DROPPED = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.IPPROTO_TCP, 7, 1)  # TCP_SYNCNT
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as exc:
    print(exc.errno)
"""


@pytest.mark.parametrize("family", [4, 6])
def test_syn_dropped_on_this_host_names_the_reason(trace, veth, family):
    host, _ = peer_of(veth, family)
    port = free_port()
    nft(veth.netns, "add table inet t",
        "add chain inet t out { type filter hook output priority 0; }",
        f"add rule inet t out tcp dport {port} counter drop")
    t = trace("--outcome", "-j", "-P", str(port))
    client = veth.run(sys.executable, "-c", LOCALLY_DROPPED, host, str(port),
                      stdout=subprocess.PIPE, text=True)
    assert client.communicate(timeout=30)[0].strip() == str(errno.ETIMEDOUT)
    t.stop()
    listed = subprocess.run(["ip", "netns", "exec", veth.netns, "nft", "list", "table", "inet",
                             "t"], capture_output=True, text=True, check=True).stdout
    dropped = int(re.search(r"counter packets (\d+)", listed)[1])  # type: ignore[index]
    [event] = t.json_rows()
    # Named from the running kernel's own enum; kernels before 5.17 give no reason.
    reason = ("NETFILTER_DROP" if "SKB_DROP_REASON_NETFILTER_DROP" in
              enum_values("/sys/kernel/btf/vmlinux", "skb_drop_reason").values() else None)
    assert dropped >= 2
    # A drop's note is one run of handle_drop: a run the kernel skips (the program already
    # running on that CPU, for another packet) misses it, and is reported in-band as a loss
    # record instead. Twice in CI and once in ~56 runs here (2026-12-07) the row counted 2
    # where nft had dropped 3, cause not found (with TCP_SYNCNT 2, three SYNs, every run
    # counted all three); the loss records are in the message to tell whether a skipped
    # run accounts for it. Again in the fresh-clone CI's raw_tp pass (2026-12-07, evening):
    # nft had dropped 3 SYNs (TCP_SYNCNT 1 asks for 2; a third, most likely, when the timer
    # runs just before the time-based timeout),
    # the row noted 2, no run skipped; the whole row now goes into the message.
    skipped = sum(record.get("skipped_runs", 0) for record in t.loss_records())
    noted = int(event["cause"].split()[0])  # "N SYNs dropped here: ..."
    assert dropped - skipped <= noted <= dropped, (json.dumps(event), t.loss_records(),
                                                   t.stderr)
    assert (event["result"], event["drop_reason"], event["cause"]) == (
        "timeout", reason or "unknown",
        f"{noted} SYNs dropped here" + (f": {reason}" if reason else ""))


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_unreachable_while_in_syn_sent(trace, veth, family):
    # The peer answers the SYN with ICMP host unreachable (ICMPv6 address
    # unreachable): the connect fails with EHOSTUNREACH in SYN_SENT. The
    # answer to the first SYN comes back while connect() still holds the
    # socket, and the kernel keeps it as a soft error; the one to the
    # retransmission, a second later, ends the attempt.
    host, peer = peer_of(veth, family)
    port = free_port()
    filter_input(veth.netns, port, "reject with icmpx type host-unreachable")
    t = trace("--outcome", "-P", str(port))
    failing_connect(family, peer, port, errno.EHOSTUNREACH)
    t.stop()
    [line] = t.rows
    assert latency_of(line) < 5000
    assert line == with_outcome(row(ME, my_comm(), family, host, peer, port),
                                "unreachable", "%.2f" % latency_of(line),
                                f"ICMP host-unreachable from {peer}" if family == 4
                                else f"ICMPv6 addr-unreachable from {peer}")


def test_an_end_the_kernel_skipped_is_reported_when_the_socket_goes(veth):
    # The kernel skips a program run nested in another on one CPU (it only
    # counts it). Here the run that would see the attempt end is taken away
    # by detaching that program once the attempt is parked; the socket's
    # destruction (tcp:tcp_destroy_sock) still reports the attempt, as one
    # whose end went unseen, not as pending.
    port = free_port()
    filter_input(veth.netns, port, "drop")
    with Tracer(TracerConfig(outcome=True, ports=(port,))) as tracer:
        with socket.socket() as client:
            client.setblocking(False)
            client.connect_ex((veth.peer4, port))
            [set_state] = [i for i, name in enumerate(tracer.programs)
                           if name.startswith("handle_set_state")]
            tracer._links.pop(set_state).close()
        events: list[tuple] = []
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            events = tracer.poll(100).events
        # Nothing left parked for the exit's sweep.
        tracer.stop()
        assert tracer.take_pending() == []
    [event] = events
    assert (event[OUTCOME], event[ERROR]) == (OUTCOME_END_UNSEEN, 0)
    assert TextColumns()(event) == "%-13s %-8s %-24s " % ("unknown", "-", "end unseen: run skipped")


def test_an_end_unseen_is_reported_when_the_socket_connects_again(veth):
    # The run that would see an attempt end is taken away (handle_set_state
    # detached while the socket disconnects), then the socket connects
    # again with the program back: the first attempt is reported as one
    # whose end went unseen, not written over by the second, which waits.
    port = free_port()
    filter_input(veth.netns, port, "drop")
    unspec = (ctypes.c_uint8 * 16)()
    libc = ctypes.CDLL(None, use_errno=True)
    with Tracer(TracerConfig(outcome=True, ports=(port,))) as tracer:
        [(index, name)] = [(i, name) for i, name in enumerate(tracer.programs)
                           if name.startswith("handle_set_state")]
        with socket.socket() as client:
            client.setblocking(False)
            assert client.connect_ex((veth.peer4, port)) == errno.EINPROGRESS
            tracer._links.pop(index).close()
            # connect() to AF_UNSPEC: SYN_SENT -> CLOSE, unseen.
            assert libc.connect(client.fileno(), unspec, len(unspec)) == 0
            tracer._links.insert(index, tracer._obj.program(name).attach())  # type: ignore
            assert client.connect_ex((veth.peer4, port)) == errno.EINPROGRESS
            events: list[tuple] = []
            deadline = time.monotonic() + 5
            while not events and time.monotonic() < deadline:
                events = tracer.poll(100).events
            tracer.stop()
            waiting = tracer.take_pending()
    assert [event[OUTCOME] for event in events] == [OUTCOME_END_UNSEEN]
    assert [event[OUTCOME] for event in waiting] == [TCP_SYN_SENT]


@pytest.mark.host_only
def test_an_end_unseen_keeps_the_sockets_error():
    assert result_name(OUTCOME_END_UNSEEN, errno.ECONNREFUSED) == "refused"
    assert result_name(OUTCOME_END_UNSEEN, errno.EPROTO) == "EPROTO"


def test_close_before_the_handshake_is_aborted(trace, veth):
    port = free_port()
    filter_input(veth.netns, port, "drop")
    t = trace("--outcome", "-j", "-P", str(port))
    with socket.socket() as client:
        client.setblocking(False)
        assert client.connect_ex((veth.peer4, port)) == errno.EINPROGRESS
        lport = client.getsockname()[1]
    t.stop()
    [event] = t.json_rows()
    assert (event["result"], event["errno"], event["errno_code"]) == ("aborted", None, 0)
    assert 0 <= event["latency_ms"] < 1000
    assert (event["saddr"], event["daddr"], event["dport"]) == (veth.host4, veth.peer4, port)
    assert lport > 0


@pytest.mark.parametrize("family", [4, 6])
def test_attempt_open_when_tracing_stops_is_pending(trace, veth, family):
    host, peer = peer_of(veth, family)
    port, refused = free_port(), free_port()
    filter_input(veth.netns, port, "drop")
    t = trace("--outcome", "-P", f"{port},{refused}")
    with socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6) as client:
        client.setblocking(False)
        assert client.connect_ex((peer, port)) == errno.EINPROGRESS
        refused_connect(family, refused)
        t.stop()
    addr = "127.0.0.1" if family == 4 else "::1"
    refused_row, pending_row = t.rows
    assert refused_row == with_outcome(row(ME, my_comm(), family, addr, addr, refused),
                                       "refused", "%.2f" % latency_of(refused_row),
                                       "RST from destination")
    # Printed at the end, without a latency: it had not ended.
    assert pending_row == with_outcome(row(ME, my_comm(), family, host, peer, port),
                                       "pending", "-", "-")


def test_failed_hides_successful_connects(trace):
    refused = free_port()
    with listening("127.0.0.1") as listener:
        port = listener.getsockname()[1]
        t = trace("--failed", "-P", f"{port},{refused}")
        assert t.header.endswith("DPORT  RESULT        LAT(ms)  CAUSE" + " " * 19)
        socket.create_connection(("127.0.0.1", port)).close()
        refused_connect(4, refused)
        socket.create_connection(("127.0.0.1", port)).close()
        t.stop()
    [line] = t.rows
    assert line == with_outcome(row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", refused),
                                "refused", "%.2f" % latency_of(line), "RST from destination")


COUNT_HEADER = "%-25s %-25s %-20s %-13s %-10s" % ("LADDR", "RADDR", "RPORT", "RESULT",
                                                  "CONNECTS")


def count_row(saddr: str, daddr: str, port: int, result: str, connects: int) -> str:
    return "%-25s %-25s %-20s %-13s %-10d" % (saddr, daddr, port, result, connects)


@pytest.mark.parametrize("failed", [False, True])
def test_count_per_result(trace, veth, failed):
    refused, dropped = free_port(), free_port()
    filter_input(veth.netns, dropped, "drop")
    with listening("127.0.0.1") as listener:
        port = listener.getsockname()[1]
        t = trace("-c", "--failed" if failed else "--outcome", "-P",
                  f"{port},{refused},{dropped}")
        for _ in range(3):
            socket.create_connection(("127.0.0.1", port)).close()
        for _ in range(2):
            refused_connect(4, refused)
        refused_connect(6, refused)
        with socket.socket() as client:
            client.setblocking(False)
            client.connect_ex((veth.peer4, dropped))
            t.stop()
    lines = t.stdout.splitlines()
    expected = [
        "", COUNT_HEADER,
        *([] if failed else [count_row("127.0.0.1", "127.0.0.1", port, "ok", 3)]),
        count_row("127.0.0.1", "127.0.0.1", refused, "refused", 2),
        count_row(veth.host4, veth.peer4, dropped, "pending", 1),
        count_row("::1", "::1", refused, "refused", 1),
    ]
    assert lines == expected
    assert t.stderr == ""


@pytest.mark.user_space
def test_json_fields(trace, veth):
    refused = free_port()
    unreachable = free_port()
    filter_input(veth.netns, unreachable, "reject with icmpx type host-unreachable")
    with listening("::1") as listener:
        port = listener.getsockname()[1]
        t = trace("--outcome", "-j", "-L", "-P", f"{port},{refused},{unreachable}")
        before = time.time()
        with socket.create_connection(("::1", port)) as client:
            lport = client.getsockname()[1]
        refused_connect(4, refused)
        failing_connect(6, veth.peer6, unreachable, errno.EHOSTUNREACH)
        after = time.time()
        t.stop()
    ok, no, unreach = t.json_rows()
    # Only runs of the programs the kernel skipped (for other traffic of the
    # machine) may be reported beside them: three connects fill no ring.
    assert all(set(r) == {"type", "timestamp", "skipped_runs"} for r in t.loss_records())
    for event in (ok, no, unreach):
        stamp = event.pop("timestamp")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert when.tzinfo == timezone.utc
        assert before - 1 <= when.timestamp() <= after + 1
        assert 0 <= event.pop("latency_ms") < 5000
        assert event.pop("cgroup_id") > 0 and event.pop("mntns_id") > 0
        # The attribution fields are checked in test_attribution.py.
        assert event.pop("netns") == os.stat("/proc/self/ns/net").st_ino
        assert {name: event.pop(name) for name in ATTRIBUTION_FIELDS}["cgroup"] == cgroup_path_of(ME)
    common = {"uid": 0, "pid": ME, "tid": ME, "comm": my_comm(), "ppid": os.getppid(),
              "pcomm": comm_of(os.getppid()), "ns_pid": ME, "ns_tid": ME,
              "exe": os.path.realpath(sys.executable)}
    assert ok == {**common, "ip": 6, "saddr": "::1", "lport": lport, "daddr": "::1",
                  "dport": port, "result": "ok", "errno": None, "errno_code": 0,
                  "syn_retries": 0, "drop_reason": None, "icmp_type": None, "icmp_code": None,
                  "icmp_from": None, "rst_from": None, "answer_ttl": None, "cause": "1 SYN"}
    assert (no["result"], no["errno"], no["errno_code"], no["syn_retries"], no["drop_reason"],
            no["cause"]) == ("refused", "ECONNREFUSED", errno.ECONNREFUSED, 0, None,
                             "RST from destination")
    assert (unreach["syn_retries"], unreach["cause"]) == (
        1, f"ICMPv6 addr-unreachable from {veth.peer6}")
    assert (unreach["result"], unreach["errno"], unreach["errno_code"]) == (
        "unreachable", "EHOSTUNREACH", errno.EHOSTUNREACH)
    assert (unreach["saddr"], unreach["daddr"]) == (veth.host6, veth.peer6)


@pytest.mark.user_space
def test_json_pending_has_null_errno_and_latency(trace, veth):
    port = free_port()
    filter_input(veth.netns, port, "drop")
    t = trace("--failed", "-j", "-P", str(port))
    with socket.socket() as client:
        client.setblocking(False)
        client.connect_ex((veth.peer4, port))
        t.stop()
    [event] = t.json_rows()
    assert (event["result"], event["errno"], event["errno_code"], event["latency_ms"]) == (
        "pending", None, None, None)


@pytest.mark.user_space
def test_json_timestamp_without_outcome(trace):
    port = free_port()
    t = trace("-j", "-P", str(port))
    before = time.time()
    refused_connect(4, port)
    t.stop()
    [event] = t.json_rows()
    when = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert before - 1 <= when.timestamp() <= time.time() + 1
    assert "result" not in event


def seconds_of_day(hms: str) -> int:
    h, m, s = map(int, hms.split(":"))
    return h * 3600 + m * 60 + s


@pytest.mark.parametrize("extra", [(), ("--outcome", "-t", "-U")])
@pytest.mark.user_space
def test_time_of_day_column(trace, extra):
    port = free_port()
    t = trace("-T", *extra, "-P", str(port))
    assert t.header.startswith("TIME     " + ("TIME(s)  UID   " if extra else "") + "PID ")
    before = time.time()
    refused_connect(4, port)
    after = time.time()
    t.stop()
    [line] = t.rows
    stamp, rest = line[:9], line[9:]
    assert re.fullmatch(r"\d\d:\d\d:\d\d ", stamp)
    shown = seconds_of_day(stamp.strip())
    local = [seconds_of_day(time.strftime("%H:%M:%S", time.localtime(x)))
             for x in (before - 1, after + 1)]
    # Within the test's own clock, allowing for a wrap at midnight.
    assert local[0] <= shown <= local[1] or (local[0] > local[1] and
                                               (shown >= local[0] or shown <= local[1]))
    if not extra:
        assert rest == row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", port)
    else:
        # TIME(s) counts from the start of tracing with --outcome.
        assert re.fullmatch(r"\d+\.\d{3} +", rest[:9]) and float(rest[:9]) < 60
        assert rest[9:] == with_outcome(
            row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", port, uid=0),
            "refused", "%.2f" % latency_of(rest), "RST from destination")


# ---- latency against a delay the test controls ----------------------------

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


@dataclass
class DelayWire:
    """A test namespace reached through two tun devices with this process in
    between, holding every packet towards the namespace for `delay` seconds
    (the kernel here has no netem). Replies pass at once."""

    netns: str
    host4: str
    peer4: str
    host6: str
    peer6: str
    delay: float


DELAY = 0.2


@pytest.fixture
def delay_wire() -> Iterator[DelayWire]:
    tag = uuid.uuid4().hex[:6]
    netns, host_if, peer_if = f"tcw{tag}", f"twh{tag}", f"twp{tag}"
    block = int(tag, 16) % 16384
    net4, first = f"10.214.{block // 64}", block % 64 * 4
    wire = DelayWire(netns, f"{net4}.{first + 1}", f"{net4}.{first + 2}",
                     # Normalised: a tag such as "0646ab" would otherwise keep its
                     # leading zero, which the tool (inet_ntop) does not print.
                     str(ipaddress.IPv6Address(f"fd00:214:{tag[:4]}:{tag[4:]}::1")),
                     str(ipaddress.IPv6Address(f"fd00:214:{tag[:4]}:{tag[4:]}::2")),
                     DELAY)
    host_fd = peer_fd = -1
    stop = threading.Event()
    forwarder = None
    try:
        ip_batch(f"netns add {netns}")
        host_fd, peer_fd = open_tun(host_if), open_tun(peer_if)
        # IPv6 addresses once the link is up: added to the tun device while
        # it was down, the peer stayed unreachable (no route to host).
        ip_batch(f"link set {peer_if} netns {netns}",
                 f"addr add {wire.host4} peer {wire.peer4} dev {host_if}",
                 f"link set {host_if} up",
                 f"addr add {wire.host6} peer {wire.peer6} dev {host_if} nodad")
        ip_batch(f"addr add {wire.peer4} peer {wire.host4} dev {peer_if}",
                 f"link set {peer_if} up", "link set lo up",
                 f"addr add {wire.peer6} peer {wire.host6} dev {peer_if} nodad", netns=netns)
        forwarder = threading.Thread(target=_forward, args=(host_fd, peer_fd, DELAY, stop),
                                     daemon=True)
        forwarder.start()
        yield wire
    finally:
        stop.set()
        if forwarder is not None:
            forwarder.join(timeout=5)
        for fd in (host_fd, peer_fd):
            if fd >= 0:
                os.close(fd)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def _forward(host_fd: int, peer_fd: int, delay: float, stop: threading.Event) -> None:
    held: list[tuple[float, int, bytes]] = []  # (due, sequence, packet)
    sequence = 0
    while not stop.is_set():
        timeout = 0.05 if not held else max(0.0, min(0.05, held[0][0] - time.monotonic()))
        ready, _, _ = select.select([host_fd, peer_fd], [], [], timeout)
        if host_fd in ready:
            heapq.heappush(held, (time.monotonic() + delay, sequence, os.read(host_fd, 65536)))
            sequence += 1
        if peer_fd in ready:
            os.write(host_fd, os.read(peer_fd, 65536))
        while held and held[0][0] <= time.monotonic():
            os.write(peer_fd, heapq.heappop(held)[2])


@pytest.mark.parametrize("family", [4, 6])
def test_latency_follows_the_delay(trace, delay_wire, family):
    wire = delay_wire
    host, peer = (wire.host4, wire.peer4) if family == 4 else (wire.host6, wire.peer6)
    server = subprocess.Popen(["ip", "netns", "exec", wire.netns, sys.executable, "-c",
                               LISTENER, peer], stdout=subprocess.PIPE, text=True)
    refused = free_port()
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        t = trace("--outcome", "-L", "-P", f"{port},{refused}")
        with socket.create_connection((peer, port), timeout=10) as client:
            lport = client.getsockname()[1]
        with socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6) as client:
            client.settimeout(10)
            with pytest.raises(ConnectionRefusedError):
                client.connect((peer, refused))
            refused_lport = client.getsockname()[1]
        t.stop()
    finally:
        server.kill()
        server.wait()
    ok, no = t.rows
    for line in (ok, no):
        # One round trip through the wire: the delay, plus a generous margin
        # for a loaded machine or an emulated one.
        assert DELAY * 1000 <= latency_of(line) < DELAY * 1000 + 800, line
    assert ok == with_outcome(row(ME, my_comm(), family, host, peer, port, lport=lport),
                              "ok", "%.2f" % latency_of(ok), "1 SYN")
    assert no == with_outcome(row(ME, my_comm(), family, host, peer, refused,
                                  lport=refused_lport),
                              "refused", "%.2f" % latency_of(no), "RST from destination")


# How long tests/helpers/slow_connect.bpf.c holds each connect() call.
HOLD_MS = 20


@pytest.mark.parametrize("family", [4, 6])
def test_latency_starts_at_the_connect_call(trace, workload, cgroups, tmp_path, family):
    # LAT(ms) spans the whole connect() call, not only the SYN's wait: a
    # cgroup program holding the call before its socket reaches SYN_SENT
    # (a slow policy agent) is inside it. Timed from the SYN, the refused
    # loopback attempt would take a few dozen microseconds.
    if "BPF_FUNC_loop" not in enum_values("/sys/kernel/btf/vmlinux", "bpf_func_id").values():
        pytest.skip("no bpf_loop (Linux 5.17) for a cgroup program to hold connect() with")
    slow = cgroups.make("slow")
    attach_connect_programs("slow", slow, tmp_path)
    w = workload()
    cgroups.move(w.pid, slow)
    port = free_port()
    t = trace("--outcome", "-j", "-P", str(port))
    started = time.monotonic()
    _, error = w.connect(family, "127.0.0.1" if family == 4 else "::1", port)
    took_ms = (time.monotonic() - started) * 1000
    t.stop()
    assert error == errno.ECONNREFUSED
    [event] = t.json_rows()
    assert HOLD_MS <= event["latency_ms"] <= took_ms, (event["latency_ms"], took_ms)


@pytest.mark.user_space
def test_json_lines_are_valid_json(trace):
    port = free_port()
    t = trace("--outcome", "-j", "-t", "-P", str(port))
    refused_connect(4, port)
    t.stop()
    # Loss records included (a skipped program run for other traffic).
    for line in t.rows:
        assert line == json.dumps(json.loads(line), ensure_ascii=True)
    assert len(t.json_rows()) == 1


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_unreachable_after_a_delay(trace, delay_wire, family):
    # Arriving after connect() has let go of the socket, the ICMP error ends
    # the attempt at once (tcp_done_with_error), one delayed round trip in.
    wire = delay_wire
    host, peer = (wire.host4, wire.peer4) if family == 4 else (wire.host6, wire.peer6)
    port = free_port()
    filter_input(wire.netns, port, "reject with icmpx type host-unreachable")
    t = trace("--failed", "-j", "-P", str(port))
    failing_connect(family, peer, port, errno.EHOSTUNREACH)
    t.stop()
    [event] = t.json_rows()
    assert (event["saddr"], event["daddr"], event["dport"]) == (host, peer, port)
    assert (event["result"], event["errno"]) == ("unreachable", "EHOSTUNREACH")
    assert DELAY * 1000 <= event["latency_ms"] < DELAY * 1000 + 800


@pytest.mark.user_space
def test_query_column_follows_the_outcome(trace):
    port = free_port()
    t = trace("--outcome", "-d", "-P", str(port))
    assert t.header.endswith("DPORT  RESULT        LAT(ms)  CAUSE" + " " * 20 + "QUERY")
    refused_connect(6, port)
    t.stop()
    [line] = t.rows
    assert line == with_outcome(row(ME, my_comm(), 6, "::1", "::1", port),
                                "refused", "%.2f" % latency_of(line), "RST from destination"
                                ) + "localhost"


class ActThenStop:
    """Stands in for Ctrl-C, driven by the session's own loop: runs `act`
    at the first check, then asks the session to stop ~0.3 s later."""

    wakeup_fd = None

    def __init__(self, act) -> None:
        self._act = act
        self._stop_at: float | None = None

    @property
    def requested(self) -> bool:
        if self._stop_at is None:
            self._act()
            self._stop_at = time.monotonic() + 0.3
        return time.monotonic() > self._stop_at


def test_attempt_without_room_to_wait_is_reported_at_once(monkeypatch, veth):
    # Room for one waiting attempt, in the table alone: a SYN into the void
    # takes it, so the refused connect after it is reported at once, without
    # an outcome, and counted as such.
    dropped, refused = free_port(), free_port()
    filter_input(veth.netns, dropped, "drop")
    configure = session.tracer_config
    monkeypatch.setattr(session, "tracer_config",
                        lambda args: configure(args)._replace(pending_capacity=1, slot_count=0))
    out, err = io.StringIO(), io.StringIO()
    client = socket.socket()
    client.setblocking(False)

    def act() -> None:
        assert client.connect_ex((veth.peer4, dropped)) == errno.EINPROGRESS
        refused_connect(4, refused)

    args = parse_args(["--outcome", "-P", f"{dropped},{refused}"])
    try:
        assert session.Session(args, out, err).run(ActThenStop(act)) == 0
    finally:
        client.close()
    assert out.getvalue().splitlines()[2:] == [
        with_outcome(row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", refused), "unknown", "-", "-"),
        with_outcome(row(ME, my_comm(), 4, veth.host4, veth.peer4, dropped), "pending", "-", "-"),
    ]
    assert err.getvalue() == ("1 connects were reported without their outcome (result unknown) "
                              "(pending table full)\n")


def test_attempts_wait_in_their_slot_then_in_the_table(monkeypatch, veth):
    # One slot and room for one attempt in the table. Where the kernel has
    # BPF's compare-and-exchange (5.12+), the first SYN into the void takes
    # the slot, the second (its slot taken) the table, and the refused
    # connect after them finds neither; elsewhere the table alone holds the
    # first. What waits is listed at exit, slots first.
    first, second, refused = free_port(), free_port(), free_port()
    for port in (first, second):
        filter_input(veth.netns, port, "drop")
    configure = session.tracer_config
    monkeypatch.setattr(session, "tracer_config", lambda args: configure(args)._replace(
        pending_capacity=1, slot_count=1))
    out, err = io.StringIO(), io.StringIO()
    clients = [socket.socket(), socket.socket()]

    def act() -> None:
        for client, port in zip(clients, (first, second)):
            client.setblocking(False)
            assert client.connect_ex((veth.peer4, port)) == errno.EINPROGRESS
        refused_connect(4, refused)

    args = parse_args(["--outcome", "-P", f"{first},{second},{refused}"])
    try:
        assert session.Session(args, out, err).run(ActThenStop(act)) == 0
    finally:
        for client in clients:
            client.close()

    def void(port: int, result: str) -> str:
        return with_outcome(row(ME, my_comm(), 4, veth.host4, veth.peer4, port), result, "-", "-")

    unknown = with_outcome(row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", refused),
                           "unknown", "-", "-")
    if kernel_release() >= (5, 12):
        rows, lost = [unknown, void(first, "pending"), void(second, "pending")], 1
    else:
        rows, lost = [void(second, "unknown"), unknown, void(first, "pending")], 2
    assert out.getvalue().splitlines()[2:] == rows
    assert err.getvalue() == (f"{lost} connects were reported without their outcome "
                              "(result unknown) (pending table full)\n")


def test_attempts_racing_for_two_slots_each_end_once():
    # Two processes connect flat out, one per CPU, while their attempts
    # share two slots: claims and frees race on every connect, and a lost
    # race sends the attempt to the table. Each attempt is reported once,
    # refused, with its own port, and nothing is left parked.
    port = free_port()
    with Tracer(TracerConfig(outcome=True, ports=(port,), slot_count=2)) as tracer:
        loops = [subprocess.Popen([str(HELPERS / "connect_loop"), "-p", str(port), "-d", "0.3"],
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        made = sum(int(loop.communicate()[0]) for loop in loops)
        events: list[tuple] = []
        deadline = time.monotonic() + 10
        while len(events) < made and time.monotonic() < deadline:
            events += tracer.poll(100).events
        tracer.stop()
        assert tracer.take_pending() == []
        assert tracer.losses().pending_failures == 0
    assert len(events) == made, made
    assert {(event[OUTCOME], event[ERROR]) for event in events} == {(TCP_CLOSE,
                                                                      errno.ECONNREFUSED)}
    # Each was resolved from its own socket, which had its port by then.
    assert all(event[LPORT] for event in events)
