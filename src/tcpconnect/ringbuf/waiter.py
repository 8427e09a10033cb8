"""Waits on several rings at once for the kernel side's wakeups."""

from __future__ import annotations

import select
from collections.abc import Sequence

from .reader import RingReader


class RingWaiter:
    """Edge-triggered, unlike libbpf's ring_buffer__poll: level-triggered, a
    ring that is never empty (a busy host) ends every wait at once, and the
    reader then pays its per-batch costs (a wait, a write, reading the loss
    counters) for a handful of records at a time. Edge-triggered, it sleeps
    until the kernel side wakes it (it does for big batches only) or the
    timeout passes, and then takes all that arrived meanwhile."""

    def __init__(self, rings: Sequence[RingReader]) -> None:
        self._epoll = select.epoll()
        for ring in rings:
            self._epoll.register(ring.fd, select.EPOLLIN | select.EPOLLET)

    def wait(self, timeout_ms: int) -> None:
        """Returns once a ring was signalled, or after timeout_ms."""
        self._epoll.poll(timeout_ms / 1000)

    def close(self) -> None:
        self._epoll.close()
