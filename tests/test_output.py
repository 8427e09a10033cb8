"""Formatting: bcc's exact header and row layouts, escaping, JSON."""

from __future__ import annotations

import itertools
import json
import re
import socket
import time
from datetime import datetime

import pytest

from tcpconnect.attribution import Attribution
from tcpconnect.records import EventRecord, decoded
from tcpconnect.exe import path_of
from tcpconnect.output import Columns, JsonFormatter, TextFormatter, escape, exe_column_paths
from tcpconnect.wallclock import WallClock

# Never loads BPF: the kernel matrix leaves it to the host run.
pytestmark = pytest.mark.host_only

# Kernel time 0 is 2026-11-29T01:23:40Z.
WALL = WallClock(offset_ns=1_795_915_420 * 10**9)


def event(**fields) -> tuple:
    """A decoded event as the ring reader hands it over (arrays as the
    kernel's zero-padded bytes)."""
    for name in ("saddr", "daddr", "comm", "pcomm"):
        if name in fields:
            fields[name] = fields[name].ljust(16, b"\0")
    record = EventRecord(
        ts_ns=5_000_000_000, pid=4242, tid=4243, uid=1000, lport=51234, dport=443, family=4,
        comm=b"curl".ljust(16, b"\0"), cgroup_id=7, mntns_id=4026531841, netns=4026531840,
        latency_ns=0, outcome=0, error=0, syn_retries=0, drops=0, drop_reason=0,
        saddr=socket.inet_pton(socket.AF_INET, "10.0.0.1").ljust(16, b"\0"),
        daddr=socket.inet_pton(socket.AF_INET, "93.184.216.34").ljust(16, b"\0"),
    )
    return decoded(record._replace(**fields))


def row(formatter, e: tuple) -> str:
    [line] = formatter.rows([e])
    return line


@pytest.mark.parametrize("columns,header", [
    (Columns(), "PID     COMM         IP SADDR            DADDR            DPORT "),
    (Columns(timestamp=True),
     "TIME(s)  PID     COMM         IP SADDR            DADDR            DPORT "),
    (Columns(uid=True), "UID   PID     COMM         IP SADDR            DADDR            DPORT "),
    (Columns(lport=True),
     "PID     COMM         IP SADDR            LPORT  DADDR            DPORT "),
    (Columns(dns=True),
     "PID     COMM         IP SADDR            DADDR            DPORT  QUERY"),
    (Columns(container=True),
     "PID     COMM         CONTAINER        IP SADDR            DADDR            DPORT "),
    (Columns(timestamp=True, uid=True, lport=True, dns=True),
     "TIME(s)  UID   PID     COMM         IP SADDR            LPORT  DADDR            DPORT"
     "  QUERY"),
])
def test_headers(columns, header):
    assert TextFormatter(columns).header() == header


def test_row_layouts():
    assert row(TextFormatter(Columns()), event()) == (
        "4242    curl         4  10.0.0.1         93.184.216.34    443    ")
    assert row(TextFormatter(Columns(timestamp=True, uid=True, lport=True)), event()) == (
        "0.000    1000  4242    curl         4  10.0.0.1         51234  93.184.216.34    443    ")
    with_query = TextFormatter(Columns(dns=True), query=lambda e: "example.com")
    assert row(with_query, event()) == (
        "4242    curl         4  10.0.0.1         93.184.216.34    443    example.com")


def test_container_column():
    known = {7: Attribution("/system.slice/docker-" + "ab" * 32 + ".scope",
                            "docker-" + "ab" * 32 + ".scope", "ab" * 32),
             8: Attribution("/system.slice/very-long-service-name.service",
                            "very-long-service-name.service"),
             9: Attribution()}
    formatter = TextFormatter(Columns(uid=True, lport=True, container=True),
                              attribute=known.__getitem__)
    assert formatter.rows([event(cgroup_id=i) for i in (7, 8, 9)]) == [
        "1000  4242    curl         abababababab     4  10.0.0.1         51234  "
        "93.184.216.34    443    ",
        "1000  4242    curl         very-long-service-name.service 4  10.0.0.1         51234  "
        "93.184.216.34    443    ",
        "1000  4242    curl         -                4  10.0.0.1         51234  "
        "93.184.216.34    443    "]


