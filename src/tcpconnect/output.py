"""Turns events and counts into bcc-compatible text lines, or JSON lines.

Events arrive in batches of decoded tuples (see events.RECORD_FORMAT) and
are formatted a batch at a time: one list comprehension per batch, holding
just the columns that are on. A traced host repeats few identities (a
thread connecting to a destination), so the text of their columns is made
once and kept; a row is one lookup, concatenated with the text of the
columns that vary from one connect to the next (times, the local port, the
outcome, the DNS name) when they are on. The text of process names,
addresses, cgroups, seconds and milliseconds is cached too.

TIME(s) is rounded half up to the millisecond. It counts from the first row
printed, and with -L a connect parked for its local port may be printed
after a later one: such a row shows a small negative time, and one less
than half a millisecond before the first shows 0.000 (bcc's float
formatting printed -0.000).
"""

from __future__ import annotations

import io
import itertools
import json
import re
from typing import Any, Callable, Iterable, NamedTuple, TextIO

from .attribution import Attribution
from .events import (
    CGROUP_ID,
    COMM,
    DADDR,
    DPORT,
    FAMILY,
    IDENTITY_BYTES,
    LPORT,
    MNTNS_ID,
    NETNS,
    NS_PID,
    NS_TID,
    PCOMM,
    PID,
    PPID,
    SADDR,
    TID,
    TS_NS,
    UID,
    CountKey,
)
from .cache import BoundedCache
from .exe import ExePaths
from .outcome import TEXT_HEADER as OUTCOME_HEADER
from .outcome import (
    COUNT_RESULT_HEADER,
    RESULT_WIDTH,
    JsonFields,
    TextColumns,
    count_key_result,
)
from .records import ADDRESS_TEXT, format_address, identities
from .wallclock import NS_PER_MS, NS_PER_SECOND, THREE_DIGITS, WallClock

BANNER = "Tracing connect ... Hit Ctrl-C to end"
COUNT_HEADER = "%-25s %-25s %-20s %-10s" % ("LADDR", "RADDR", "RPORT", "CONNECTS")
# A DNS query: the name (None when no answer held the address) and how long
# before the connect its answer arrived (None when the name is not from an
# answer: no query, or loopback's "localhost").
Query = tuple[str | None, int | None]
# What is known of a cgroup id (attribution.CgroupResolver.lookup).
Attribute = Callable[[int], Attribution]


def _unknown(_cgroup_id: int) -> Attribution:
    return Attribution()


def _no_query(_event: tuple) -> str:
    return ""


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


def json_text(text: str | None) -> str:
    if text is None:
        return "null"
    # Bytes that are not UTF-8 (surrogateescape from the file system) become
    # \xNN text, as in "comm".
    return json.dumps(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
                      ensure_ascii=True)


def exe_column(path: str) -> str:
    """The EXE column: padded, and like CONTAINER never cut."""
    return "%-24s" % escape(path)


def exe_column_paths(forget: Callable[[int, int], None] | None = None) -> ExePaths:
    return ExePaths(exe_column, "%-24s" % "?", forget)


def exe_json_paths(forget: Callable[[int, int], None] | None = None) -> ExePaths:
    return ExePaths(json_text, "null", forget)


def attribution_json(attribution: Attribution) -> str:
    a = attribution
    return (', "cgroup": %s, "unit": %s, "container_id": %s, "container_name": %s, '
            '"pod_uid": %s, "pod": %s, "namespace": %s' % tuple(map(json_text, (
                a.cgroup, a.unit, a.container_id, a.container_name, a.pod_uid, a.pod,
                a.namespace))))


class Columns(NamedTuple):
    timestamp: bool = False
    uid: bool = False
    ppid: bool = False
    exe: bool = False  # -X
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


# A row is pieces of (format, expression, varies), one or more per column.
# Most columns come from the connect's identity (events.IDENTITY: who
# connected, and where to), whose expressions see it decoded as `i`; those
# that vary from one connect to the next (times, the local port, the
# outcome, the DNS name) see the event as `e` and the batch's TIME(s)
# origin as `start`. Both see the field positions of events.py and the
# names a formatter passes. The format of a varying piece holds exactly one
# conversion; with "%s" its expression must give text.
RowPieces = list[tuple[str, str, bool]]
VARIES = True
_CONVERSION = re.compile(r"%[-0-9.]*[a-z]")


