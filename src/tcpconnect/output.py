"""Turns events and counts into bcc-compatible text lines, or JSON lines.

Events arrive in batches of decoded tuples (see events.EventRecord) and are
formatted a batch at a time: one %-format per row, with the text of process
names and addresses cached, since a traced host repeats few of each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TextIO

from .attribution import Attribution
from .events import (
    ADDRESS_TEXT,
    CGROUP_ID,
    COMM,
    DADDR,
    DPORT,
    FAMILY,
    LPORT,
    MNTNS_ID,
    NETNS,
    PID,
    SADDR,
    TID,
    TS_NS,
    UID,
    CountKey,
    format_address,
)
from .outcome import TEXT_HEADER as OUTCOME_HEADER
from .outcome import COUNT_RESULT_HEADER, count_key_result, json_fields, text_columns
from .wallclock import WallClock

BANNER = "Tracing connect ... Hit Ctrl-C to end"
COUNT_HEADER = "%-25s %-25s %-20s %-10s" % ("LADDR", "RADDR", "RPORT", "CONNECTS")
# Distinct process names (and cgroups) whose text is kept.
COMM_CACHE_SIZE = 4096
# A DNS query: the name (None when no answer held the address) and how long
# before the connect its answer arrived (None when the name is not from an
# answer: no query, or loopback's "localhost").
Query = tuple[str | None, int | None]
# What is known of a cgroup id (attribution.CgroupResolver.lookup).
Attribute = Callable[[int], Attribution]


def _unknown(_cgroup_id: int) -> Attribution:
    return Attribution()


def _escape_char(c: str) -> str:
    if c == "\\":
        return "\\\\"
    return _escape_unprintable(c)


def _escape_unprintable(c: str) -> str:
    if "\udc80" <= c <= "\udcff":  # a byte that was not UTF-8 (surrogateescape)
        return "\\x%02x" % (ord(c) - 0xDC00)
    if c.isprintable():
        return c
    return c.encode("unicode_escape").decode("ascii")


def escape(text: str) -> str:
    """Makes an untrusted string (process name, DNS name) safe for a terminal
    and unambiguous: anything unprintable, escape sequences included, becomes
    \\xNN/\\uNNNN, and a backslash becomes \\\\, so a name that spells out an
    escape differs from one that holds the character."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(map(_escape_char, text))


def escape_query(text: str) -> str:
    """escape() for DNS names, which dns.py already writes unambiguously in
    zone-file form (\\DDD, \\\\): only what a terminal could act on is left."""
    if text.isprintable():
        return text
    return "".join(map(_escape_unprintable, text))


def comm_text(raw: bytes) -> str:
    """The process name of a 16-byte kernel field, escaped for a terminal."""
    return escape(raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))


def container_text(attribution: Attribution) -> str:
    """The CONTAINER column: padded like an address column, and like one
    never cut (a cut unit name could name another unit)."""
    return "%-16s" % escape(attribution.short or "-")


def _json_text(text: str | None) -> str:
    if text is None:
        return "null"
    # Bytes that are not UTF-8 (surrogateescape from the file system) become
    # \xNN text, as in "comm".
    return json.dumps(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
                      ensure_ascii=True)


def attribution_json(attribution: Attribution) -> str:
    a = attribution
    return (', "cgroup": %s, "unit": %s, "container_id": %s, "pod_uid": %s, "pod": %s, '
            '"namespace": %s' % tuple(map(_json_text, (
                a.cgroup, a.unit, a.container_id, a.pod_uid, a.pod, a.namespace))))


class _TextCache(dict):
    """text = cache[key], computed by `make` on a miss; cleared when full,
    which is cheaper than LRU bookkeeping on every hit."""

    def __init__(self, make: Callable[[Any], str]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key: Any) -> str:
        if len(self) >= COMM_CACHE_SIZE:
            self.clear()
        text = self[key] = self._make(key)
        return text


@dataclass(frozen=True)
class Columns:
    timestamp: bool = False
    uid: bool = False
    lport: bool = False
    dns: bool = False
    container: bool = False
    outcome: bool = False  # RESULT and LAT(ms) after DPORT
    time_of_day: bool = False  # -T


class RelativeClock:
    """Seconds since the first event, as bcc's TIME(s) column counts, or
    since origin_ns when given: with --outcome rows come in the order
    attempts end, so the first row printed need not be the first connect."""

    def __init__(self, origin_ns: int | None = None) -> None:
        self._start_ns = origin_ns

    def start_ns(self, events: list[tuple]) -> int:
        if self._start_ns is None:
            self._start_ns = events[0][TS_NS]
        return self._start_ns


