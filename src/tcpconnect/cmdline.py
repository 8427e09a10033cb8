"""--args: the command line of each connecting process, in -j.

Read from /proc/PID/cmdline when the process's first row is formatted, and
kept per (pid, executable). Not in the kernel: the arguments live in the
process's user memory, which bpf_probe_read_user cannot fault in (a page
swapped out or never touched would be missing), and a copy of up to
ARGS_MAX bytes with a per-process table would cost every traced connect for
what only --args reads. The price is the short-lived process: one
that has exited (or exec'd another file) before its row is read has no
arguments to show; its row says null, and such rows are counted.

A command line read is the process's own at that time: a process may
rewrite its argv (setproctitle), as ps shows it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .cache import BoundedCache
from .events import EXE_DEV, EXE_INO, IDENTITY_BYTES, PID
from .output import json_text
from .records import identities

# Bytes of a command line kept; a longer one ends with null in its list,
# where no argument can be.
ARGS_MAX = 4096


def user_dev(kernel_dev: int) -> int:
    """A kernel dev_t (12-bit major, 20-bit minor) as stat() gives it."""
    return os.makedev(kernel_dev >> 20, kernel_dev & 0xFFFFF)


def args_json(raw: bytes) -> str:
    """A JSON list of the NUL-separated arguments in raw (read up to
    ARGS_MAX + 1 bytes, so that a cut one shows)."""
    cut = len(raw) > ARGS_MAX
    raw = raw[:ARGS_MAX]
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    args = [json_text(arg.decode("utf-8", "surrogateescape")) for arg in raw.split(b"\0")]
    return "[%s]" % ", ".join([*args, "null"] if cut else args) if raw or cut else "[]"


def read_args(pid: int, exe_dev: int, exe_ino: int, exe_path: str | None,
              proc: str = "/proc") -> str | None:
    """The JSON list of pid's arguments, or None if pid is gone or no longer
    runs the executable its connect ran: the one of that device and inode,
    or at that path (the kernel sent it). Either may tell: on an overlay
    whose layers are on different file systems, stat() gives the inode of
    the layer's file, the kernel's key the overlay's."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read(ARGS_MAX + 1)
        exe = os.stat(f"{proc}/{pid}/exe")
        same = (exe.st_dev, exe.st_ino) == (user_dev(exe_dev), exe_ino) or (
            exe_path is not None and os.readlink(f"{proc}/{pid}/exe") == exe_path)
    except OSError:
        return None
    return args_json(raw) if same else None


class CommandLines:
    """`exe_paths` gives the paths the kernel sent, by key."""

    def __init__(self, exe_paths: Mapping[tuple[int, int], str]) -> None:
        self._exe_paths = exe_paths
        self._known: BoundedCache = BoundedCache()
        # Rows whose process's arguments could not be read.
        self.unread = 0

    def json(self, event: tuple) -> str:
        key = (identities[event[IDENTITY_BYTES]][PID], event[EXE_DEV], event[EXE_INO])
        text = self._known.get(key)
        if text is None:
            # Not kept when unread: a later row of the pid may be readable.
            text = read_args(*key, self._exe_paths.get(key[1:]))
            if text is None:
                self.unread += 1
                return "null"
            self._known.put(key, text)
        return text
