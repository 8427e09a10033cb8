"""--metrics: the in-kernel connect counts as a Prometheus exporter.

The kernel counts connects in the -c tables, keyed on just the fields the
chosen labels need (see plan.COUNT_FIELDS). Here the tables are drained
once a second and at every scrape, never per connect, into cumulative
counters by label values. Their number is capped: a connect whose label
values would make a new series past the cap is counted in the one series
whose labels are all "other" (and in tcpconnect_series_dropped_total), so
connects to random addresses cannot grow this process without bound; the
kernel's table has a fixed capacity of its own (tcpconnect_uncounted_connects_total).

prometheus_client and the WSGI server are imported only when the exporter
starts: the rest of the tool, option parsing included, does not need them, and
every run imports this module for ExporterError (the server's imports were a
third of the default mode's start-up).
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, Sequence

from .attribution import CgroupResolver
from .events import CountKey
from .exe_label import UNKNOWN, ExeLabel
from .outcome import result_name
from .output import Attribute, escape
from .plan import ADDRESS_COUNT_FIELDS
from .records import format_address

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .dns import DnsCache
    from .tracer import Tracer
    from .web_config import WebConfig

DEFAULT_LABELS = ("comm", "daddr", "dport")
DEFAULT_MAX_SERIES = 10_000
# How often the run loop drains the kernel tables between scrapes: a table
# holds COUNT_CAPACITY keys, so it fills only past that many new keys a second.
DRAIN_SECONDS = 1.0
OTHER = "other"
# Label values longer than this (after escaping) are cut: a cgroup, and so a
# unit, may be named with up to 255 bytes by anyone who can make one.
LABEL_VALUE_MAX = 128


class Sources(NamedTuple):
    """What an exporter's label values are looked up in."""

    attribute: Attribute  # cgroup id -> attribution (container, unit)
    exe: ExeLabel | None  # with the exe label


class Label(NamedTuple):
    """A label of tcpconnect_connects_total: the count_key fields the kernel
    must fill for it, and a factory of the function giving its value for a
    key, called once per exporter with its Sources. Values are computed once
    per kernel key and drain."""

    fields: frozenset[str]
    make: Callable[[Sources], Callable[[CountKey], str]]


LABELS: dict[str, Label] = {
    # Raw text: every value is escaped once, as it is drained (_label_value).
    "comm": Label(frozenset({"comm"}), lambda _: lambda key: bytes(key.comm).split(
        b"\0", 1)[0].decode("utf-8", "surrogateescape")),
    "saddr": Label(frozenset({"saddr"}),
                   lambda _: lambda key: format_address(key.family, bytes(key.saddr))),
    "daddr": Label(frozenset({"daddr"}),
                   lambda _: lambda key: format_address(key.family, bytes(key.daddr))),
    "dport": Label(frozenset({"dport"}), lambda _: lambda key: str(key.dport)),
    "uid": Label(frozenset({"uid"}), lambda _: lambda key: str(key.uid)),
    # From the cgroup id, as --container and -j name them; "" where the
    # cgroup names none.
    "container": Label(frozenset({"cgroup"}), lambda sources: lambda key: sources.attribute(
        key.cgroup_id).container_id or ""),
    "unit": Label(frozenset({"cgroup"}),
                  lambda sources: lambda key: sources.attribute(key.cgroup_id).unit or ""),
    # The executable's path (exe_label.py): an exporter with this label has sources.exe.
    "exe": Label(frozenset({"exe"}), lambda sources: sources.exe.value),
    # Needs --outcome, which counts each attempt when it ends.
    "result": Label(frozenset(), lambda _: lambda key: result_name(key.outcome, key.error)),
}


def count_fields(labels: tuple[str, ...], table: bool) -> frozenset[str]:
    """The count_key fields the kernel fills: those of the labels, and -c's
    own when its table is printed too."""
    fields = frozenset().union(*(LABELS[name].fields for name in labels))
    return fields | ADDRESS_COUNT_FIELDS if table else fields


