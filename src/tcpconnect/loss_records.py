"""-j's loss records: the stream itself says where it has gaps.

A log shipper reads stdout only; a loss reported on stderr alone never
reaches whoever reads what it shipped. So with -j each loss report is also a
line of the stream, written after the rows read before it was noticed:
{"type": "lost", "timestamp": ..., "ring": "events", "events": N} for
connects the ring had no room for, "dns_events"/"dns_responses" for DNS
answers, "exe_paths" for paths of executables (rows show "exe": null until
the path is sent again), and {"type": "lost", ..., "skipped_runs": N} for
runs of the tracing programs the kernel skipped. Rows have no "type" field; that is how
a consumer tells the two apart (one that ignores unknown records keeps
working). Text output keeps bcc's stderr lines only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from .tracer import LossCounters

# (LossCounters field, the record's fields besides the count, the count's name)
_KINDS = (
    ("events", {"ring": "events"}, "events"),
    ("dns_events", {"ring": "dns_events"}, "dns_responses"),
    ("skipped_runs", {}, "skipped_runs"),
    ("exe_records", {"ring": "events"}, "exe_paths"),
)


def loss_records(before: LossCounters, now: LossCounters,
                 clock: Callable[[], int] = time.time_ns) -> list[str]:
    """The records of what was lost between two readings of the counters."""
    records = []
    stamp = None
    for field, fields, count_name in _KINDS:
        lost = getattr(now, field) - getattr(before, field)
        if lost > 0:
            if stamp is None:
                seconds, ns = divmod(clock(), 1_000_000_000)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
                    ".%06dZ" % (ns // 1000))
            records.append(json.dumps({"type": "lost", "timestamp": stamp, **fields,
                                       count_name: lost}))
    return records
