"""A BPF ring buffer's layout in plain memory, with a producer that writes
records the way kernel/bpf/ringbuf.c does, for testing the reader without a
kernel: reserve (header with BUSY, producer_pos advanced), write, then
commit (BUSY cleared) or discard (DISCARD set)."""

from __future__ import annotations

import ctypes
import struct

from tcpconnect.ringbuf.reader import BUSY_BIT, DISCARD_BIT, HEADER_SIZE, stride


class FakeRing:
    def __init__(self, size: int, start: int = 0) -> None:
        self.name = "fake"
        self.fd = -1
        self.size = size
        self._positions = (ctypes.c_uint64 * 2)(start, start)
        self.consumer_address = ctypes.addressof(self._positions)
        self.producer_address = self.consumer_address + 8
        self._buffer = (ctypes.c_ubyte * size)()
        self.data = memoryview(self._buffer).cast("B")
        self.closed = False

    @property
    def consumer(self) -> int:
        return self._positions[0]

    @property
    def producer(self) -> int:
        return self._positions[1]

    def free(self) -> int:
        return self.size - (self.producer - self.consumer)

    def reserve(self, size: int) -> int:
        """A record's position, its header saying BUSY; its data is left as
        the ring held it (stale bytes, as in a reused kernel ring)."""
        position = self.producer
        assert stride(size) <= self.free(), "the fake producer never overruns the reader"
        self._write(position, struct.pack("=II", size | BUSY_BIT, 0))
        self._positions[1] = position + stride(size)
        return position

    def write(self, position: int, payload: bytes) -> None:
        self._write(position + HEADER_SIZE, payload)

    def commit(self, position: int, discard: bool = False) -> None:
        length, = struct.unpack("=I", self._read(position, 4))
        length &= ~BUSY_BIT
        self._write(position, struct.pack("=I", length | (DISCARD_BIT if discard else 0)))

    def put(self, payload: bytes, discard: bool = False) -> int:
        position = self.reserve(len(payload))
        self.write(position, payload)
        self.commit(position, discard)
        return position

    def _write(self, position: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            self._buffer[(position + i) % self.size] = byte

    def _read(self, position: int, count: int) -> bytes:
        return bytes(self._buffer[(position + i) % self.size] for i in range(count))

    def close(self) -> None:
        self.closed = True