class Tally:
    """Counts by key for at most `limit` distinct keys; what comes for any
    further key is added to `overflow` instead."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict = {}
        self.overflow = 0

    def add(self, key: object, n: int) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += n
        elif len(counts) < self.limit:
            counts[key] = n
        else:
            self.overflow += n


def _table_key(key: CountKey) -> bytes:
    """-c's part of a key (addresses, port and, with --outcome, the result)
    as bytes: the key -c's table adds up by when the kernel keys on more
    fields."""
    return bytes(CountKey(saddr=key.saddr, daddr=key.daddr, dport=key.dport, family=key.family,
                          outcome=key.outcome, error=key.error))


class ExporterError(Exception):
    """The exporter cannot serve (address in use, not local, unknown host)."""


def _bind(host: str, port: int, app: Callable, web: WebConfig | None) -> WSGIServer:
    """prometheus-client's threaded WSGI server, bound but not yet serving:
    start_http_server would also start its thread, which would then keep
    the capabilities the tracer drops once attached (they are per thread,
    and each request's thread inherits the server thread's). With
    --web-config, behind basic authentication and TLS (web_config.py)."""
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    if web is not None and web.users:
        from .web_config import BasicAuth, guarded

        app = guarded(app, BasicAuth(web.users))
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {
        "address_family": family, "handle_error": _ignore_error})
    server = make_server(host, port, app, server_class, handler_class=_quiet_handler())
    if web is not None and web.tls is not None:
        # The handshake happens on the request's own thread, at its first
        # read: a client that never finishes one holds only that thread.
        server.socket = web.tls.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
    return server


def _ignore_error(self: object, request: object, client_address: object) -> None:
    """A client that goes away, or fails the TLS handshake, is its own
    business: no traceback on the tracer's stderr."""


def _quiet_handler() -> type:
    """A request handler that writes no line on stderr per scrape and drops
    a client silent for 10 s."""
    from wsgiref.simple_server import WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        timeout = 10

        def log_message(self, format: str, *args: object) -> None:
            pass

    return QuietHandler


