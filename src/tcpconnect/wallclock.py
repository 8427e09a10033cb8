"""-T and JSON `timestamp`: wall-clock time of kernel timestamps.

Events carry bpf_ktime_get_ns(), CLOCK_MONOTONIC. Their wall-clock time is
that plus the offset between CLOCK_REALTIME and CLOCK_MONOTONIC, taken once
when tracing starts, so a row shows when the connect happened, not when it
was printed. (A later step of the system clock is not followed: the times
stay consistent with each other, as -t's are.)
"""

from __future__ import annotations

import time


def realtime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, the wall-clock read between two
    monotonic reads so the offset is off by half their gap at most."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    wall = time.clock_gettime_ns(time.CLOCK_REALTIME)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return wall - (before + after) // 2


class WallClock:
    """Formats kernel timestamps as wall-clock time. Connects come in bursts
    within one second, so the text of the current second is kept and only
    the fraction is formatted per row."""

    def __init__(self, offset_ns: int | None = None) -> None:
        self.offset_ns = realtime_offset_ns() if offset_ns is None else offset_ns
        self._local_second = self._utc_second = -1
        self._local_text = self._utc_text = ""

    def time_of_day(self, ts_ns: int) -> str:
        """HH:MM:SS in local time, as bcc's tcplife -T prints it."""
        second = (ts_ns + self.offset_ns) // 1_000_000_000
        if second != self._local_second:
            self._local_text = time.strftime("%H:%M:%S", time.localtime(second))
            self._local_second = second
        return self._local_text

    def rfc3339(self, ts_ns: int) -> str:
        """UTC with microseconds, e.g. 2026-11-29T01:23:45.123456Z."""
        second, ns = divmod(ts_ns + self.offset_ns, 1_000_000_000)
        if second != self._utc_second:
            self._utc_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._utc_second = second
        return "%s.%06dZ" % (self._utc_text, ns // 1000)
