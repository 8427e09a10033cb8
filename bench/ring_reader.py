#!/usr/bin/env python3
"""What the ring reader costs per record, and what its memory ordering adds.

Fills a ring laid out like the kernel's (tests/fake_ring.py) with events of
the size the tracer reads, then reads it in batches of several sizes: with
the real ordering (libatomic's acquire load, acquire fence and release
store, three foreign calls a batch) and with plain Python accesses in their
place (what the reader did before, correct on x86-64 only). Rounds of the
two alternate in one process. Figures are the median of the rounds' CPU
time per record (process time), with min and max.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from fake_ring import FakeRing  # noqa: E402
from tcpconnect.events import EVENT_FORMAT, RECORD_FORMAT  # noqa: E402
from tcpconnect.ringbuf import Ordering, RingReader  # noqa: E402

RING_BYTES = 8 << 20


class PlainOrdering(Ordering):
    """Plain 8-byte accesses and no fence: the x86-only reader."""

    def load_acquire(self, address: int) -> int:
        return ctypes.c_uint64.from_address(address).value

    def store_release(self, address: int, value: int) -> None:
        ctypes.c_uint64.from_address(address).value = value

    def acquire_fence(self) -> None:
        pass


def fill(ring: FakeRing, count: int, payload: bytes) -> None:
    for _ in range(count):
        ring.put(payload)


def per_record_ns(ordering: Ordering, batch: int, batches: int, payload: bytes) -> float:
    ring = FakeRing(RING_BYTES)
    reader = RingReader(ring, [RECORD_FORMAT], ordering)
    spent = 0.0
    for _ in range(batches):
        fill(ring, batch, payload)
        start = time.process_time()
        records, = reader.read()
        spent += time.process_time() - start
        assert len(records) == batch
    return spent / (batch * batches) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    payload = bytes(i % 251 for i in range(EVENT_FORMAT.size))
    print(f"record {RECORD_FORMAT.size} bytes; ns of CPU per record read, "
          f"median (min-max) of {args.rounds} rounds")
    print(f"{'batch':>6} {'ordered':>22} {'plain':>22} {'ordered/plain':>14}")
    for batch, batches in ((1, 1000), (16, 100), (64, 50), (1024, 5)):
        ordered, plain = [], []
        for _ in range(args.rounds):
            ordered.append(per_record_ns(Ordering(), batch, batches, payload))
            plain.append(per_record_ns(PlainOrdering(), batch, batches, payload))
        ratios = [a / b for a, b in zip(ordered, plain)]

        def show(values: list[float]) -> str:
            return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"

        print(f"{batch:>6} {show(ordered):>22} {show(plain):>22} "
              f"{statistics.median(ratios):6.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