def _compile_rows(pieces: RowPieces, names: dict[str, Any]) -> Callable[[list[tuple], int],
                                                                          list[str]]:
    """One list comprehension over a batch holding exactly the columns that
    are on. The text between two varying columns is a segment; a segment
    that comes from the identity is formatted once per identity and kept,
    so a repeated connect costs a lookup and the concatenation of its
    segments with the varying columns. Concatenation, because %-format
    scans its whole template on every row: a JSON row cost 0.8 us that way,
    0.4 us concatenated. A comprehension that handled every column,
    printing the ones that are off as nothing, cost a row up to 0.6 us more;
    one per option combination would be dozens. The source is made from
    the fixed pieces in this module, never from input."""
    # The identity pieces of each segment, as (format, expression); a
    # literal's expression is empty.
    segments: list[list[tuple[str, str]]] = [[]]
    varying: list[str] = []
    for layout, value, varies in pieces:
        if not varies:
            segments[-1].append((layout, value))
            continue
        conversion = _CONVERSION.search(layout)
        assert conversion is not None and not _CONVERSION.search(layout, conversion.end())
        segments[-1].append((layout[:conversion.start()], ""))
        segments.append([(layout[conversion.end():], "")])
        varying.append(value if conversion[0] == "%s" else f"{conversion[0]!r} % ({value},)")
    kept = [n for n, segment in enumerate(segments) if any(value for _, value in segment)]
    identity_text = eval("lambda i: (%s,)" % ", ".join("''.join((%s,))" % ", ".join(
        f"{layout!r} % ({value},)" if value else repr(layout) for layout, value in segment)
        for segment in map(segments.__getitem__, kept)), {**_FIELD_POSITIONS, **names})
    if not varying:
        known = BoundedCache(lambda raw: identity_text(identities[raw])[0])
        return lambda events, start: [known[e[IDENTITY_BYTES]] for e in events]
    terms = []
    for n, (segment, value) in enumerate(itertools.zip_longest(segments, varying)):
        if n in kept:
            index = kept.index(n)
            terms.append(f"k[{index}]" if index else "(k := known[e[IDENTITY_BYTES]])[0]")
        elif literal := "".join(layout for layout, _ in segment):
            terms.append(repr(literal))
        if value is not None:
            terms.append(value)
    scope = {**_FIELD_POSITIONS, **names,
             "known": BoundedCache(lambda raw: identity_text(identities[raw]))}
    return eval(f"lambda events, start: [{' + '.join(terms)} for e in events]", scope)


def _when(enabled: bool, *pieces: tuple[str, str, bool]) -> RowPieces:
    return list(pieces) if enabled else []


_FIELD_POSITIONS = dict(
    TS_NS=TS_NS, LPORT=LPORT, IDENTITY_BYTES=IDENTITY_BYTES, CGROUP_ID=CGROUP_ID,
    MNTNS_ID=MNTNS_ID, SADDR=SADDR, DADDR=DADDR, PID=PID, TID=TID, UID=UID, NETNS=NETNS,
    PPID=PPID, NS_PID=NS_PID, NS_TID=NS_TID, DPORT=DPORT, FAMILY=FAMILY, COMM=COMM, PCOMM=PCOMM,
    NS_PER_SECOND=NS_PER_SECOND)


class _CompiledFormatter:
    """Rows from the comprehension a subclass compiled into `_rows`."""

    columns: Columns
    exe: ExePaths
    _clock: RelativeClock
    _rows: Callable[[list[tuple], int], list[str]]

    def rows(self, events: list[tuple]) -> list[str]:
        if not events:
            return []
        return self._rows(events, self._clock.start_ns(events) if self.columns.timestamp else 0)


class TextColumn(NamedTuple):
    """A text column: the Columns field that turns it on (None: always on),
    its header and its row pieces (see RowPieces), whose expressions see the
    names TextFormatter passes."""

    option: str | None
    header: str
    pieces: RowPieces


