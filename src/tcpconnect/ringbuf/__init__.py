"""BPF ring buffers read from Python: where a ring lives (memory), the
ordering its reader needs (ordering), reading a batch (reader) and waiting
for the kernel's wakeups (waiter)."""

from .memory import MappedRing, RingMemory
from .ordering import LibatomicError, Ordering
from .reader import RingReader
from .waiter import RingWaiter

__all__ = ["LibatomicError", "MappedRing", "Ordering", "RingMemory", "RingReader", "RingWaiter"]
