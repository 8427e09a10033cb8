"""The ring reader on a fake ring (tests/fake_ring.py): batches, BUSY and
DISCARD records, wrapping, several kinds of record, and the order of its
memory accesses. The reader on the kernel's rings is tested by every
tracing test."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpconnect.libbpf import BpfError
from tcpconnect.ringbuf import Ordering, RingReader
from tcpconnect.ringbuf.reader import stride
from fake_ring import FakeRing

pytestmark = pytest.mark.host_only

SMALL = struct.Struct("=QI")  # 12 bytes: 24 in the ring with its header and padding
LARGE = struct.Struct("=QQH")  # 18 bytes: 32 in the ring


def small(n: int) -> bytes:
    return SMALL.pack(n, n ^ 0xFFFF)


def large(n: int) -> bytes:
    return LARGE.pack(n, ~n & (1 << 64) - 1, n & 0xFFFF)


def reader(ring: FakeRing, *kinds: struct.Struct, ordering: Ordering | None = None) -> RingReader:
    return RingReader(ring, list(kinds) or [SMALL], ordering)


def test_a_batch_is_every_committed_record_in_order() -> None:
    ring = FakeRing(256)
    for n in range(5):
        ring.put(small(n))
    records, = reader(ring).read()
    assert records == [SMALL.unpack(small(n)) for n in range(5)]
    assert ring.consumer == ring.producer == 5 * 24


def test_an_empty_ring_reads_nothing() -> None:
    ring = FakeRing(256)
    assert reader(ring).read() == ([],)
    assert ring.consumer == 0


def test_a_busy_record_ends_the_batch_until_committed() -> None:
    ring = FakeRing(256)
    ring.put(small(1))
    busy = ring.reserve(SMALL.size)
    ring.write(busy, small(2))
    ring.put(small(3))
    read = reader(ring)
    assert read.read() == ([SMALL.unpack(small(1))],)
    assert ring.consumer == 24
    assert read.read() == ([],)
    ring.commit(busy)
    assert read.read() == ([SMALL.unpack(small(2)), SMALL.unpack(small(3))],)
    assert ring.consumer == ring.producer


def test_a_busy_first_record_reads_nothing() -> None:
    ring = FakeRing(256)
    ring.reserve(SMALL.size)
    ring.put(small(2))
    assert reader(ring).read() == ([],)
    assert ring.consumer == 0


def test_discarded_records_are_skipped_and_freed() -> None:
    ring = FakeRing(256)
    ring.put(small(1), discard=True)
    ring.put(small(2))
    ring.put(small(3), discard=True)
    assert reader(ring).read() == ([SMALL.unpack(small(2))],)
    assert ring.consumer == ring.producer == 3 * 24


def test_a_record_wrapping_the_end_reads_whole() -> None:
    # 64-byte ring from position 48: the second record's header sits in the
    # last 8 bytes and its data continues at the start.
    ring = FakeRing(64, start=48)
    ring.put(small(1))
    ring.put(small(2))
    assert reader(ring).read() == ([SMALL.unpack(small(1)), SMALL.unpack(small(2))],)
    assert ring.consumer == 48 + 48


def test_kinds_are_told_apart_by_size() -> None:
    ring = FakeRing(512)
    ring.put(small(1))
    ring.put(large(2))
    ring.put(small(3), discard=True)
    ring.put(large(4))
    ring.put(small(5))
    assert reader(ring, SMALL, LARGE).read() == (
        [SMALL.unpack(small(1)), SMALL.unpack(small(5))],
        [LARGE.unpack(large(2)), LARGE.unpack(large(4))],
    )
    assert ring.consumer == ring.producer


def test_mixed_kinds_stop_at_a_busy_record() -> None:
    ring = FakeRing(512)
    ring.put(large(1))
    ring.put(small(2))
    busy = ring.reserve(LARGE.size)
    ring.put(small(4))
    read = reader(ring, SMALL, LARGE)
    assert read.read() == ([SMALL.unpack(small(2))], [LARGE.unpack(large(1))])
    ring.write(busy, large(3))
    ring.commit(busy)
    assert read.read() == ([SMALL.unpack(small(4))], [LARGE.unpack(large(3))])


def test_a_record_of_no_known_kind_is_an_error() -> None:
    ring = FakeRing(256)
    ring.put(b"\0" * 40)
    with pytest.raises(BpfError, match="ring buffer fake holds a record of unexpected size 40"):
        reader(ring).read()
    assert ring.consumer == 0


def test_two_kinds_of_one_size_are_refused() -> None:
    with pytest.raises(ValueError, match="two kinds of record of one size"):
        RingReader(FakeRing(256), [SMALL, struct.Struct("=III")])


class Publishing(Ordering):
    """Makes the fake producer's writes visible only at the reader's
    ordering points, the way a weakly ordered CPU may: a reader that read a
    header before loading producer_pos, data before its acquire fence, or
    data after storing consumer_pos, decodes the wrong bytes."""

    def __init__(self, ring: FakeRing) -> None:
        super().__init__()
        self.ring = ring
        self.calls: list[str] = []
        self.on_producer: list = []
        self.on_fence: list = []

    def load_acquire(self, address: int) -> int:
        self.calls.append("load_acquire producer" if address == self.ring.producer_address
                          else "load_acquire ?")
        for publish in self.on_producer:
            publish()
        return super().load_acquire(address)

    def acquire_fence(self) -> None:
        self.calls.append("acquire_fence")
        for publish in self.on_fence:
            publish()
        super().acquire_fence()

    def store_release(self, address: int, value: int) -> None:
        self.calls.append("store_release consumer" if address == self.ring.consumer_address
                          else "store_release ?")
        super().store_release(address, value)
        # The kernel may now reuse the space.
        self.ring.data[:] = b"\xee" * self.ring.size


@pytest.mark.parametrize("kinds", [(SMALL,), (SMALL, LARGE)], ids=["uniform", "mixed"])
def test_headers_after_producer_data_after_fence_consumer_last(kinds) -> None:
    ring = FakeRing(256)
    ordering = Publishing(ring)
    first = ring.reserve(SMALL.size)
    ring.write(first, b"\xaa" * SMALL.size)  # stale until the fence
    second = ring.reserve(LARGE.size if len(kinds) == 2 else SMALL.size)
    ordering.on_producer.append(lambda: ring.commit(first))
    ordering.on_producer.append(lambda: ring.commit(second))
    ordering.on_fence.append(lambda: ring.write(first, small(1)))
    ordering.on_fence.append(lambda: ring.write(second, large(2) if len(kinds) == 2 else small(2)))
    got = reader(ring, *kinds, ordering=ordering).read()
    if len(kinds) == 2:
        assert got == ([SMALL.unpack(small(1))], [LARGE.unpack(large(2))])
    else:
        assert got == ([SMALL.unpack(small(1)), SMALL.unpack(small(2))],)
    assert ordering.calls == ["load_acquire producer", "acquire_fence", "store_release consumer"]
    assert ring.consumer == ring.producer


def test_the_real_ordering_moves_the_values() -> None:
    ordering = Ordering()
    ring = FakeRing(64)
    ordering.store_release(ring.consumer_address, 0x0123456789ABCDEF)
    assert ring.consumer == 0x0123456789ABCDEF
    assert ordering.load_acquire(ring.consumer_address) == 0x0123456789ABCDEF
    ordering.acquire_fence()


# One step of a producer: put a record of a kind (0 small, 1 large), maybe
# discarded; or leave it busy for the next read and commit it after.
steps = st.lists(st.tuples(st.sampled_from([0, 1]), st.booleans(), st.booleans()),
                 min_size=0, max_size=30)


@settings(max_examples=200, deadline=None)
@given(steps=steps, start=st.integers(0, 63).map(lambda n: n * 8), mixed=st.booleans())
def test_any_sequence_reads_as_written(steps, start, mixed) -> None:
    ring = FakeRing(256, start=start)
    kinds = (SMALL, LARGE) if mixed else (SMALL,)
    read = reader(ring, *kinds)
    expected: tuple[list, ...] = tuple([] for _ in kinds)
    got: tuple[list, ...] = tuple([] for _ in kinds)
    for n, (kind, discard, leave_busy) in enumerate(steps):
        kind = kind if mixed else 0
        payload = (small, large)[kind](n)
        if stride(len(payload)) > ring.free():
            for mine, theirs in zip(got, read.read()):
                mine.extend(theirs)
        position = ring.reserve(len(payload))
        ring.write(position, payload)
        if leave_busy:
            for mine, theirs in zip(got, read.read()):
                mine.extend(theirs)
        ring.commit(position, discard)
        if not discard:
            expected[kind].append(kinds[kind].unpack(payload))
    for mine, theirs in zip(got, read.read()):
        mine.extend(theirs)
    assert got == expected
    assert ring.consumer == ring.producer
