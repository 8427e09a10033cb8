"""Where a ring buffer's positions and data live: a BPF map's mapping.

The reader only needs three addresses and a size, so a test can hand it
a ring laid out the same way in a plain anonymous mapping (tests/fake_ring.py).
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Protocol

from ..libbpf import BpfError, Map, MappedMemory


class RingMemory(Protocol):
    name: str
    fd: int  # what to wait on for the kernel's wakeups; -1 for none
    size: int  # of the data area, a power of two
    consumer_address: int  # u64 consumer_pos, written by the reader
    producer_address: int  # u64 producer_pos, written by the kernel
    data: memoryview  # the data area, `size` bytes

    def close(self) -> None: ...


class MappedRing:
    """A BPF_MAP_TYPE_RINGBUF map's fd mapped the way the kernel lays it out
    (kernel/bpf/ringbuf.c, ringbuf_map_mmap_kern): one writable page holding
    consumer_pos, then, read-only, one page holding producer_pos and the
    data area. The kernel offers the data area twice in a row, so that a
    record wrapping its end reads as one piece; only one copy is mapped
    here and such a record is read in two, since every page of the mapping
    is resident from the start and a second copy would count the ring again
    in the tracer's memory (8 MiB on two CPUs)."""

    def __init__(self, ring: Map) -> None:
        self.name = ring.name
        self.fd = ring.fd
        self.size = ring.info().max_entries
        page = mmap.PAGESIZE
        what = f"ring buffer {ring.name}"
        self._consumer_page = MappedMemory(ring.fd, page, what, writable=True)
        try:
            self._producer_page = MappedMemory(ring.fd, page + self.size, what, offset=page)
        except BpfError:
            self._consumer_page.close()
            raise
        self.consumer_address = self._consumer_page.address
        self.producer_address = self._producer_page.address
        self.data = memoryview((ctypes.c_ubyte * self.size).from_address(
            self._producer_page.address + page)).cast("B")

    def close(self) -> None:
        self.data.release()
        self._consumer_page.close()
        self._producer_page.close()
