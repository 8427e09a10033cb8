"""The executable of each connect (-j's "exe", -X's EXE column).

The kernel sends an executable's path once, as an exe record, before the
first event that carries its key (device, inode; see exe_path.bpf.h), and
again if the file was unlinked since. The text of each path is kept here
by key, as each output writes it. A row whose key is not known (its record
was lost, or the cache was emptied) says so (null in JSON, ? in text) and is
counted, and the key is handed to `forget` so that the kernel sends the path
again at the executable's next connect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .cache import BoundedCache
from .events import (
    EXE_DEV,
    EXE_INO,
    EXE_RECORD_COMPONENTS,
    EXE_RECORD_CUT,
    EXE_RECORD_DELETED,
    EXE_RECORD_DEV,
    EXE_RECORD_INO,
    EXE_RECORD_NAMES,
    EXE_RECORD_NAMES_LEN,
)

# What a path cut at the walk's bounds starts with instead of "/": no
# absolute path does, so a cut path cannot pass for a whole one.
CUT_MARK = "..."
# As /proc/PID/exe's link says of an executable unlinked since it was run.
DELETED_MARK = " (deleted)"


def path_of(record: tuple) -> str:
    """The path an exe record holds: its names, the file's own first,
    joined from the root down; bytes that are not UTF-8 kept as surrogate
    escapes, as file names are in Python."""
    names = record[EXE_RECORD_NAMES][:record[EXE_RECORD_NAMES_LEN]].split(b"\0")
    names = names[:record[EXE_RECORD_COMPONENTS]]
    path = "/" + "/".join(name.decode("utf-8", "surrogateescape") for name in reversed(names))
    if record[EXE_RECORD_CUT]:
        path = CUT_MARK + path
    return path + DELETED_MARK if record[EXE_RECORD_DELETED] else path


class ExePaths:
    """Key -> text of the path, in the form `render` gives it (JSON string
    or escaped column text); `missing` is the text of an unknown key."""

    def __init__(self, render: Callable[[str], str], missing: str,
                 forget: Callable[[int, int], None] | None = None) -> None:
        self._render = render
        self._missing = missing
        self._forget = forget
        self._known: BoundedCache = BoundedCache()
        # The paths themselves, for --args's check of /proc/PID/exe.
        self.paths: BoundedCache = BoundedCache()
        # Rows whose executable's path was not known.
        self.unknown = 0

    def note(self, records: Iterable[tuple]) -> None:
        for record in records:
            key, path = (record[EXE_RECORD_DEV], record[EXE_RECORD_INO]), path_of(record)
            self._known.put(key, self._render(path))
            self.paths.put(key, path)

    def text(self, event: tuple) -> str:
        key = (event[EXE_DEV], event[EXE_INO])
        text = self._known.get(key)
        if text is not None:
            return text
        if not event[EXE_INO]:
            # No executable (a kernel thread), or exe was not read.
            return self._missing
        self.unknown += 1
        if self._forget is not None:
            self._forget(*key)
        return self._missing
