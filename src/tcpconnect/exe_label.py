"""--metrics-labels exe: the path of the connecting process's executable.

The kernel keys its counts on the executable's (device, inode) and sends
each path once, as an exe record on the events ring (exe_path.bpf.h), before
the first count that has its key (but for a key another CPU saw first and
is still sending). Here keys become paths. Without rows the exporter reads
the ring itself, right after taking the counts; with rows the tracer's loop
reads it and hands the paths on, which a scrape's drain can overtake. So a
count whose path is not known yet waits WAIT_SECONDS (later drains label
it), and only then, still unknown (its record lost, or the cache of paths
emptied), is counted under UNKNOWN. Either way the kernel is told to send
that path again at the executable's next connect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from .cache import BoundedCache
from .events import EXE_RECORD_DEV, EXE_RECORD_INO, CountKey
from .exe import path_of

# The label value of a path that was not known (as -X's EXE column shows
# it); a task without an executable (a kernel thread) has "".
UNKNOWN = "?"
# Far longer than the tracer's loop takes to read a batch of rows.
WAIT_SECONDS = 1.0


class ExeLabel:
    def __init__(self, forget: Callable[[int, int], None]) -> None:
        self._forget = forget
        self._paths: BoundedCache = BoundedCache()
        # (key, count, when it was taken)
        self._waiting: list[tuple[CountKey, int, float]] = []
        # Connects counted under UNKNOWN.
        self.unknown = 0

    def note(self, records: Iterable[tuple]) -> None:
        for record in records:
            self._paths.put((record[EXE_RECORD_DEV], record[EXE_RECORD_INO]), path_of(record))

    def settle(self, counts: list[tuple[CountKey, int]]) -> list[tuple[CountKey, int]]:
        """The counts to label now: those whose path is known, and those
        that waited long enough. The others wait."""
        now = time.monotonic()
        ready = []
        waiting, self._waiting = self._waiting, []
        for key, n, since in waiting:
            if self._path(key) is not None:
                ready.append((key, n))
            elif now - since >= WAIT_SECONDS:
                self.unknown += n
                ready.append((key, n))
            else:
                self._waiting.append((key, n, since))
        for key, n in counts:
            if self._path(key) is None:
                self._waiting.append((key, n, now))
                self._forget(key.exe_dev, key.exe_ino)
            else:
                ready.append((key, n))
        return ready

    def value(self, key: CountKey) -> str:
        path = self._path(key)
        return UNKNOWN if path is None else path

    def _path(self, key: CountKey) -> str | None:
        if not key.exe_ino:
            return ""
        return self._paths.get((key.exe_dev, key.exe_ino))