class TextFormatter:
    """bcc's layout, column for column, so existing parsers keep working."""

    def __init__(self, columns: Columns, query: Callable[[tuple], str] | None = None,
                 attribute: Attribute | None = None, clock: RelativeClock | None = None,
                 wall: WallClock | None = None) -> None:
        self.columns = columns
        self._query = query
        self._clock = clock or RelativeClock()
        self._wall = wall or WallClock()
        # bcc's COMM is cut to 12 characters; the escaped text is cut, as bcc
        # cuts what it prints.
        self._comm = _TextCache(lambda raw: "%-12.12s" % comm_text(raw))
        known = attribute or _unknown
        # By cgroup id; without --container an empty column, so rows with and
        # without it share one template.
        self._container = _TextCache(
            (lambda cgroup_id: container_text(known(cgroup_id)) + " ") if columns.container
            else (lambda cgroup_id: ""))

    def header(self) -> str:
        cols = self.columns
        line = "%-8s " % "TIME" if cols.time_of_day else ""
        if cols.timestamp:
            line += "%-9s" % "TIME(s)"
        if cols.uid:
            line += "%-6s" % "UID"
        line += "%-7s %-12s " % ("PID", "COMM")
        if cols.container:
            line += "%-16s " % "CONTAINER"
        if cols.lport:
            line += "%-2s %-16s %-6s %-16s %-6s" % ("IP", "SADDR", "LPORT", "DADDR", "DPORT")
        else:
            line += "%-2s %-16s %-16s %-6s" % ("IP", "SADDR", "DADDR", "DPORT")
        if cols.outcome:
            line += " " + OUTCOME_HEADER
        if cols.dns:
            # bcc prints " QUERY" after the padded DPORT: two spaces in all.
            line += " QUERY"
        return line

    def rows(self, events: list[tuple]) -> list[str]:
        if not events:
            return []
        cols, comm, addr = self.columns, self._comm, ADDRESS_TEXT
        # bcc ends every row with a space and the QUERY column, empty
        # without -d; parsers that split on single spaces expect it.
        if cols.timestamp or cols.uid or cols.container:
            start = self._clock.start_ns(events)
            container = self._container
            # One pass for the optional columns too (a second pass for them
            # cost -t -U -L a fifth more per row); %.0s takes a value of a
            # column that is off without printing it.
            template = (("%-9.3f" if cols.timestamp else "%.0s")
                        + ("%-6d" if cols.uid else "%.0s")
                        + ("%-7d %s %s%-2d %-16s %-6d %-16s %-6d " if cols.lport
                           else "%-7d %s %s%-2d %-16s%.0s %-16s %-6d "))
            rows = [template % (
                (e[TS_NS] - start) / 1e9, e[UID], e[PID], comm[e[COMM]], container[e[CGROUP_ID]],
                e[FAMILY], addr[e[FAMILY]][e[SADDR]], e[LPORT], addr[e[FAMILY]][e[DADDR]],
                e[DPORT]) for e in events]
        elif cols.lport:
            rows = ["%-7d %s %-2d %-16s %-6d %-16s %-6d " % (
                e[PID], comm[e[COMM]], e[FAMILY], addr[e[FAMILY]][e[SADDR]], e[LPORT],
                addr[e[FAMILY]][e[DADDR]], e[DPORT]) for e in events]
        else:
            rows = ["%-7d %s %-2d %-16s %-16s %-6d " % (
                e[PID], comm[e[COMM]], e[FAMILY], addr[e[FAMILY]][e[SADDR]],
                addr[e[FAMILY]][e[DADDR]], e[DPORT]) for e in events]
        if cols.outcome:
            rows = [row + text_columns(e) for e, row in zip(events, rows)]
        if self._query is not None:
            query = self._query
            rows = [row + escape_query(query(e)) for e, row in zip(events, rows)]
        if cols.time_of_day:
            time_of_day = self._wall.time_of_day
            rows = [time_of_day(e[TS_NS]) + " " + row for e, row in zip(events, rows)]
        return rows