def test_container_column_shows_the_name_when_the_node_keeps_one():
    # A name is chosen by whoever starts the container: escaped like the rest.
    known = {7: Attribution("/docker/" + "ab" * 32, None, "ab" * 32, container_name="web"),
             8: Attribution("/docker/" + "cd" * 32, None, "cd" * 32,
                            container_name="evil\x1b[2J")}
    formatter = TextFormatter(Columns(container=True), attribute=known.__getitem__)
    assert formatter.rows([event(cgroup_id=i) for i in (7, 8)]) == [
        "4242    curl         web              4  10.0.0.1         93.184.216.34    443    ",
        "4242    curl         evil\\x1b[2J      4  10.0.0.1         93.184.216.34    443    "]


def test_ipv6_row_and_long_comm_truncated():
    e = event(family=6, comm=b"a-very-long-pro",
              saddr=socket.inet_pton(socket.AF_INET6, "fd00::1"),
              daddr=socket.inet_pton(socket.AF_INET6, "2001:db8::20"))
    assert row(TextFormatter(Columns()), e) == (
        "4242    a-very-long- 6  fd00::1          2001:db8::20     443    ")


def test_timestamps_count_from_the_first_event():
    formatter = TextFormatter(Columns(timestamp=True))
    first = row(formatter, event(ts_ns=10_000_000_000))
    later = row(formatter, event(ts_ns=12_345_678_900))
    assert first.startswith("0.000    ")
    assert later.startswith("2.346    ")


@pytest.mark.parametrize("columns", [Columns(), Columns(timestamp=True, lport=True)])
def test_repeated_identities_print_their_own_rows(columns):
    # Rows are kept by identity: each identity gets its own row, its varying
    # columns filled in anew, and a % in a name stays as it is.
    formatter = TextFormatter(columns)
    rows = formatter.rows([event(comm=b"50%d %s%%", ts_ns=5_000_000_000, lport=1000),
                           event(pid=7, ts_ns=6_000_000_000, lport=1001),
                           event(comm=b"50%d %s%%", ts_ns=7_000_000_000, lport=1002)])
    tail = "93.184.216.34    443    "
    if columns.timestamp:
        assert rows == ["0.000    4242    50%d %s%%    4  10.0.0.1         1000   " + tail,
                        "1.000    7       curl         4  10.0.0.1         1001   " + tail,
                        "2.000    4242    50%d %s%%    4  10.0.0.1         1002   " + tail]
    else:
        assert rows == ["4242    50%d %s%%    4  10.0.0.1         " + tail,
                        "7       curl         4  10.0.0.1         " + tail,
                        "4242    50%d %s%%    4  10.0.0.1         " + tail]


def test_hostile_strings_are_escaped():
    assert escape("plain name") == "plain name"
    assert escape("\x1b[2Jevil\n") == "\\x1b[2Jevil\\n"
    assert escape("bell\x07") == "bell\\x07"
    assert escape("\u202eltr") == "\\u202eltr"
    line = row(TextFormatter(Columns()), event(comm=b"\x1b]0;title\x07"))
    assert "\x1b" not in line and "\x07" not in line
    assert line.split()[1] == "\\x1b]0;title"  # escaped, then cut to 12 like bcc
    assert "\\xff" in row(TextFormatter(Columns()), event(comm=b"bad\xff"))


def test_escapes_are_unambiguous():
    # A name that spells an escape out must not print like one holding the
    # character, nor like one holding a byte that is not UTF-8.
    assert escape("\\x1b[2J") == "\\\\x1b[2J"
    spelled = row(TextFormatter(Columns()), event(comm=b"\\x1b[2J"))
    real = row(TextFormatter(Columns()), event(comm=b"\x1b[2J"))
    assert spelled.split()[1] == "\\\\x1b[2J" and real.split()[1] == "\\x1b[2J"
    spelled = row(TextFormatter(Columns()), event(comm=b"bad\\xff"))
    real = row(TextFormatter(Columns()), event(comm=b"bad\xff"))
    assert spelled.split()[1] == "bad\\\\xff" and real.split()[1] == "bad\\xff"


def test_query_column_is_escaped():
    formatter = TextFormatter(Columns(dns=True), query=lambda e: "evil\x1b[31m.example")
    assert row(formatter, event()).endswith(" evil\\x1b[31m.example")