class Exporter:
    """The HTTP server and the collector behind it. The server is bound when
    this is made, before anything is loaded, so a port in use fails at once;
    it serves from then on, or with serving=False from serve() on."""

    def __init__(self, host: str, port: int, labels: tuple[str, ...], max_series: int,
                 table_capacity: int | None = None, serving: bool = True,
                 web: WebConfig | None = None, reads_ring: bool = True) -> None:
        """reads_ring: no rows are read, so the exporter reads the events
        ring for the executables' paths itself; otherwise they are handed
        to note_exe_paths()."""
        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        self.labels = labels
        # Its own resolver, not the rows': scrapes run on the server's thread.
        self._resolver = CgroupResolver()
        self._exe = ExeLabel(self._forget_exe) if "exe" in labels else None
        self._reads_ring = reads_ring
        self._values = [LABELS[name].make(Sources(self._resolver.lookup, self._exe))
                        for name in labels]
        self._series = Tally(max_series)
        # -c's table, when it is printed beside the metrics: both come from
        # the same drains, as a table read is also a reset.
        self._table = Tally(table_capacity) if table_capacity is not None else None
        self._lock = threading.Lock()
        self._tracer: Tracer | None = None
        self._dns_cache: DnsCache | None = None
        self._next_drain = 0.0
        self._cut_values = 0
        registry = CollectorRegistry(auto_describe=False)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
        registry.register(self)
        self._thread: threading.Thread | None = None
        try:
            self._server = _bind(host, port, make_wsgi_app(registry), web)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ExporterError(f"--metrics {where}: {exc.strerror or exc}") from None
        if serving:
            self.serve()

    def serve(self) -> None:
        """Starts answering scrapes, on a thread of its own."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        self._resolver.close()

    @contextmanager
    def watching(self, tracer: Tracer, dns_cache: DnsCache | None) -> Iterator[Exporter]:
        """Serves the tracer's counts while inside; left before the tracer
        closes, so a scrape in flight never reads a closed object."""
        with self._lock:
            self._tracer, self._dns_cache = tracer, dns_cache
        try:
            yield self
        finally:
            with self._lock:
                self._tracer = self._dns_cache = None

    def _forget_exe(self, dev: int, ino: int) -> None:
        if self._tracer is not None:
            self._tracer.forget_exe(dev, ino)

    def note_exe_paths(self, records: Sequence[tuple]) -> None:
        """The executables' paths the rows' reader took from the ring."""
        if self._exe is not None and records:
            with self._lock:
                self._exe.note(records)

    def drain_due(self) -> None:
        """Drains the kernel's table if DRAIN_SECONDS have passed since the last time."""
        now = time.monotonic()
        if now >= self._next_drain:
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        self._next_drain = time.monotonic() + DRAIN_SECONDS
        if self._tracer is None:
            return
        values, series, table = self._values, self._series, self._table
        counts = self._tracer.take_counts()
        if table is not None:
            for key, n in counts:
                table.add(_table_key(key), n)
        if self._exe is not None:
            # After the counts: every path sent before them is in the ring.
            if self._reads_ring:
                self._exe.note(self._tracer.take_exe_paths())
            counts = self._exe.settle(counts)
        for key, n in counts:
            series.add(tuple(self._label_value(value(key)) for value in values), n)

    def _label_value(self, text: str) -> str:
        """A label value as the scraper may see it: escaped like the text
        output (no control characters; prometheus-client escapes only \\,
        newline and "), and cut at LABEL_VALUE_MAX, which is counted."""
        text = escape(text)
        if len(text) > LABEL_VALUE_MAX:
            self._cut_values += 1
            text = text[:LABEL_VALUE_MAX]
        return text

    def take_table(self) -> tuple[list[tuple[CountKey, int]], int]:
        """-c's table since the last call, and how many connects did not fit
        in it; then starts a new one."""
        assert self._table is not None
        with self._lock:
            self._drain()
            table, self._table = self._table, Tally(self._table.limit)
        return ([(CountKey.from_buffer_copy(key), n) for key, n in table.counts.items()],
                table.overflow)

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily

        with self._lock:
            self._drain()
            series = dict(self._series.counts)
            dropped = self._series.overflow
            cut = self._cut_values
            exe_unknown = self._exe.unknown if self._exe is not None else None
            losses = self._tracer.losses() if self._tracer is not None else None
            filtered = self._tracer.filtered() if self._tracer is not None else None
            dns_cache = self._dns_cache
        if dropped:
            # A process may be called "other" itself: one series, not two
            # with the same labels (Prometheus refuses a scrape with those).
            other = (OTHER,) * len(self.labels)
            series[other] = series.get(other, 0) + dropped
        connects = CounterMetricFamily(
            "tcpconnect_connects", "Active TCP connect attempts traced.", labels=self.labels)
        for values, n in series.items():
            connects.add_metric(values, n)
        yield connects
        yield CounterMetricFamily(
            "tcpconnect_series_dropped",
            "Connects counted in the 'other' series: their label values would have made "
            "a series past --metrics-max-series.", value=dropped)
        yield CounterMetricFamily(
            "tcpconnect_label_values_cut",
            f"Label values cut to {LABEL_VALUE_MAX} characters (once per count key drained "
            "with one).", value=cut)
        if exe_unknown is not None:
            yield CounterMetricFamily(
                "tcpconnect_exe_unknown_connects",
                f"Connects counted with exe=\"{UNKNOWN}\": the path of their executable was not "
                "known (its record lost, or forgotten by a full cache); it is asked for again.",
                value=exe_unknown)
        if losses is None:
            return
        lost = CounterMetricFamily(
            "tcpconnect_lost_events", "Records the kernel could not queue (ring buffer full).",
            labels=["ring"])
        lost.add_metric(["events"], losses.events)
        lost.add_metric(["dns"], losses.dns_events)
        yield lost
        yield CounterMetricFamily(
            "tcpconnect_uncounted_connects",
            "Connects the kernel could not count (count table full).",
            value=losses.count_failures)
        yield CounterMetricFamily(
            "tcpconnect_skipped_program_runs",
            "Runs of the tracing programs the kernel skipped (a program already running on "
            "that CPU); what they would have counted is missing.", value=losses.skipped_runs)
        yield CounterMetricFamily(
            "tcpconnect_unfollowed_connect_calls",
            "connect() calls not followed (table full): a failure before SYN_SENT among "
            "them is missing.", value=losses.connect_call_failures)
        if filtered is not None:
            removed = CounterMetricFamily(
                "tcpconnect_filtered_connects",
                "Connect attempts a kernel-side filter removed, by the first filter that "
                "rejected each (pid, uid, comm, family, port, daddr, saddr, netns, cgroup, "
                "mntns).", labels=["filter"])
            for name, n in filtered.items():
                removed.add_metric([name], n)
            yield removed
        if dns_cache is not None:
            skipped = CounterMetricFamily(
                "tcpconnect_dns_responses_skipped",
                "DNS responses not used for -d: malformed, or refused as too costly to parse.",
                labels=["reason"])
            skipped.add_metric(["malformed"], dns_cache.malformed)
            skipped.add_metric(["refused"], dns_cache.refused)
            yield skipped
