"""-c count mode against the real kernel: known connects, exact tables.

Every tracer here is limited with -P to ports nobody else uses: the count
table is global to a tracer, so without it other processes' connects would
show up in the tables.
"""

from __future__ import annotations

import io
import re
import signal
import socket
import threading
import time

import pytest
from conftest import BANNER, Trace, connect_burst, free_port, refused_connect

from tcpconnect import session
from tcpconnect.cli import parse_args
from tcpconnect.events import CountKey
from tcpconnect.output import count_rows
from tcpconnect.tracer import Tracer, TracerConfig

# The layout the issue and bcc specify, written out independently of output.py.
HEADER = "%-25s %-25s %-20s %-10s" % ("LADDR", "RADDR", "RPORT", "CONNECTS")
NOBODY = 65534


def count_row(saddr: str, daddr: str, port: int, connects: int) -> str:
    return "%-25s %-25s %-20s %-10d" % (saddr, daddr, port, connects)


def table(*rows: str) -> str:
    """A whole table as printed: blank line, header, rows."""
    return "".join(line + "\n" for line in ("", HEADER, *rows))


def timed_table(*rows: str) -> str:
    """A whole -i table, its time line as times_checked() leaves it."""
    return "".join(line + "\n" for line in ("", "HH:MM:SS", HEADER, *rows))


def times_checked(stdout: str) -> str:
    """-i's output with each table's time line replaced by HH:MM:SS; each
    must be the local time the table was printed, within the last minute."""
    now = time.localtime()
    now_s = now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec

    def check(match: re.Match) -> str:
        h, m, s = map(int, match[0].split(":"))
        assert (now_s - (h * 3600 + m * 60 + s)) % 86400 < 60, (match[0], now)
        return "HH:MM:SS"

    return re.sub(r"(?m)^\d\d:\d\d:\d\d$", check, stdout)


def connects(family: int, addr: str, port: int, times: int) -> None:
    for _ in range(times):
        refused_connect(family, port, addr)


