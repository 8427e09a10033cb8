"""How the C heap treats the reader's per-batch buffers.

Each batch allocates and frees a few buffers of tens to hundreds of KB: the
copy of the ring, the joined rows, their encoding. glibc serves a block
over its mmap threshold (128 KB to start with, raised on the fly) with a
fresh mapping, and gives the top of the heap back to the kernel once more
than twice that is free, so a busy reader faulted in new pages for every
batch: joining 512 JSON rows cost 0.3 us a row that way, 0.05 kept on the
heap. Fixed thresholds keep such blocks on the heap and its freed pages
in the process, up to TRIM_BYTES of them.
"""

from __future__ import annotations

import ctypes

# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# A batch's buffers stay below this (the events ring is read every 10 ms,
# 40 ms under load); a whole ring read after a long stall may still be
# mapped apart.
MMAP_BYTES = 4 << 20
TRIM_BYTES = 8 << 20


def keep_batch_buffers() -> bool:
    """Sets the thresholds; False where the C library has no mallopt (musl
    has a stub that ignores it) or refuses the values."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
