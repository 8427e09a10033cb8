"""The memory ordering a ring reader needs, from libatomic.

The kernel side of a BPF ring buffer and its reader order their accesses
in pairs (kernel/bpf/ringbuf.c, Linux 6.x): __bpf_ringbuf_reserve writes
a record's header with BUSY set, then publishes producer_pos with
smp_store_release; bpf_ringbuf_commit clears BUSY with xchg (a full
barrier) once the record is written; __bpf_ringbuf_reserve reads
consumer_pos with smp_load_acquire before reusing space. The reader must
match each: load producer_pos and the headers with acquire, store
consumer_pos with release (libbpf's ringbuf_process_ring does exactly
that). On x86-64 plain loads and stores already give this;
on arm64 they do not, and a record could be read before its data is
visible. Python has no atomics, so the three operations come from
libatomic (GCC's runtime, Debian's libatomic1), whose functions compile to
the right instruction for the machine they run on (mov on x86-64, ldar,
stlr and dmb on arm64). Each costs a foreign call; a reader makes three
per batch, not per record.
"""

from __future__ import annotations

import ctypes

# C11 memory_order values, as libatomic takes them.
ACQUIRE = 2
RELEASE = 3
SEQ_CST = 5


class LibatomicError(RuntimeError):
    pass


class Ordering:
    """Acquire loads, release stores, acquire and full fences on raw
    addresses."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libatomic.so.1")
        except OSError as exc:
            raise LibatomicError(
                f"cannot load libatomic.so.1 ({exc}): install Debian's libatomic1") from None
        self._load = getattr(lib, "__atomic_load_8")
        self._load.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._load.restype = ctypes.c_uint64
        self._store = getattr(lib, "__atomic_store_8")
        self._store.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
        self._store.restype = None
        self._fence = lib.atomic_thread_fence
        self._fence.argtypes = [ctypes.c_int]
        self._fence.restype = None

    def load_acquire(self, address: int) -> int:
        """The u64 at address; no later load is done before it."""
        return int(self._load(address, ACQUIRE))

    def store_release(self, address: int, value: int) -> None:
        """Stores the u64 at address after every earlier load and store."""
        self._store(address, value, RELEASE)

    def acquire_fence(self) -> None:
        """Every load before it is done before any load after it: plain
        loads of a header followed by this read as acquire loads."""
        self._fence(ACQUIRE)

    def full_fence(self) -> None:
        """Every load and store before it is done before any load after it
        (mfence on x86-64, dmb ish on arm64): a store followed by this and a
        load is one side of a store-then-load handshake."""
        self._fence(SEQ_CST)
