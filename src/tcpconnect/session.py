"""One tracing run: wires the tracer to the formatters and the terminal."""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Protocol, TextIO

from .attribution import CgroupResolver
from .cause import drop_reasons
from .cmdline import CommandLines
from .events import DNS_TS_NS, TS_NS
from .heap import keep_batch_buffers
from .loss_records import loss_records
from .outcome import counts_with_pending
from .output import (
    BANNER,
    Columns,
    JsonFormatter,
    RelativeClock,
    TextFormatter,
    count_header,
    count_rows,
    exe_column_paths,
    exe_json_paths,
    tolerate_unencodable,
    whole_writes,
)
from .plan import TracerConfig
from .privileges import PrivilegeError, drop_after_attach
from .records import destination, dns_message
from .tracer import Batch, LossCounters, Tracer

if TYPE_CHECKING:  # dns needs dnslib, imported only for -d; metrics prometheus_client
    from .dns import DnsCache
    from .events import CountKey
    from .metrics import Exporter

# Upper bound on how long an event waits before it is printed while the
# kernel side is not waking us (it does only for batches).
POLL_TIMEOUT_MS = 10
# While connects come fast (a batch of BUSY_BATCH or more), the reader waits
# longer and takes bigger batches: on a VM every wakeup finds the vCPU's
# caches cold, which cost more per row than the rows' own work (see
# docs/performance.md). The display latency stays under 50 ms.
BUSY_POLL_TIMEOUT_MS = 40
BUSY_BATCH = 64
# After this many polls in a row found nothing, the reader sleeps until the
# kernel side wakes it at the next record (Tracer.sleep): an idle tracer
# wakes 4 times a second, not 100. The timeout bounds how late a record
# whose program missed the hand-over is shown (ringbuf/waiter.py).
IDLE_AFTER_POLLS = 20
IDLE_TIMEOUT_MS = 250
# How often count mode looks at the clock (-i) and for a stop request.
COUNT_CHECK_SECONDS = 0.1


# What each loss counter's total says at exit; {missing} is what a connect
# reported without waiting lacks.
TOTAL_MESSAGES = (
    ("events", "Lost {} events in total"),
    ("dns_events", "Lost {} DNS responses in total"),
    ("skipped_runs", "The kernel skipped {} runs of the tracing programs in total (a program "
                     "already running on that CPU): the connects, packets or answers they "
                     "would have seen are missing"),
    ("count_failures", "{} connects could not be counted (count table full)"),
    ("pending_failures", "{} connects were reported without their {missing} (pending table "
                         "full)"),
    ("connect_call_failures", "{} connect() calls were not followed (table of calls full): any "
                              "of them that failed before sending a SYN is missing"),
    ("dns_unreadable", "{} DNS responses could not be read: their payload was in page "
                       "fragments, which tracing programs on this kernel cannot read (Linux "
                       "6.12 can)"),
    ("exe_records", "{} paths of executables found no room in the ring: the rows (and the "
                    "metrics' exe label) before each was sent again show no executable"),
    ("dns_uncheckable", "{} received packets were not checked for DNS responses: their headers "
                        "were in page fragments, which tracing programs on this kernel cannot "
                        "read (Linux 6.12 can)"),
)


# The options behind each kernel-side filter (events.FILTERS), for
# --filter-counts.
FILTER_OPTIONS = {
    "pid": "-p", "uid": "-u", "comm": "--comm", "family": "-4/-6", "port": "-P/--exclude-port",
    "daddr": "--daddr/--exclude-daddr", "saddr": "--saddr/--exclude-saddr", "netns": "--netns",
    "cgroup": "--cgroup/--cgroupmap", "mntns": "--mntnsmap",
}


class Stop(Protocol):
    requested: bool
    # Readable once a stop may have been requested (a signal came), or None.
    wakeup_fd: int | None