def test_json_row():
    formatter = JsonFormatter(Columns(timestamp=True, lport=True),
                              query=lambda e: ("x.test", 512_004_000), wall=WALL)
    assert formatter.header() is None
    record = json.loads(row(formatter, event(comm=b"cu\x1brl", ts_ns=5_000_123_456, ppid=1,
                                             pcomm=b"sys\x1bd", ns_pid=42, ns_tid=43)))
    assert record == {
        "timestamp": "2026-11-29T01:23:45.000123Z", "time": 0.0, "uid": 1000, "pid": 4242,
        "tid": 4243, "comm": "cu\x1brl", "ppid": 1, "pcomm": "sys\x1bd", "ns_pid": 42,
        "ns_tid": 43, "ip": 4,
        "saddr": "10.0.0.1", "lport": 51234, "daddr": "93.184.216.34", "dport": 443,
        "cgroup_id": 7, "mntns_id": 4026531841, "netns": 4026531840, "cgroup": None,
        "unit": None, "container_id": None, "container_name": None, "pod_uid": None, "pod": None,
        "namespace": None, "exe": None, "query": "x.test", "query_age_ms": 512.004,
    }
    assert "\x1b" not in row(formatter, event(comm=b"cu\x1brl"))


@pytest.mark.parametrize("query,fields", [
    (("example.com", 2_500_000), {"query": "example.com", "query_age_ms": 2.5}),
    (("localhost", None), {"query": "localhost", "query_age_ms": None}),
    ((None, None), {"query": None, "query_age_ms": None}),
])
def test_json_query_and_its_age_are_separate_fields(query, fields):
    record = json.loads(row(JsonFormatter(Columns(dns=True), query=lambda e: query), event()))
    assert {k: record[k] for k in fields} == fields


def test_json_without_dns_has_no_query_fields():
    record = json.loads(row(JsonFormatter(Columns()), event()))
    assert "query" not in record and "query_age_ms" not in record


@pytest.mark.parametrize("comm", [b"curl", b"cu\x1brl", b'say "hi"\\', b"bad\xff", "é中".encode(),
                                  b"100%s%d%%"])
def test_json_rows_equal_json_dumps(comm):
    # Rows are built from a template; they must be what json.dumps makes.
    e = event(comm=comm, family=6, saddr=socket.inet_pton(socket.AF_INET6, "::1"),
              daddr=socket.inet_pton(socket.AF_INET6, "2001:db8::1"))
    formatter = JsonFormatter(Columns(timestamp=True, lport=True),
                              query=lambda e: ('evil"\x1b.example', 1))
    assert row(formatter, e) == json.dumps(json.loads(row(formatter, e)), ensure_ascii=True)


@pytest.mark.parametrize("ts_ns,stamp", [
    (5_000_123_999, "2026-11-29T01:23:45.000123Z"),
    (5_999_999_999, "2026-11-29T01:23:45.999999Z"),
    (6_000_000_000, "2026-11-29T01:23:46.000000Z"),
])
def test_json_timestamp_across_a_second(ts_ns, stamp):
    formatter = JsonFormatter(Columns(), wall=WALL)
    assert json.loads(row(formatter, event(ts_ns=ts_ns)))["timestamp"] == stamp


def test_time_column_is_the_local_second():
    formatter = TextFormatter(Columns(time_of_day=True), wall=WALL)
    local = time.strftime("%H:%M:%S", time.localtime(1_795_915_425))
    assert row(formatter, event(ts_ns=5_000_000_000)).startswith(local + " 4242 ")
    assert row(formatter, event(ts_ns=5_999_999_999)).startswith(local + " 4242 ")
    following = time.strftime("%H:%M:%S", time.localtime(1_795_915_426))
    assert row(formatter, event(ts_ns=6_000_000_000)).startswith(following + " 4242 ")


def test_json_timestamp_is_wall_time_of_a_monotonic_stamp():
    stamp = json.loads(row(JsonFormatter(Columns()), event(ts_ns=time.monotonic_ns())))
    parsed = datetime.fromisoformat(stamp["timestamp"].replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - time.time()) < 0.5


def test_loss_records_say_what_was_lost_since_the_last_report():
    from tcpconnect.loss_records import loss_records
    from tcpconnect.tracer import LossCounters

    before = LossCounters(events=5, dns_events=1, count_failures=0, pending_failures=0,
                          skipped_runs=2)
    now = before._replace(events=12, dns_events=1, skipped_runs=3, count_failures=9)
    clock = lambda: 1_795_915_425_000_123_999  # noqa: E731
    assert [json.loads(r) for r in loss_records(before, now, clock)] == [
        {"type": "lost", "timestamp": "2026-11-29T01:23:45.000123Z", "ring": "events",
         "events": 7},
        {"type": "lost", "timestamp": "2026-11-29T01:23:45.000123Z", "skipped_runs": 1},
    ]
    assert loss_records(now, now, clock) == []
    dns = loss_records(now, now._replace(dns_events=4), clock)
    assert [json.loads(r) for r in dns] == [
        {"type": "lost", "timestamp": "2026-11-29T01:23:45.000123Z", "ring": "dns_events",
         "dns_responses": 3}]