def rows_until_next_table(t: Trace, timeout: float = 5.0) -> list[str]:
    """Reads up to the next -i table's header; returns the rows of the table
    before it (the lines in between, minus the blank separator and the time)."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while (line := t.next_line(timeout=max(0.0, deadline - time.monotonic()))) != HEADER:
        if time.monotonic() > deadline:
            raise AssertionError(f"no table within {timeout}s; read {lines!r}")
        lines.append(line)
    assert times_checked("\n".join(lines[-2:])) == "\nHH:MM:SS", lines
    return lines[:-2]


def make_key(family: int, saddr: str, daddr: str, dport: int) -> CountKey:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    key = CountKey(dport=dport, family=family)
    for field, text in (("saddr", saddr), ("daddr", daddr)):
        packed = socket.inet_pton(af, text)
        getattr(key, field)[:len(packed)] = list(packed)
    return key


def test_count_rows_order_and_layout():
    counts = [
        (make_key(6, "::1", "::1", 80), 9),
        (make_key(4, "10.0.0.1", "10.0.0.9", 443), 2),
        (make_key(6, "fd00::1", "fd00::2", 22), 11),
        (make_key(4, "10.0.0.1", "10.0.0.10", 443), 7),
        # Ties: by destination address as a number (.2 before .10), then port.
        (make_key(4, "10.0.0.1", "10.0.0.10", 80), 2),
        (make_key(4, "10.0.0.1", "10.0.0.2", 80), 2),
    ]
    assert count_rows(counts) == [
        "10.0.0.1                  10.0.0.10                 443                  7         ",
        "10.0.0.1                  10.0.0.2                  80                   2         ",
        "10.0.0.1                  10.0.0.9                  443                  2         ",
        "10.0.0.1                  10.0.0.10                 80                   2         ",
        "fd00::1                   fd00::2                   22                   11        ",
        "::1                       ::1                       80                   9         ",
    ]
    assert count_rows([]) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_known_connects_give_exact_table(trace, sig):
    port, other = free_port(), free_port()
    t = trace("-c", "-P", f"{port},{other}")
    connects(4, "127.0.0.1", port, 2)
    connects(4, "127.0.0.2", port, 6)
    connects(4, "127.0.0.3", port, 1)
    connects(4, "127.0.0.1", other, 3)
    connects(6, "::1", port, 5)
    connects(6, "::1", other, 2)
    # From AF_INET6 sockets, but IPv4 on the wire: same key as 127.0.0.1.
    connects(6, "::ffff:127.0.0.1", port, 2)
    t.stop(sig)
    assert t.stdout == table(
        count_row("127.0.0.1", "127.0.0.2", port, 6),
        count_row("127.0.0.1", "127.0.0.1", port, 4),
        count_row("127.0.0.1", "127.0.0.1", other, 3),
        count_row("127.0.0.1", "127.0.0.3", port, 1),
        count_row("::1", "::1", port, 5),
        count_row("::1", "::1", other, 2),
    )
    assert (t.returncode, t.stderr) == (0, "")


def test_no_connects_give_an_empty_table(trace):
    t = trace("-c", "-P", str(free_port()))
    t.stop()
    assert t.stdout == table()


# Connects made in every filter case: (who, family, address, count) to the
# filtered port, plus 4 by the test process to a port outside -P.
SCENARIO = [
    ("nobody", 4, "127.0.0.1", 2),
    ("nobody", 6, "::1", 1),
    ("me", 4, "127.0.0.2", 3),
    ("me", 6, "::ffff:127.0.0.3", 1),
    ("me", 6, "::1", 2),
]


@pytest.mark.parametrize("options,expected", [
    ([], [("127.0.0.1", "127.0.0.2", 3), ("127.0.0.1", "127.0.0.1", 2),
          ("127.0.0.1", "127.0.0.3", 1), ("::1", "::1", 3)]),
    (["-p", "{pid}"], [("127.0.0.1", "127.0.0.1", 2), ("::1", "::1", 1)]),
    (["-u", str(NOBODY)], [("127.0.0.1", "127.0.0.1", 2), ("::1", "::1", 1)]),
    (["-4"], [("127.0.0.1", "127.0.0.2", 3), ("127.0.0.1", "127.0.0.1", 2),
              ("127.0.0.1", "127.0.0.3", 1)]),
    (["-6"], [("::1", "::1", 3)]),
], ids=["P", "p", "u", "4", "6"])
def test_filters_apply_in_count_mode(trace, workload, options, expected):
    port, outside = free_port(), free_port()
    nobody = workload(user=NOBODY)
    t = trace("-c", "-P", str(port), *(o.format(pid=nobody.pid) for o in options))
    for who, family, addr, times in SCENARIO:
        for _ in range(times):
            if who == "nobody":
                nobody.connect(family, addr, port)
            else:
                refused_connect(family, port, addr)
    connects(4, "127.0.0.1", outside, 4)
    t.stop()
    assert t.stdout == table(*(count_row(s, d, port, n) for s, d, n in expected))
    assert t.stderr == ""


@pytest.mark.user_space
def test_interval_prints_and_resets(trace):
    port = free_port()
    t = trace("-c", "-i", "1", "-P", str(port))
    # Connect only right after a table appears, a whole interval before the
    # next one, so each batch belongs to exactly one table.
    assert rows_until_next_table(t) == []
    connects(4, "127.0.0.1", port, 3)
    assert rows_until_next_table(t) == []  # the first table, printed before the batch
    connects(4, "127.0.0.2", port, 2)
    connects(4, "127.0.0.1", port, 1)
    second = rows_until_next_table(t)
    rest = t.stop()
    assert second == [count_row("127.0.0.1", "127.0.0.1", port, 3)]
    # Reset: 127.0.0.1 shows its one new connect, not 4; the table printed
    # at exit starts empty again.
    assert times_checked(rest) == "".join(line + "\n" for line in (
        count_row("127.0.0.1", "127.0.0.2", port, 2),
        count_row("127.0.0.1", "127.0.0.1", port, 1),
    )) + timed_table()
    assert (t.returncode, t.stderr) == (0, "")


def parse_tables(stdout: str) -> list[list[str]]:
    """The row lists of every table in -i's output (after the banner)."""
    tables: list[list[str]] = []
    for line in times_checked(stdout).splitlines():
        if line == "":
            tables.append([])
        else:
            tables[-1].append(line)
    assert all(rows[:2] == ["HH:MM:SS", HEADER] for rows in tables), stdout
    return [rows[2:] for rows in tables]