def tracer_config(args: argparse.Namespace) -> TracerConfig:
    extra = {}
    if args.metrics:
        from .metrics import count_fields

        extra = dict(count_fields=count_fields(args.metrics_labels, args.count),
                     events_with_counts=not (args.count or args.quiet))
    return TracerConfig(
        pid=args.pid,
        uid=args.uid,
        family=4 if args.ipv4 else 6 if args.ipv6 else None,
        ports=args.port or (),
        count=args.count or bool(args.metrics),
        **extra,
        lport=args.lport,
        dns=args.dns,
        cgroup_id=args.cgroup_id,
        netns=args.netns,
        cgroup_map=args.cgroupmap,
        mntns_map=args.mntnsmap,
        btf_path=args.btf,
        timestamps=args.timestamp or args.dns or args.json or args.time,
        task_ids=args.json or args.container,
        lineage=args.json or args.ppid,
        exe=args.json or args.exe,
        outcome=args.outcome,
        failed_only=args.failed,
        exclude_ports=tuple(args.exclude_port or ()),
        comms=tuple(dict.fromkeys(args.comm or ())),
        daddr_include=tuple(dict.fromkeys(args.daddr or ())),
        daddr_exclude=tuple(dict.fromkeys(args.exclude_daddr or ())),
        saddr_include=tuple(dict.fromkeys(args.saddr or ())),
        saddr_exclude=tuple(dict.fromkeys(args.exclude_saddr or ())),
    )


