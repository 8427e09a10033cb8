"""Turns events and counts into bcc-compatible text lines, or JSON lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable

from .events import CountKey, Event, format_address

BANNER = "Tracing connect ... Hit Ctrl-C to end"
COUNT_HEADER = "%-25s %-25s %-20s %-10s" % ("LADDR", "RADDR", "RPORT", "CONNECTS")


def escape(text: str) -> str:
    """Makes an untrusted string (process name, DNS name) safe for a terminal:
    anything unprintable, escape sequences included, becomes \\xNN/\\uNNNN."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def comm_text(event: Event) -> str:
    return escape(event.comm.decode("utf-8", "backslashreplace"))


@dataclass(frozen=True)
class Columns:
    timestamp: bool = False
    uid: bool = False
    lport: bool = False
    dns: bool = False


class RelativeClock:
    """Seconds since the first event, as bcc's TIME(s) column counts."""

    def __init__(self) -> None:
        self._start_ns: int | None = None

    def seconds(self, event: Event) -> float:
        if self._start_ns is None:
            self._start_ns = event.ts_ns
        return (event.ts_ns - self._start_ns) / 1e9


class TextFormatter:
    """bcc's layout, column for column, so existing parsers keep working."""

    def __init__(self, columns: Columns, query: Callable[[Event], str] | None = None) -> None:
        self.columns = columns
        self._query = query
        self._clock = RelativeClock()

    def header(self) -> str:
        cols = self.columns
        line = ""
        if cols.timestamp:
            line += "%-9s" % "TIME(s)"
        if cols.uid:
            line += "%-6s" % "UID"
        if cols.lport:
            line += "%-7s %-12s %-2s %-16s %-6s %-16s %-6s" % (
                "PID", "COMM", "IP", "SADDR", "LPORT", "DADDR", "DPORT")
        else:
            line += "%-7s %-12s %-2s %-16s %-16s %-6s" % (
                "PID", "COMM", "IP", "SADDR", "DADDR", "DPORT")
        if cols.dns:
            # bcc prints " QUERY" after the padded DPORT: two spaces in all.
            line += " QUERY"
        return line

    def row(self, event: Event) -> str:
        cols = self.columns
        line = ""
        if cols.timestamp:
            line += "%-9.3f" % self._clock.seconds(event)
        if cols.uid:
            line += "%-6d" % event.uid
        saddr = format_address(event.family, event.saddr)
        daddr = format_address(event.family, event.daddr)
        if cols.lport:
            line += "%-7d %-12.12s %-2d %-16s %-6d %-16s %-6d" % (
                event.pid, comm_text(event), event.family, saddr, event.lport, daddr,
                event.dport)
        else:
            line += "%-7d %-12.12s %-2d %-16s %-16s %-6d" % (
                event.pid, comm_text(event), event.family, saddr, daddr, event.dport)
        # bcc ends every row with a space and the QUERY column, empty
        # without -d; parsers that split on single spaces expect it.
        query = escape(self._query(event)) if self._query is not None else ""
        return line + " " + query


class JsonFormatter:
    """One JSON object per line; optional fields follow the same options as
    the text columns."""

    def __init__(self, columns: Columns, query: Callable[[Event], str] | None = None) -> None:
        self.columns = columns
        self._query = query
        self._clock = RelativeClock()

    def header(self) -> None:
        return None

    def row(self, event: Event) -> str:
        record: dict[str, object] = {}
        if self.columns.timestamp:
            record["time"] = round(self._clock.seconds(event), 6)
        record.update(
            uid=event.uid,
            pid=event.pid,
            tid=event.tid,
            comm=event.comm.decode("utf-8", "backslashreplace"),
            ip=event.family,
            saddr=format_address(event.family, event.saddr),
        )
        if self.columns.lport:
            record["lport"] = event.lport
        record.update(
            daddr=format_address(event.family, event.daddr),
            dport=event.dport,
            cgroup_id=event.cgroup_id,
            mntns_id=event.mntns_id,
        )
        if self._query is not None:
            record["query"] = self._query(event)
        # ensure_ascii keeps control characters escaped for terminals.
        return json.dumps(record, ensure_ascii=True)


def count_rows(counts: Iterable[tuple[CountKey, int]]) -> list[str]:
    """bcc's -c table body: IPv4 first, then IPv6, each busiest first.
    Ties go by destination, source and port (as numbers), so the same counts
    always print the same table whatever order the kernel hands them in."""
    ordered = sorted(counts, key=lambda item: (
        item[0].family != 4, -item[1], bytes(item[0].daddr), bytes(item[0].saddr),
        item[0].dport))
    return ["%-25s %-25s %-20s %-10d" % (
        format_address(key.family, key.saddr), format_address(key.family, key.daddr),
        key.dport, count) for key, count in ordered]