# bcc's columns in bcc's order; header and row widths side by side. bcc ends
# every row with a space and the QUERY column, empty without -d; parsers that
# split on single spaces expect it; its header has " QUERY" after the padded
# DPORT: two spaces in all.
TEXT_COLUMNS = (
    TextColumn("time_of_day", "%-8s " % "TIME",
               [("%s ", "local[(e[TS_NS] + offset) // NS_PER_SECOND]", VARIES)]),
    TextColumn("timestamp", "%-9s" % "TIME(s)",
               [("%s", "seconds[(e[TS_NS] - start + 500_000) // 1_000_000]", VARIES)]),
    TextColumn("uid", "%-6s" % "UID", [("%-6d", "i[UID]", not VARIES)]),
    TextColumn(None, "%-7s %-12s " % ("PID", "COMM"),
               [("%-7d %s ", "i[PID], comm[i[COMM]]", not VARIES)]),
    TextColumn("ppid", "%-7s " % "PPID", [("%-7d ", "i[PPID]", not VARIES)]),
    TextColumn("exe", "%-24s " % "EXE", [("%s ", "exe(e)", VARIES)]),
    TextColumn("container", "%-16s " % "CONTAINER",
               [("%s", "container[i[CGROUP_ID]]", not VARIES)]),
    TextColumn(None, "%-2s %-16s " % ("IP", "SADDR"),
               [("%-2d %-16s ", "i[FAMILY], addr[i[FAMILY]][i[SADDR]]", not VARIES)]),
    TextColumn("lport", "%-6s " % "LPORT", [("%s ", "ports[e[LPORT]]", VARIES)]),
    TextColumn(None, "%-16s %-6s" % ("DADDR", "DPORT"),
               [("%-16s %-6d ", "addr[i[FAMILY]][i[DADDR]], i[DPORT]", not VARIES)]),
    TextColumn("outcome", " " + OUTCOME_HEADER, [("%s", "text_columns(e)", VARIES)]),
    TextColumn("dns", " QUERY", [("%s", "escape_query(query(e))", VARIES)]),
)


class TextFormatter(_CompiledFormatter):
    """bcc's layout, column for column, so existing parsers keep working."""

    def __init__(self, columns: Columns, query: Callable[[tuple], str] | None = None,
                 attribute: Attribute | None = None, clock: RelativeClock | None = None,
                 wall: WallClock | None = None, exe: ExePaths | None = None) -> None:
        self.columns = columns
        self.exe = exe or exe_column_paths()
        self._clock = clock or RelativeClock()
        self._wall = wall or WallClock()
        # bcc's COMM is cut to 12 characters; the escaped text is cut, as bcc
        # cuts what it prints.
        comm = BoundedCache(lambda raw: "%-12.12s" % comm_text(raw))
        # TIME(s) by the millisecond since `start` (rounded half up): a
        # float's %-format cost more than the rest of a row, and a busy host
        # connects many times a millisecond.
        seconds = BoundedCache(lambda ms: "%-9.3f" % (ms / 1000))
        # LPORT's text of every port, made once (13 ms, 4 MB): a busy host
        # cycles through thousands of local ports, and a cache of them cost
        # more in misses than it saved.
        ports = [str(port).ljust(6) for port in range(1 << 16)] if columns.lport else []
        known = attribute or _unknown
        container = BoundedCache(lambda cgroup_id: container_text(known(cgroup_id)) + " ")
        query = query or _no_query
        on = [column for column in TEXT_COLUMNS if column.option is None
              or getattr(columns, column.option)]
        self._header = "".join(column.header for column in on)
        self._rows = _compile_rows([piece for column in on for piece in column.pieces], dict(
            local=self._wall.local_seconds, offset=self._wall.offset_ns, comm=comm,
            seconds=seconds, ports=ports, container=container, addr=ADDRESS_TEXT,
            text_columns=TextColumns(), escape_query=escape_query, query=query,
            exe=self.exe.text))

    def header(self) -> str:
        return self._header


