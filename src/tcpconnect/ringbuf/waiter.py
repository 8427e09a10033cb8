"""Waits on several rings at once for the kernel side's wakeups."""

from __future__ import annotations

import select
from collections.abc import Callable, Sequence

from .ordering import Ordering
from .reader import RingReader


class RingWaiter:
    """Edge-triggered, unlike libbpf's ring_buffer__poll: level-triggered, a
    ring that is never empty (a busy host) ends every wait at once, and the
    reader then pays its per-batch costs (a wait, a write, reading the loss
    counters) for a handful of records at a time. Edge-triggered, it sleeps
    until the kernel side wakes it (it does for big batches only) or the
    timeout passes, and then takes all that arrived meanwhile."""

    def __init__(self, rings: Sequence[RingReader]) -> None:
        self._rings = list(rings)
        # Their readers have loaded libatomic already; no ring, no fence.
        self._fence = Ordering().full_fence if rings else lambda: None
        self._epoll = select.epoll()
        for ring in rings:
            self._epoll.register(ring.fd, select.EPOLLIN | select.EPOLLET)

    def wake_on(self, fd: int) -> None:
        """Ends every wait while fd is readable too (signal.set_wakeup_fd's
        pipe: a stop request need not wait for a long timeout)."""
        self._epoll.register(fd, select.EPOLLIN)

    def wait(self, timeout_ms: int) -> None:
        """Returns once a ring was signalled, or after timeout_ms."""
        self._epoll.poll(timeout_ms / 1000)

    def wait_asleep(self, timeout_ms: int, asleep: Callable[[bool], None]) -> None:
        """wait() for a reader whose rings stayed empty for a while: asleep(True)
        makes the kernel side wake it at the next record (ring.bpf.h's
        reader_asleep), so timeout_ms can be long. The handshake is a store
        then a load on each side, which only a full fence between them
        orders: here reader_asleep and consumer_pos (the last read's) are
        stored, then producer_pos loaded; bpf_ringbuf_commit stores the
        record's header with xchg (a full barrier), then loads consumer_pos.
        So either a ring is seen not empty here, and there is no waiting, or
        the commit sees the reader caught up and wakes it. One case is left
        to the timeout: a program that read reader_asleep just before it was
        set, which then asks for no wakeup."""
        asleep(True)
        self._fence()
        try:
            if all(ring.empty() for ring in self._rings):
                self._epoll.poll(timeout_ms / 1000)
        finally:
            asleep(False)

    def close(self) -> None:
        self._epoll.close()