class Session:
    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO,
                 least_privilege: bool = False) -> None:
        """least_privilege: drop the capabilities reading does not need once
        attached (the tool's own process; a test running a session inside
        its own process keeps them for what it does next)."""
        self.args = args
        self._least_privilege = least_privilege
        self.out = tolerate_unencodable(whole_writes(out))
        self.err = tolerate_unencodable(whole_writes(err))
        self._reported = LossCounters(0, 0, 0, 0)
        self._dns_cache = None
        self._exporter: Exporter | None = None
        # Connects left out of the -c tables taken from the exporter, in all.
        self._table_missing = 0
        columns = Columns(timestamp=args.timestamp, uid=args.print_uid, ppid=args.ppid,
                          exe=args.exe, lport=args.lport,
                          dns=args.dns, container=args.container, outcome=args.outcome,
                          time_of_day=args.time)
        if args.btf:
            # --outcome's drop reasons are named from the running kernel's BTF.
            drop_reasons.btf_path = args.btf
        self._resolver = CgroupResolver() if args.json or args.container else None
        attribute = self._resolver.lookup if self._resolver else None
        # With --outcome rows come as attempts end, not in the order they
        # began: -t counts from the start of tracing instead of the first row.
        clock = RelativeClock(time.monotonic_ns() if args.outcome else None)
        self._tracer: Tracer | None = None
        exe = (exe_json_paths if args.json else exe_column_paths)(self._forget_exe)
        self._command_lines = CommandLines(exe.paths) if args.args else None
        json_extra = dict(args=self._command_lines.json) if self._command_lines else {}
        if not args.dns:
            if args.json:
                self.formatter = JsonFormatter(columns, attribute=attribute, clock=clock, exe=exe,
                                               **json_extra)
            else:
                self.formatter = TextFormatter(columns, attribute=attribute, clock=clock, exe=exe)
            return
        from .dns import DnsCache, query_column, query_of

        cache = self._dns_cache = DnsCache()
        if args.json:
            self.formatter = JsonFormatter(columns, lambda e: query_of(
                cache, *destination(e), e[TS_NS]),
                attribute=attribute, clock=clock, exe=exe, **json_extra)
        else:
            self.formatter = TextFormatter(columns, lambda e: query_column(
                cache, *destination(e), e[TS_NS]),
                attribute=attribute, clock=clock, exe=exe)

    def _forget_exe(self, dev: int, ino: int) -> None:
        if self._tracer is not None:
            self._tracer.forget_exe(dev, ino)

    def run(self, stop: Stop) -> int:
        config = tracer_config(self.args)
        with ExitStack() as stack:
            if self._resolver is not None:
                stack.callback(self._resolver.close)
            if self.args.metrics:
                from .metrics import Exporter

                host, port = self.args.metrics
                self._exporter = Exporter(host, port, self.args.metrics_labels,
                                          self.args.metrics_max_series,
                                          config.count_capacity if self.args.count else None,
                                          serving=False, web=self.args.web_config,
                                          reads_ring=bool(self.args.count or self.args.quiet))
                stack.callback(self._exporter.close)
            tracer = self._tracer = stack.enter_context(Tracer(config))
            if tracer.connect_calls_unseen:
                self._warn("tcpconnect: connect() calls that fail before a SYN is sent (no route, "
                           "refused by a cgroup BPF program or an LSM) are not traced: "
                           + tracer.connect_calls_unseen)
            if self._least_privilege:
                self._drop_capabilities()
            if self._exporter is not None:
                stack.enter_context(self._exporter.watching(tracer, self._dns_cache))
                self._exporter.serve()
            if self.args.json:
                # Keeps stdout pure JSON Lines.
                self._warn(BANNER)
            else:
                self._write([BANNER])
            if self._dns_cache is not None:
                self._dns_cache.load_parser()
            if self.args.count or self.args.quiet:
                self._count_loop(tracer, stop)
            else:
                keep_batch_buffers()
                header = self.formatter.header()
                self._write([header] if header else [])
                if stop.wakeup_fd is not None:
                    tracer.wake_on(stop.wakeup_fd)
                timeout_ms = POLL_TIMEOUT_MS
                empty_polls = 0
                while not stop.requested:
                    if empty_polls < IDLE_AFTER_POLLS:
                        batch = tracer.poll(timeout_ms)
                    else:
                        batch = tracer.sleep(IDLE_TIMEOUT_MS)
                    self._emit(batch, tracer)
                    timeout_ms = (BUSY_POLL_TIMEOUT_MS if len(batch.events) >= BUSY_BATCH
                                  else POLL_TIMEOUT_MS)
                    empty_polls = 0 if batch.events or batch.answers else empty_polls + 1
                    if self._exporter is not None:
                        self._exporter.drain_due()
                self._emit(tracer.finish(), tracer)
            self._report_totals(self._with_table_missing(tracer.losses()))
            if self.args.filter_counts:
                self._report_filtered(tracer.filtered())
        return 0

    def _drop_capabilities(self) -> None:
        """Everything is attached and open: keep only what reading needs (see
        privileges.py). Before the exporter's thread exists, so that it and
        the threads of its requests hold no more."""
        attribution = self._resolver is not None or bool(self.args.metrics)
        try:
            drop_after_attach(attribution, command_lines=self._command_lines is not None)
        except PrivilegeError as exc:
            self._warn(f"tcpconnect: could not drop capabilities after attaching "
                       f"({exc.strerror}); running with those it started with")

    def _count_loop(self, tracer: Tracer, stop: Stop) -> None:
        interval = self.args.interval
        deadline = time.monotonic() + interval if interval else None
        while not stop.requested:
            # Counting sends nothing through the ring; just sleep between checks.
            time.sleep(COUNT_CHECK_SECONDS)
            if self._exporter is not None:
                self._exporter.drain_due()
            if deadline is not None and time.monotonic() >= deadline:
                deadline += interval
                # Read before the swap: a failure racing it (one program per
                # CPU at most) shows with the next table; the end total is exact.
                losses = tracer.losses()
                self._print_counts(tracer)
                self._report_uncounted(self._with_table_missing(losses))
        if not self.args.count:
            return
        losses = tracer.losses()
        self._print_counts(tracer, final=True)
        if interval:
            self._report_uncounted(self._with_table_missing(losses))

    def _print_counts(self, tracer: Tracer, final: bool = False) -> None:
        outcome = self.args.outcome
        # The attempts still under way count as `pending` in the last table.
        pending = []
        if outcome and final:
            tracer.stop()
            pending = tracer.take_pending()
        counts = counts_with_pending(self._take_counts(tracer), pending)
        # -i's tables follow one another: each starts with the local time it
        # was taken, as bcc's interval tools print it. -c alone keeps bcc's
        # tcpconnect layout.
        stamp = [time.strftime("%H:%M:%S")] if self.args.interval else []
        self._write(["", *stamp, count_header(outcome), *count_rows(counts, outcome)])

    def _take_counts(self, tracer: Tracer) -> list[tuple[CountKey, int]]:
        if self._exporter is None:
            return tracer.take_counts()
        # With --metrics the exporter drains the kernel's tables for both;
        # what did not fit in its copy of the table is reported as missing.
        counts, missing = self._exporter.take_table()
        self._table_missing += missing
        return counts

    def _with_table_missing(self, losses: LossCounters) -> LossCounters:
        return losses._replace(
            count_failures=losses.count_failures + self._table_missing)

    def _report_uncounted(self, now: LossCounters) -> None:
        # Each table starts empty, so a full one is reported with the table
        # it left incomplete; the end of the run reports the total.
        missed = now.count_failures - self._reported.count_failures
        if missed:
            self._warn(f"{missed} connects are missing from this table (count table full)")
        self._reported = self._reported._replace(count_failures=now.count_failures)

    def _emit(self, batch: Batch, tracer: Tracer) -> None:
        self.formatter.exe.note(batch.exe_paths)
        if self._exporter is not None:
            self._exporter.note_exe_paths(batch.exe_paths)
        if self._dns_cache is not None and batch.answers:
            rows = self._rows_after_answers(batch, self._dns_cache)
        else:
            rows = self.formatter.rows(batch.events)
        self._write(rows)
        self._report_losses(tracer.losses())

    def _rows_after_answers(self, batch: Batch, cache: DnsCache) -> list[str]:
        """Formats the batch's connects, each after exactly the answers the
        kernel received before it: an answer in the same batch may be the
        one a connect used, a later one cannot be. Connects between two
        answers are formatted together."""
        answers = sorted(batch.answers, key=lambda r: r[DNS_TS_NS])
        events = batch.events
        rows: list[str] = []
        taken = done = 0
        for i, event in enumerate(events):
            if taken < len(answers) and answers[taken][DNS_TS_NS] <= event[TS_NS]:
                rows += self.formatter.rows(events[done:i])
                done = i
                while taken < len(answers) and answers[taken][DNS_TS_NS] <= event[TS_NS]:
                    cache.record(dns_message(answers[taken]), answers[taken][DNS_TS_NS])
                    taken += 1
        rows += self.formatter.rows(events[done:])
        for answer in answers[taken:]:
            cache.record(dns_message(answer), answer[DNS_TS_NS])
        return rows

    def _write(self, lines: list[str]) -> None:
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()

    def _report_losses(self, now: LossCounters) -> None:
        before = self._reported
        if self.args.json:
            self._write(loss_records(before, now))
        if now.events > before.events:
            self._warn(f"Possibly lost {now.events - before.events} events")
        if now.dns_events > before.dns_events:
            self._warn(f"Possibly lost {now.dns_events - before.dns_events} DNS responses")
        if now.skipped_runs > before.skipped_runs:
            self._warn(f"Possibly lost {now.skipped_runs - before.skipped_runs} events: the "
                       "kernel skipped that many runs of the tracing programs")
        self._reported = now

    def _report_totals(self, totals: LossCounters) -> None:
        self._report_losses(totals)
        missing = "outcome (result unknown)" if self.args.outcome else "local port"
        for field, message in TOTAL_MESSAGES:
            total = getattr(totals, field)
            if total:
                self._warn(message.format(total, missing=missing))
        if self.formatter.exe.unknown:
            self._warn(f"{self.formatter.exe.unknown} rows show no executable: its path was not "
                       "known (lost, or forgotten by a full cache) and is asked for again")
        if self._command_lines is not None and self._command_lines.unread:
            self._warn(f"{self._command_lines.unread} rows show args null: the process had "
                       "exited, or run another executable, by the time its row was read")
        if self._dns_cache is not None and self._dns_cache.malformed:
            self._warn(f"Skipped {self._dns_cache.malformed} malformed DNS responses")
        if self._dns_cache is not None and self._dns_cache.refused:
            self._warn(f"Refused {self._dns_cache.refused} DNS responses that would cost too much "
                       "to parse (pointer chains, names over 255 octets, bad address lengths)")

    def _report_filtered(self, filtered: dict[str, int]) -> None:
        removed = [f"{n} by {FILTER_OPTIONS[name]}" for name, n in filtered.items() if n]
        self._warn("Connects filtered out in the kernel: " + (", ".join(removed) or "none"))

    def _warn(self, message: str) -> None:
        self.err.write(message + "\n")
        self.err.flush()