class JsonFormatter:
    """One JSON object per line; optional fields follow the same options as
    the text columns. Rows are built from a template rather than json.dumps
    of a dict (several times the cost); every string in them comes from
    json.dumps or inet_ntop, so they are valid JSON all the same."""

    def __init__(self, columns: Columns, query: Callable[[tuple], Query] | None = None,
                 attribute: Attribute | None = None, clock: RelativeClock | None = None,
                 wall: WallClock | None = None) -> None:
        self.columns = columns
        self._query = query
        known = attribute or _unknown
        self._attribution = _TextCache(lambda cgroup_id: attribution_json(known(cgroup_id)))
        self._clock = clock or RelativeClock()
        self._wall = wall or WallClock()
        # ensure_ascii keeps control characters escaped for terminals.
        self._comm = _TextCache(lambda raw: json.dumps(
            raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace"), ensure_ascii=True))
        template = '"uid": %d, "pid": %d, "tid": %d, "comm": %s, "ip": %d, "saddr": "%s", '
        if columns.lport:
            template += '"lport": %d, '
        self._template = template + (
            '"daddr": "%s", "dport": %d, "cgroup_id": %d, "mntns_id": %d, "netns": %d%s')

    def header(self) -> None:
        return None

    def rows(self, events: list[tuple]) -> list[str]:
        if not events:
            return []
        template, comm, addr, cgroup = self._template, self._comm, ADDRESS_TEXT, self._attribution
        if self.columns.lport:
            rows = [template % (
                e[UID], e[PID], e[TID], comm[e[COMM]], e[FAMILY], addr[e[FAMILY]][e[SADDR]],
                e[LPORT], addr[e[FAMILY]][e[DADDR]], e[DPORT], e[CGROUP_ID], e[MNTNS_ID],
                e[NETNS], cgroup[e[CGROUP_ID]]) for e in events]
        else:
            rows = [template % (
                e[UID], e[PID], e[TID], comm[e[COMM]], e[FAMILY], addr[e[FAMILY]][e[SADDR]],
                addr[e[FAMILY]][e[DADDR]], e[DPORT], e[CGROUP_ID], e[MNTNS_ID], e[NETNS],
                cgroup[e[CGROUP_ID]]) for e in events]
        if self.columns.timestamp:
            start = self._clock.start_ns(events)
            rows = ['"time": %r, %s' % (round((e[TS_NS] - start) / 1e9, 6), row)
                    for e, row in zip(events, rows)]
        rfc3339 = self._wall.rfc3339
        rows = ['"timestamp": "%s", %s' % (rfc3339(e[TS_NS]), row)
                for e, row in zip(events, rows)]
        if self.columns.outcome:
            rows = [row + json_fields(e) for e, row in zip(events, rows)]
        if self._query is not None:
            query = self._query
            rows = [row + _query_fields(*query(e)) for e, row in zip(events, rows)]
        return ["{" + row + "}" for row in rows]


def _query_fields(name: str | None, age_ns: int | None) -> str:
    return ', "query": %s, "query_age_ms": %s' % (
        "null" if name is None else json.dumps(name, ensure_ascii=True),
        "null" if age_ns is None else repr(round(age_ns / 1e6, 3)))


def tolerate_unencodable(stream: TextIO) -> TextIO:
    """Makes a text stream write what its encoding cannot hold as \\xNN,
    \\uNNNN escapes instead of failing: a process may call itself anything,
    and stdout may be ASCII (LC_ALL=C, PYTHONIOENCODING=ascii). escape()
    doubles literal backslashes, so these escapes stay unambiguous in text."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    return stream


def count_header(results: bool = False) -> str:
    """bcc's -c header; with --outcome a RESULT column before CONNECTS."""
    if not results:
        return COUNT_HEADER
    return "%-25s %-25s %-20s %s %-10s" % ("LADDR", "RADDR", "RPORT", COUNT_RESULT_HEADER,
                                           "CONNECTS")


def count_rows(counts: Iterable[tuple[CountKey, int]], results: bool = False) -> list[str]:
    """bcc's -c table body: IPv4 first, then IPv6, each busiest first.
    Ties go by destination, source and port (as numbers), then result, so
    the same counts always print the same table whatever order the kernel
    hands them in."""
    ordered = sorted(counts, key=lambda item: (
        item[0].family != 4, -item[1], bytes(item[0].daddr), bytes(item[0].saddr),
        item[0].dport, item[0].outcome, item[0].error))
    if results:
        return ["%-25s %-25s %-20s %-12s %-10d" % (
            format_address(key.family, bytes(key.saddr)),
            format_address(key.family, bytes(key.daddr)), key.dport, count_key_result(key), count)
            for key, count in ordered]
    return ["%-25s %-25s %-20s %-10d" % (
        format_address(key.family, bytes(key.saddr)), format_address(key.family, bytes(key.daddr)),
        key.dport, count) for key, count in ordered]