class JsonFormatter(_CompiledFormatter):
    """One JSON object per line; optional fields follow the same options as
    the text columns. Rows are built from a template rather than json.dumps
    of a dict (several times the cost); every string in them comes from
    json.dumps or inet_ntop, so they are valid JSON all the same."""

    def __init__(self, columns: Columns, query: Callable[[tuple], Query] | None = None,
                 attribute: Attribute | None = None, clock: RelativeClock | None = None,
                 wall: WallClock | None = None, exe: ExePaths | None = None,
                 args: Callable[[tuple], str] | None = None) -> None:
        self.columns = columns
        self.exe = exe or exe_json_paths()
        known = attribute or _unknown
        attribution = BoundedCache(lambda cgroup_id: attribution_json(known(cgroup_id)))
        self._clock = clock or RelativeClock()
        self._wall = wall or WallClock()
        # With the key before it: one concatenation less per row.
        stamps = BoundedCache(lambda ms: '{"timestamp": "' + self._wall.utc_milliseconds[ms])
        # ensure_ascii keeps control characters escaped for terminals.
        comm = BoundedCache(lambda raw: json.dumps(
            raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace"), ensure_ascii=True))
        self._rows = _compile_rows([
            # WallClock.rfc3339, inlined; `wall` is the event's time in ns.
            ("%s", "stamps[(wall := e[TS_NS] + offset) // NS_PER_MS]", VARIES),
            ('%sZ", ', "THREE_DIGITS[wall // 1000 % 1000]", VARIES),
            *_when(columns.timestamp,
                   ('"time": %r, ', "round((e[TS_NS] - start) / 1e9, 6)", VARIES)),
            ('"uid": %d, "pid": %d, "tid": %d, "comm": %s, "ppid": %d, "pcomm": %s, '
             '"ns_pid": %d, "ns_tid": %d, "ip": %d, "saddr": "%s", ',
             "i[UID], i[PID], i[TID], comm[i[COMM]], i[PPID], comm[i[PCOMM]], i[NS_PID], "
             "i[NS_TID], i[FAMILY], addr[i[FAMILY]][i[SADDR]]", not VARIES),
            *_when(columns.lport, ('"lport": %s, ', "str(e[LPORT])", VARIES)),
            ('"daddr": "%s", "dport": %d, "cgroup_id": %d, "mntns_id": %d, "netns": %d%s',
             "addr[i[FAMILY]][i[DADDR]], i[DPORT], i[CGROUP_ID], i[MNTNS_ID], i[NETNS], "
             "attribution[i[CGROUP_ID]]", not VARIES),
            (', "exe": %s', "exe(e)", VARIES),
            *_when(args is not None, (', "args": %s', "args(e)", VARIES)),
            *_when(columns.outcome, ("%s", "json_fields(e)", VARIES)),
            *_when(query is not None, ("%s", "_query_fields(*query(e))", VARIES)),
            ("}", "", not VARIES),
        ], dict(stamps=stamps, THREE_DIGITS=THREE_DIGITS, NS_PER_MS=NS_PER_MS,
                offset=self._wall.offset_ns, comm=comm,
                addr=ADDRESS_TEXT, attribution=attribution, json_fields=JsonFields(),
                _query_fields=_query_fields, query=query, exe=self.exe.text, args=args))

    def header(self) -> None:
        return None


def _query_fields(name: str | None, age_ns: int | None) -> str:
    return ', "query": %s, "query_age_ms": %s' % (
        "null" if name is None else json.dumps(name, ensure_ascii=True),
        "null" if age_ns is None else repr(round(age_ns / 1e6, 3)))


def whole_writes(stream: TextIO) -> TextIO:
    """A text stream that writes all it is given. With PYTHONUNBUFFERED
    (or -u), common in container images, stdout's text layer writes straight
    to the file and ignores a short write: a signal that interrupts a write
    to a full pipe would silently drop the rest of the batch. A buffered
    layer in between retries until everything is written. Its own file
    object leaves the descriptor open and sys.stdout untouched."""
    if not isinstance(getattr(stream, "buffer", None), io.RawIOBase):
        return stream
    raw = io.FileIO(stream.fileno(), "w", closefd=False)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding=stream.encoding,
                            errors=stream.errors)


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
        return ["%-25s %-25s %-20s %-*s %-10d" % (
            format_address(key.family, bytes(key.saddr)),
            format_address(key.family, bytes(key.daddr)), key.dport, RESULT_WIDTH,
            count_key_result(key), count)
            for key, count in ordered]
    return ["%-25s %-25s %-20s %-10d" % (
        format_address(key.family, bytes(key.saddr)), format_address(key.family, bytes(key.daddr)),
        key.dport, count) for key, count in ordered]
