"""Reads a BPF ring buffer a batch at a time, records decoded by kind.

libbpf's ring_buffer__poll calls back into Python once per record, and that
callback, not decoding or formatting, was most of what the reader cost per
event; libbpf 1.1 (Debian 12) has no batch API (ring__consume_n came in
1.5). So the ring is read here the way libbpf reads it
(tools/lib/bpf/ringbuf.c, ringbuf_process_ring), a batch per call:

1. producer_pos, loaded with acquire: every header up to it is written;
2. the headers from consumer_pos on, each an 8-byte prefix (u32 length with
   BUSY and DISCARD flag bits, u32 page offset) of a record rounded up to
   8 bytes; the first with BUSY set is still being written and ends the
   batch (a DISCARD one is skipped);
3. an acquire fence: the headers read committed, so the data read after
   the fence is whole (libbpf loads each length with acquire instead);
4. the committed span copied out and decoded;
5. consumer_pos stored with release, after the copy: only then may the
   kernel reuse the space.

A ring may carry several kinds of record. The length in a record's header
is its kind: each kind has its own size, which the constructor checks, so
no record pays for a type field. When every record of a batch has the same
size (the common case), its headers are checked by strided byte reads and
the span decoded by one struct.iter_unpack, with no Python loop per record;
otherwise the headers are walked one by one. Losses are not seen here: the
kernel side counts its failed reservations.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from collections.abc import Sequence

from ..libbpf import BpfError
from .memory import RingMemory
from .ordering import Ordering

HEADER_SIZE = 8
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
_HEADER = struct.Struct("=I")
# The byte of a header's u32 length that holds the flag bits.
_FLAG_BYTE = 3 if sys.byteorder == "little" else 0
_BUSY_FLAG = BUSY_BIT >> 24
_DISCARD_FLAG = DISCARD_BIT >> 24


def stride(size: int) -> int:
    """Bytes a record of `size` takes in the ring, header included."""
    return (HEADER_SIZE + size + 7) // 8 * 8


class _Kind:
    def __init__(self, index: int, record: struct.Struct) -> None:
        self.index = index
        self.record = record
        self.stride = stride(record.size)
        # A run of these records as one format; the header is skipped by it
        # and checked apart.
        self.run = struct.Struct("=%dx%s%dx" % (
            HEADER_SIZE, record.format.lstrip("=@<>!"),
            self.stride - HEADER_SIZE - record.size))
        self.length_bytes = _HEADER.pack(record.size)


class RingReader:
    """One ring, carrying records of the kinds given (struct.Struct
    layouts of distinct sizes). read() returns one list per kind."""

    def __init__(self, memory: RingMemory, kinds: Sequence[struct.Struct],
                 ordering: Ordering | None = None) -> None:
        sizes = [kind.size for kind in kinds]
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"ring buffer {memory.name}: two kinds of record of one size")
        self.name = memory.name
        self._memory = memory
        self._ordering = ordering or Ordering()
        self._kinds = {kind.size: _Kind(i, kind) for i, kind in enumerate(kinds)}
        self._mask = memory.size - 1
        self._size = memory.size
        self._data = memory.data
        self.fd = memory.fd
        # Only this reader writes consumer_pos, so a plain load of it sees
        # its own last store; an 8-byte ctypes field is loaded whole.
        self._consumer = ctypes.c_uint64.from_address(memory.consumer_address)

    def empty(self) -> bool:
        """Nothing reserved past what was read, not even a record still
        being written."""
        return self._ordering.load_acquire(self._memory.producer_address) == self._consumer.value

    def read(self) -> tuple[list[tuple], ...]:
        """Decodes and frees every record committed so far: per kind, in the
        order of the constructor's kinds, each list oldest first."""
        out: tuple[list[tuple], ...] = tuple([] for _ in self._kinds)
        memory, ordering = self._memory, self._ordering
        consumer = self._consumer.value
        span = ordering.load_acquire(memory.producer_address) - consumer
        if not span:
            return out
        start = consumer & self._mask
        taken = self._read_uniform(start, span, out)
        if taken is None:
            taken = self._read_mixed(start, span, out)
        if taken:
            ordering.store_release(memory.consumer_address, consumer + taken)
        return out

    def _kind_of(self, length: int) -> _Kind:
        try:
            return self._kinds[length & ~(BUSY_BIT | DISCARD_BIT)]
        except KeyError:
            raise BpfError(f"ring buffer {self.name} holds a record of unexpected size "
                           f"{length & ~(BUSY_BIT | DISCARD_BIT)}") from None

    def _read_uniform(self, start: int, span: int, out: tuple[list[tuple], ...]) -> int | None:
        """Reads a batch whose records all have the first one's size; None
        when they do not (nothing read then)."""
        first, = _HEADER.unpack_from(self._data, start)
        if first & BUSY_BIT:
            return 0
        kind = self._kind_of(first)
        step = kind.stride
        if span % step:
            return None
        flags = self._gather(start + _FLAG_BYTE, span // step, step)
        ready = len(flags)
        flagged = flags.count(0) != ready
        if flagged:
            ready = next((i for i, f in enumerate(flags) if f & _BUSY_FLAG), ready)
        for i, expected in enumerate(kind.length_bytes):
            if (i != _FLAG_BYTE
                    and self._gather(start + i, ready, step) != bytes([expected]) * ready):
                return None
        self._ordering.acquire_fence()
        records = list(kind.run.iter_unpack(self._gather(start, ready * step, 1)))
        if flagged:
            records = [r for r, f in zip(records, flags) if not f & _DISCARD_FLAG]
        out[kind.index].extend(records)
        return ready * step

    def _read_mixed(self, start: int, span: int, out: tuple[list[tuple], ...]) -> int:
        """Reads a batch of records of several sizes, header by header."""
        headers = []
        taken = 0
        while taken < span:
            length, = _HEADER.unpack_from(self._data, (start + taken) & self._mask)
            if length & BUSY_BIT:
                break
            kind = self._kind_of(length)
            headers.append((taken, kind, length & DISCARD_BIT))
            taken += kind.stride
        self._ordering.acquire_fence()
        batch = self._gather(start, taken, 1)
        for offset, kind, discarded in headers:
            if not discarded:
                out[kind.index].append(kind.record.unpack_from(batch, offset + HEADER_SIZE))
        return taken

    def _gather(self, first: int, count: int, step: int) -> bytes:
        """The `count` bytes of the data area at offsets first, first + step,
        ..., going on from its start past its end."""
        before_end = min(count, -(-(self._size - first) // step))
        gathered = self._data[first:first + before_end * step:step].tobytes()
        if before_end < count:
            wrapped = first + before_end * step - self._size
            gathered += self._data[wrapped:wrapped + (count - before_end) * step:step].tobytes()
        return gathered

    def close(self) -> None:
        self._memory.close()
