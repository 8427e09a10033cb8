"""-T and JSON `timestamp`: wall-clock time of kernel timestamps.

Events carry bpf_ktime_get_ns(), CLOCK_MONOTONIC. Their wall-clock time is
that plus the offset between CLOCK_REALTIME and CLOCK_MONOTONIC, taken once
when tracing starts, so a row shows when the connect happened, not when it
was printed. (A later step of the system clock is not followed: the times
stay consistent with each other, as -t's are.)
"""

from __future__ import annotations

import time

from .cache import BoundedCache


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


class WallClock:
    """Formats kernel timestamps as wall-clock time. Connects come in bursts
    within one second, so the text of each second is kept; for UTC, the
    text up to the millisecond too (many connects a millisecond when it
    matters), and a row adds its microseconds' digits. The formatters'
    compiled rows (output.py) read these caches with `offset_ns` directly:
    a method call per row cost JSON rows a fifth of their time."""

    def __init__(self, offset_ns: int | None = None) -> None:
        self.offset_ns = realtime_offset_ns() if offset_ns is None else offset_ns
        self.local_seconds = BoundedCache(
            lambda second: time.strftime("%H:%M:%S", time.localtime(second)), _SECONDS_KEPT)
        self.utc_seconds = BoundedCache(
            lambda second: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)), _SECONDS_KEPT)
        self.utc_milliseconds = BoundedCache(lambda ms: "%s.%s" % (
            self.utc_seconds[ms // 1000], THREE_DIGITS[ms % 1000]))
