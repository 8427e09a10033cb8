"""Formatting: bcc's exact header and row layouts, escaping, JSON."""

from __future__ import annotations

import json
import socket

import pytest

from tcpconnect.events import Event
from tcpconnect.output import Columns, JsonFormatter, TextFormatter, escape


def event(**fields) -> Event:
    e = Event(ts_ns=5_000_000_000, pid=4242, tid=4243, uid=1000, lport=51234, dport=443,
              family=4, comm=b"curl", cgroup_id=7, mntns_id=4026531841)
    e.saddr[:4] = socket.inet_pton(socket.AF_INET, "10.0.0.1")
    e.daddr[:4] = socket.inet_pton(socket.AF_INET, "93.184.216.34")
    for name, value in fields.items():
        setattr(e, name, value)
    return e


@pytest.mark.parametrize("columns,header", [
    (Columns(), "PID     COMM         IP SADDR            DADDR            DPORT "),
    (Columns(timestamp=True),
     "TIME(s)  PID     COMM         IP SADDR            DADDR            DPORT "),
    (Columns(uid=True), "UID   PID     COMM         IP SADDR            DADDR            DPORT "),
    (Columns(lport=True),
     "PID     COMM         IP SADDR            LPORT  DADDR            DPORT "),
    (Columns(dns=True),
     "PID     COMM         IP SADDR            DADDR            DPORT  QUERY"),
    (Columns(timestamp=True, uid=True, lport=True, dns=True),
     "TIME(s)  UID   PID     COMM         IP SADDR            LPORT  DADDR            DPORT"
     "  QUERY"),
])
def test_headers(columns, header):
    assert TextFormatter(columns).header() == header


def test_row_layouts():
    assert TextFormatter(Columns()).row(event()) == (
        "4242    curl         4  10.0.0.1         93.184.216.34    443    ")
    assert TextFormatter(Columns(timestamp=True, uid=True, lport=True)).row(event()) == (
        "0.000    1000  4242    curl         4  10.0.0.1         51234  93.184.216.34    443    ")
    with_query = TextFormatter(Columns(dns=True), query=lambda e: "example.com")
    assert with_query.row(event()) == (
        "4242    curl         4  10.0.0.1         93.184.216.34    443    example.com")


def test_ipv6_row_and_long_comm_truncated():
    e = event(family=6, comm=b"a-very-long-pro")
    e.saddr[:] = socket.inet_pton(socket.AF_INET6, "fd00::1")
    e.daddr[:] = socket.inet_pton(socket.AF_INET6, "2001:db8::20")
    assert TextFormatter(Columns()).row(e) == (
        "4242    a-very-long- 6  fd00::1          2001:db8::20     443    ")


def test_timestamps_count_from_the_first_event():
    formatter = TextFormatter(Columns(timestamp=True))
    first = formatter.row(event(ts_ns=10_000_000_000))
    later = formatter.row(event(ts_ns=12_345_678_900))
    assert first.startswith("0.000    ")
    assert later.startswith("2.346    ")


def test_hostile_strings_are_escaped():
    assert escape("plain name") == "plain name"
    assert escape("\x1b[2Jevil\n") == "\\x1b[2Jevil\\n"
    assert escape("bell\x07") == "bell\\x07"
    assert escape("\u202eltr") == "\\u202eltr"
    row = TextFormatter(Columns()).row(event(comm=b"\x1b]0;title\x07"))
    assert "\x1b" not in row and "\x07" not in row
    assert row.split()[1] == "\\x1b]0;title"  # escaped, then cut to 12 like bcc
    assert "\\xff" in TextFormatter(Columns()).row(event(comm=b"bad\xff"))


def test_query_column_is_escaped():
    formatter = TextFormatter(Columns(dns=True), query=lambda e: "evil\x1b[31m.example")
    assert formatter.row(event()).endswith(" evil\\x1b[31m.example")


def test_json_row():
    formatter = JsonFormatter(Columns(timestamp=True, lport=True), query=lambda e: "x.test")
    assert formatter.header() is None
    record = json.loads(formatter.row(event(comm=b"cu\x1brl")))
    assert record == {
        "time": 0.0, "uid": 1000, "pid": 4242, "tid": 4243, "comm": "cu\x1brl", "ip": 4,
        "saddr": "10.0.0.1", "lport": 51234, "daddr": "93.184.216.34", "dport": 443,
        "cgroup_id": 7, "mntns_id": 4026531841, "query": "x.test",
    }
    assert "\x1b" not in formatter.row(event(comm=b"cu\x1brl"))
