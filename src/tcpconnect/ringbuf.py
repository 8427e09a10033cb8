"""Reads BPF ring buffers through their memory mapping, a batch at a time.

libbpf's ring_buffer__poll calls back into Python once per record, and that
callback, not decoding or formatting, was most of what the reader cost per
event. libbpf 1.1 (Debian 12) has no batch API (ring__consume_n came in 1.5),
so the ring is read here directly, the way libbpf itself reads it
(kernel/bpf/ringbuf.c, tools/lib/bpf/ringbuf.c):

- the map's fd is mapped as one writable page holding consumer_pos, then,
  read-only, one page holding producer_pos and the data area. The kernel
  offers the data area twice in a row, so that a record that wraps around
  its end reads as one piece; only one copy is mapped here, and such a
  record is read in two: the second copy would count its size again in the
  tracer's resident memory (8 MiB on two CPUs), as every page of the
  mapping is resident from the start;
- each record is an 8-byte header (u32 length with BUSY and DISCARD flag
  bits, u32 page offset) and the data, rounded up to 8 bytes;
- records between consumer_pos and producer_pos are reserved; one whose BUSY
  bit is still set is being written, so reading stops there; one with
  DISCARD set is skipped; writing consumer_pos frees the space.

Every record of a tracer ring has the same size (the BPF side reserves
sizeof(struct) and nothing else), so a batch is one copy of the committed
span (two where it wraps) decoded by struct.iter_unpack, with the headers
checked by strided byte reads instead of a per-record Python loop. Headers
are 8-byte aligned and the ring's size a multiple of 8, so a header never
wraps; a record's data may.

Ordering: the kernel writes a record, then clears its BUSY bit (a release
store). The headers are read first and the data copied afterwards, so a
record seen committed is copied whole; that needs loads not to be reordered
with each other, which holds on x86-64, the architecture tested here. Losses
are not seen here at all: the kernel side counts its failed reservations.
"""

from __future__ import annotations

import ctypes
import mmap
import select
import struct
import sys

from .libbpf import BpfError, Map, MappedMemory

HEADER_SIZE = 8
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
# Offset of the byte holding the flag bits within a header's u32 length.
_FLAG_BYTE = 3 if sys.byteorder == "little" else 0
_BUSY_FLAG = BUSY_BIT >> 24
_DISCARD_FLAG = DISCARD_BIT >> 24


class RingReader:
    """One ring buffer map whose records all have `record.size` bytes,
    decoded with `record` (a struct.Struct)."""

    def __init__(self, ring: Map, record: struct.Struct) -> None:
        self.name = ring.name
        self.fd = ring.fd
        size = ring.info().max_entries
        page = mmap.PAGESIZE
        self._mask = size - 1
        self._stride = (HEADER_SIZE + record.size + 7) // 8 * 8
        # The header is skipped by the format: its fields are checked apart.
        self._format = struct.Struct("=%dx%s%dx" % (
            HEADER_SIZE, record.format.lstrip("=@<>!"),
            self._stride - HEADER_SIZE - record.size))
        self._header = struct.pack("=I", record.size)
        self._size = size
        self._consumer_page = MappedMemory(ring.fd, page, f"ring buffer {ring.name}",
                                           writable=True)
        try:
            self._producer_page = MappedMemory(ring.fd, page + size,
                                               f"ring buffer {ring.name}", offset=page)
        except BpfError:
            self._consumer_page.close()
            raise
        # Positions go through c_uint64, so each is one 8-byte load or store:
        # the kernel must never see half of an update, nor we half of its.
        self._consumer = ctypes.c_uint64.from_address(self._consumer_page.address)
        self._producer = ctypes.c_uint64.from_address(self._producer_page.address)
        self._view = memoryview((ctypes.c_ubyte * size).from_address(
            self._producer_page.address + page))

    def read(self) -> list[tuple]:
        """Decodes and frees every record committed so far, oldest first."""
        consumer = self._consumer.value
        span = self._producer.value - consumer
        if not span:
            return []
        stride = self._stride
        if span % stride:
            raise BpfError(f"ring buffer {self.name} holds a record of unexpected size")
        start = consumer & self._mask
        flags = self._gather(start + _FLAG_BYTE, span // stride, stride)
        ready = len(flags)
        flagged = flags.count(0) != ready
        if flagged:
            ready = next((i for i, f in enumerate(flags) if f & _BUSY_FLAG), ready)
        if not ready:
            return []
        for i, expected in enumerate(self._header):
            if (i != _FLAG_BYTE
                    and self._gather(start + i, ready, stride) != bytes([expected]) * ready):
                raise BpfError(f"ring buffer {self.name} holds a record of unexpected size")
        records = list(self._format.iter_unpack(self._gather(start, ready * stride, 1)))
        if flagged:
            records = [r for r, f in zip(records, flags) if not f & _DISCARD_FLAG]
        self._consumer.value = consumer + ready * stride
        return records

    def _gather(self, first: int, count: int, step: int) -> bytes:
        """The `count` bytes of the data area at offsets first, first + step,
        ..., going on from its start past its end."""
        before_end = min(count, -(-(self._size - first) // step))
        gathered = self._view[first:first + before_end * step:step].tobytes()
        if before_end < count:
            wrapped = first + before_end * step - self._size
            gathered += self._view[wrapped:wrapped + (count - before_end) * step:step].tobytes()
        return gathered

    def close(self) -> None:
        self._view.release()
        self._consumer_page.close()
        self._producer_page.close()


class RingWaiter:
    """Waits on several rings at once for the kernel side's wakeups.

    Edge-triggered, unlike libbpf's ring_buffer__poll: level-triggered, a
    ring that is never empty (a busy host) ends every wait at once, and the
    reader then pays its per-batch costs (a wait, a write, reading the loss
    counters) for a handful of records at a time. Edge-triggered, it sleeps
    until the kernel side wakes it (it does for big batches only) or the
    timeout passes, and then takes all that arrived meanwhile."""

    def __init__(self, rings: list[RingReader]) -> None:
        self._epoll = select.epoll()
        for ring in rings:
            self._epoll.register(ring.fd, select.EPOLLIN | select.EPOLLET)

    def wait(self, timeout_ms: int) -> None:
        """Returns once a ring was signalled, or after timeout_ms."""
        self._epoll.poll(timeout_ms / 1000)

    def close(self) -> None:
        self._epoll.close()
