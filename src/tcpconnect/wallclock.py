"""-T and JSON `timestamp`: wall-clock time of kernel timestamps.

Events carry bpf_ktime_get_ns(), CLOCK_MONOTONIC. Their wall-clock time is
that plus the offset between CLOCK_REALTIME and CLOCK_MONOTONIC, taken once
when tracing starts, so a row shows when the connect happened, not when it
was printed. (A later step of the system clock is not followed: the times
stay consistent with each other, as -t's are.)
"""

from __future__ import annotations

import time
from typing import Callable

from .events import BoundedCache


def realtime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, the wall-clock read between two
    monotonic reads so the offset is off by half their gap at most."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    wall = time.clock_gettime_ns(time.CLOCK_REALTIME)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return wall - (before + after) // 2


NS_PER_SECOND = 1_000_000_000
NS_PER_MS = 1_000_000
# The digits of the microseconds within a millisecond, and of milliseconds.
THREE_DIGITS = tuple("%03d" % n for n in range(1000))
# Distinct seconds whose text is kept; rows arrive in time order, so few are
# ever looked up again.
_SECONDS_KEPT = 64


class _SecondText(dict):
    """text = cache[second since the epoch], made by strftime on a miss."""

    def __init__(self, layout: str, convert: Callable[[float], time.struct_time]) -> None:
        super().__init__()
        self._layout = layout
        self._convert = convert

    def __missing__(self, second: int) -> str:
        if len(self) >= _SECONDS_KEPT:
            self.clear()
        text = self[second] = time.strftime(self._layout, self._convert(second))
        return text


class WallClock:
    """Formats kernel timestamps as wall-clock time. Connects come in bursts
    within one second, so the text of each second is kept; for UTC, the
    text up to the millisecond too (many connects a millisecond when it
    matters), and a row adds its microseconds' digits. The formatters inline
    time_of_day and rfc3339 with `offset_ns` and these caches: a method call
    per row cost JSON rows a fifth of their time."""

    def __init__(self, offset_ns: int | None = None) -> None:
        self.offset_ns = realtime_offset_ns() if offset_ns is None else offset_ns
        self.local_seconds = _SecondText("%H:%M:%S", time.localtime)
        self.utc_seconds = _SecondText("%Y-%m-%dT%H:%M:%S", time.gmtime)
        self.utc_milliseconds = BoundedCache(lambda ms: "%s.%s" % (
            self.utc_seconds[ms // 1000], THREE_DIGITS[ms % 1000]))

    def time_of_day(self, ts_ns: int) -> str:
        """HH:MM:SS in local time, as bcc's tcplife -T prints it."""
        return self.local_seconds[(ts_ns + self.offset_ns) // NS_PER_SECOND]

    def rfc3339(self, ts_ns: int) -> str:
        """UTC with microseconds, e.g. 2026-11-29T01:23:45.123456Z."""
        wall = ts_ns + self.offset_ns
        return "%s%sZ" % (self.utc_milliseconds[wall // NS_PER_MS],
                          THREE_DIGITS[wall // 1000 % 1000])