ALL_COLUMNS = [Columns(*flags) for flags in itertools.product((False, True),
                                                               repeat=len(Columns._fields))]


def starts(line: str) -> list[int]:
    return [m.start() for m in re.finditer(r"\S+", line)]


@pytest.mark.parametrize("columns", ALL_COLUMNS, ids=lambda c: "".join(
    name[0] if on else "-" for name, on in zip(Columns._fields, c)))
def test_every_column_combination_lines_up_under_its_header(columns):
    # Every text column comes from TEXT_COLUMNS: a header label that does not
    # start where its field starts, in any combination, fails here rather than
    # on someone's terminal. TIME(s) of the first row is 0.000.
    formatter = TextFormatter(columns, query=lambda e: "example.com", wall=WALL,
                              attribute=lambda cgroup_id: Attribution(unit="ssh.service"))
    header = formatter.header()
    line = row(formatter, event(outcome=2, error=111, latency_ns=1_500_000))
    assert set(starts(header)) <= set(starts(line)), (header, line)
    json_line = row(JsonFormatter(columns, query=(lambda e: ("example.com", 3))
                                  if columns.dns else None, wall=WALL), event())
    assert json.loads(json_line)["dport"] == 443


def exe_record(names: list[bytes], dev: int = 0x800001, ino: int = 99, deleted: bool = False,
               cut: bool = False) -> tuple:
    """An exe record as the ring reader hands it over: names leaf first."""
    raw = b"".join(name + b"\0" for name in names)
    return (ino, dev, int(deleted), len(names), int(cut), len(raw), raw.ljust(768, b"\0"))


@pytest.mark.parametrize("names,deleted,cut,path", [
    ([b"python3.11", b"bin", b"usr"], False, False, "/usr/bin/python3.11"),
    ([b"sshd", b"tmp"], True, False, "/tmp/sshd (deleted)"),
    ([b"sshd", b"c", b"b"], False, True, ".../b/c/sshd"),
    # Not UTF-8: kept as surrogate escapes, as Python keeps file names.
    ([b"\xffx", b"tmp"], False, False, "/tmp/\udcffx"),
])
def test_exe_path_of_a_record(names, deleted, cut, path):
    assert path_of(exe_record(names, deleted=deleted, cut=cut)) == path


def test_exe_in_rows_by_key_and_unknown_keys_counted_and_forgotten():
    forgotten = []
    text = TextFormatter(Columns(exe=True), exe=exe_column_paths(
        lambda dev, ino: forgotten.append((dev, ino))))
    jsonl = JsonFormatter(Columns())
    assert text.header() == ("PID     COMM         EXE                      IP SADDR            "
                             "DADDR            DPORT ")
    for formatter in (text, jsonl):
        formatter.exe.note([exe_record([b"e\x1bvil", b"tmp"])])
    known = event(exe_dev=0x800001, exe_ino=99)
    assert row(text, known) == "%-7d %-12s %-24s %-2d %-16s %-16s %-6d " % (
        4242, "curl", "/tmp/e\\x1bvil", 4, "10.0.0.1", "93.184.216.34", 443)
    assert json.loads(row(jsonl, known))["exe"] == "/tmp/e\x1bvil"
    # The record was lost: the row says so, it is counted, and the kernel
    # is asked to send the path again.
    lost = event(exe_dev=0x800001, exe_ino=100)
    assert row(text, lost).split()[2] == "?"
    assert json.loads(row(jsonl, lost))["exe"] is None
    assert (text.exe.unknown, jsonl.exe.unknown, forgotten) == (1, 1, [(0x800001, 100)])
    # No executable at all (a kernel thread): null, not a loss.
    assert json.loads(row(jsonl, event()))["exe"] is None
    assert jsonl.exe.unknown == 1
    # Sent again once unlinked: later rows say so.
    jsonl.exe.note([exe_record([b"e\x1bvil", b"tmp"], deleted=True)])
    assert json.loads(row(jsonl, known))["exe"] == "/tmp/e\x1bvil (deleted)"
