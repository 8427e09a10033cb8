"""User-space half of ``-d/--dns``: map addresses to the names that resolved them.

The kernel side hands us raw DNS response payloads together with the
``bpf_ktime_get_ns()`` time they arrived; this module has them parsed
(dns_answer.py), remembers which question name each answered address
belongs to, and renders the QUERY column for a later connect() to that
address.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from types import ModuleType

import cachetools

from .cache import BoundedCache

# Bounded so hostile or merely busy DNS traffic cannot grow memory without
# limit; the long TTL ignores record TTLs on purpose, because applications
# often keep connecting to an address long after its record expired.
_CACHE_MAXSIZE = 10240
_CACHE_TTL_S = 24 * 3600

# A lookup older than this is shown with its age, since a long gap means the
# application reused an address it resolved earlier rather than connecting
# straight after the lookup.
_STALE_NS = 100_000_000

# How long what a lookup found is kept in front of the cache (see DnsCache).
_FOUND_KEPT_S = 1.0

_LOOPBACK = {
    4: ipaddress.IPv4Address("127.0.0.1").packed,
    6: ipaddress.IPv6Address("::1").packed,
}

class DnsCache:
    """Answer address (packed bytes) -> (question name, receive time in ns)."""

    def __init__(self, timer: Callable[[], float] = time.monotonic) -> None:
        self._cache: cachetools.TTLCache[bytes, tuple[str, int]] = cachetools.TTLCache(
            maxsize=_CACHE_MAXSIZE, ttl=_CACHE_TTL_S, timer=timer
        )
        self._timer = timer
        # What lookups found, kept until an answer is recorded or for a second
        # at most (so entries still expire on time, give or take that second):
        # a client connects to the same few addresses between two answers, and
        # TTLCache.get, which keeps each entry's recency and expiry, costs
        # ~1.8 us against ~0.1 us for this. It was most of -d's cost per row.
        self._found = BoundedCache(self._cache.get)
        self._found_until = 0.0
        # Counters rather than log lines: the payloads are attacker-controlled
        # and may arrive at line rate, so the tracer must stay quiet and only
        # report totals if it wants to.
        self.malformed = 0
        self.ignored = 0
        self.refused = 0
        self._answer: ModuleType | None = None

    def load_parser(self) -> ModuleType:
        """Imports the answer parser, and with it dnslib (~17 ms). The session
        calls this once tracing has started, so the import does not delay
        it, and a dnslib that fails to import ends the run before any row."""
        if self._answer is None:
            try:
                from . import dns_answer
            except ImportError as exc:
                raise ImportError(f"-d/--dns: cannot import dnslib: {exc}") from None
            self._answer = dns_answer
        return self._answer

    def record(self, payload: bytes, received_ns: int) -> int:
        """Remember the addresses answered by one DNS response; return how many."""
        answer = self._answer or self.load_parser()
        try:
            found = answer.answered_addresses(payload)
        except answer.RefusedAnswer:
            self.refused += 1
            return 0
        # dnslib lets a zoo of exception types escape on hostile input
        # (DNSError, struct.error, IndexError, UnicodeDecodeError, ...), and one
        # bad packet from the network must never take the tracer down.
        except Exception:  # noqa: BLE001
            self.malformed += 1
            return 0
        if found is None:
            self.ignored += 1
            return 0
        for addr, name in found.items():
            self._cache[addr] = (name, received_ns)
        self._found.clear()
        return len(found)

    def lookup(self, addr: bytes) -> tuple[str, int] | None:
        now = self._timer()
        if now >= self._found_until:
            self._found.clear()
            self._found_until = now + _FOUND_KEPT_S
        return self._found[addr]

    def __len__(self) -> int:
        return len(self._cache)


def query_of(cache: DnsCache, family: int, daddr: bytes,
             connect_ns: int) -> tuple[str | None, int | None]:
    """The query behind a connect() to ``daddr`` at ``connect_ns``: the name
    (None if no answer held the address) and how many ns before the connect
    its answer arrived (None when the name is not from an answer)."""
    if daddr == _LOOPBACK.get(family):
        return "localhost", None
    entry = cache.lookup(daddr)
    if entry is None:
        return None, None
    name, received_ns = entry
    return name, connect_ns - received_ns


def query_column(cache: DnsCache, family: int, daddr: bytes, connect_ns: int) -> str:
    """QUERY column text for a connect() to ``daddr`` at ``connect_ns``."""
    name, delta_ns = query_of(cache, family, daddr, connect_ns)
    if name is None:
        return "No DNS Query"
    if delta_ns is not None and delta_ns > _STALE_NS:
        return f"{name} ({delta_ns / 1_000_000:.3f}ms)"
    return name