def test_interval_tables_add_up_under_load(trace):
    # Two loops on two cores hammer one key while tables are taken: every
    # connect must land in exactly one table, none lost at a swap.
    port = free_port()
    t = trace("-c", "-i", "1", "-P", str(port))
    made: list[int] = []
    loops = [threading.Thread(target=lambda: made.append(connect_burst(port, 1.5)))
             for _ in range(2)]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()
    t.stop()
    tables = parse_tables(t.stdout)
    prefix = count_row("127.0.0.1", "127.0.0.1", port, 0)[:73]
    counted = []
    for rows in tables:
        assert len(rows) <= 1 and all(r.startswith(prefix) for r in rows), rows
        counted += [int(r[73:]) for r in rows]
    assert len(counted) >= 2, tables  # the load spanned at least one swap
    assert sum(counted) == sum(made)
    assert t.stderr == ""


def test_full_table_failures_are_counted_exactly():
    # A real tracer with room for two keys per table: the first two
    # destinations fit, every connect to any other one is a counted failure.
    port = free_port()
    with Tracer(TracerConfig(count=True, ports=(port,), count_capacity=2)) as tracer:
        connects(4, "127.0.0.1", port, 3)
        connects(4, "127.0.0.2", port, 1)
        connects(4, "127.0.0.3", port, 2)
        connects(6, "::1", port, 2)
        connects(6, "::ffff:127.0.0.4", port, 1)
        first = count_rows(tracer.take_counts())
        after_first = tracer.losses().count_failures
        # Taking the counts gives a fresh, empty table: new keys fit again.
        connects(6, "::1", port, 1)
        connects(4, "127.0.0.3", port, 2)
        connects(4, "127.0.0.1", port, 1)
        second = count_rows(tracer.take_counts())
        total = tracer.losses().count_failures
    assert first == [count_row("127.0.0.1", "127.0.0.1", port, 3),
                     count_row("127.0.0.1", "127.0.0.2", port, 1)]
    assert after_first == 5
    assert second == [count_row("127.0.0.1", "127.0.0.3", port, 2),
                      count_row("::1", "::1", port, 1)]
    assert total == 6


class ScriptedStop:
    """Stands in for Ctrl-C, driven by the session's own loop: overflows the
    table, waits for the first interval's table, overflows the fresh table,
    then asks the session to stop."""

    wakeup_fd = None

    def __init__(self, out: io.StringIO, port: int) -> None:
        self.out = out
        self.port = port
        self.step = 0
        self.give_up = time.monotonic() + 5

    @property
    def requested(self) -> bool:
        if self.step == 0:
            for addr, times in (("127.0.0.1", 2), ("127.0.0.2", 1), ("127.0.0.3", 3)):
                connects(4, addr, self.port, times)
            self.step = 1
        elif self.out.getvalue().count(HEADER) == 1:
            for addr in ("127.0.0.4", "127.0.0.5", "127.0.0.6"):
                connects(4, addr, self.port, 1)
            return True
        return time.monotonic() > self.give_up


def test_cli_reports_full_table_per_interval_and_in_total(monkeypatch):
    # The CLI keeps the generous default capacity; the real session is run
    # in-process with the tracer configured for two keys per table.
    port = free_port()
    configure = session.tracer_config
    monkeypatch.setattr(session, "tracer_config",
                        lambda args: configure(args)._replace(count_capacity=2))
    out, err = io.StringIO(), io.StringIO()
    args = parse_args(["-c", "-i", "1", "-P", str(port)])
    assert session.Session(args, out, err).run(ScriptedStop(out, port)) == 0
    assert times_checked(out.getvalue()) == BANNER + "\n" + timed_table(
        count_row("127.0.0.1", "127.0.0.1", port, 2),
        count_row("127.0.0.1", "127.0.0.2", port, 1),
    ) + timed_table(
        count_row("127.0.0.1", "127.0.0.4", port, 1),
        count_row("127.0.0.1", "127.0.0.5", port, 1),
    )
    # The last, partial table is reported like the others, then the total.
    assert err.getvalue() == ("3 connects are missing from this table (count table full)\n"
                              "1 connects are missing from this table (count table full)\n"
                              "4 connects could not be counted (count table full)\n")
