"""User-space half of ``-d/--dns``: map addresses to the names that resolved them.

The kernel side hands us raw DNS response payloads together with the
``bpf_ktime_get_ns()`` time they arrived; this module parses them, remembers
which question name each answered address belongs to, and renders the QUERY
column for a later connect() to that address.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

import cachetools
import dnslib

# Bounded so hostile or merely busy DNS traffic cannot grow memory without
# limit; the long TTL ignores record TTLs on purpose, because applications
# often keep connecting to an address long after its record expired.
_CACHE_MAXSIZE = 10240
_CACHE_TTL_S = 24 * 3600

# A lookup older than this is shown with its age, since a long gap means the
# application reused an address it resolved earlier rather than connecting
# straight after the lookup.
_STALE_NS = 100_000_000

_LOOPBACK = {
    4: ipaddress.IPv4Address("127.0.0.1").packed,
    6: ipaddress.IPv6Address("::1").packed,
}

_ADDRESS_TYPES = (dnslib.QTYPE.A, dnslib.QTYPE.AAAA)


class DnsCache:
    """Answer address (packed bytes) -> (question name, receive time in ns)."""

    def __init__(self, timer: Callable[[], float] = time.monotonic) -> None:
        self._cache: cachetools.TTLCache[bytes, tuple[str, int]] = cachetools.TTLCache(
            maxsize=_CACHE_MAXSIZE, ttl=_CACHE_TTL_S, timer=timer
        )
        # Counters rather than log lines: the payloads are attacker-controlled
        # and may arrive at line rate, so the tracer must stay quiet and only
        # report totals if it wants to.
        self.malformed = 0
        self.ignored = 0

    def record(self, payload: bytes, received_ns: int) -> int:
        """Remember the addresses answered by one DNS response; return how many."""
        try:
            message = dnslib.DNSRecord.parse(payload)
            if not message.header.qr or not message.questions:
                self.ignored += 1
                return 0
            found = _answered_addresses(message)
        # dnslib lets a zoo of exception types escape on hostile input
        # (DNSError, struct.error, IndexError, UnicodeDecodeError, ...), and one
        # bad packet from the network must never take the tracer down.
        except Exception:  # noqa: BLE001
            self.malformed += 1
            return 0
        for addr, name in found.items():
            self._cache[addr] = (name, received_ns)
        return len(found)

    def lookup(self, addr: bytes) -> tuple[str, int] | None:
        return self._cache.get(addr)

    def __len__(self) -> int:
        return len(self._cache)


def _answered_addresses(message: dnslib.DNSRecord) -> dict[bytes, str]:
    # What the user typed is the question name, not whatever CDN host a CNAME
    # chain ends at, so every name reachable from a question through the
    # answer section's CNAMEs is attributed to that question. DNSLabel
    # compares case-insensitively, which matters because resolvers may echo
    # 0x20-randomised case.
    origin: dict[dnslib.DNSLabel, str] = {}
    for question in message.questions:
        origin.setdefault(question.qname, _display_name(question.qname))

    aliases = [
        (rr.rname, rr.rdata.label)
        for rr in message.rr
        if rr.rtype == dnslib.QTYPE.CNAME
    ]
    # Iterate to a fixed point because CNAMEs may be listed in any order;
    # it terminates even on CNAME loops since ``origin`` only ever grows.
    grew = True
    while grew:
        grew = False
        for alias, target in aliases:
            if alias in origin and target not in origin:
                origin[target] = origin[alias]
                grew = True

    found: dict[bytes, str] = {}
    for rr in message.rr:
        # Records not reachable from a question are dropped: they cannot be
        # the reason anyone connects to that address, and honouring them would
        # let one response label arbitrary addresses with its question name.
        # Only class IN rdata is an internet address at all.
        if (
            rr.rtype in _ADDRESS_TYPES
            and rr.rclass == dnslib.CLASS.IN
            and rr.rname in origin
        ):
            found.setdefault(bytes(rr.rdata.data), origin[rr.rname])
    return found


def _display_name(label: dnslib.DNSLabel) -> str:
    # Zone-file text, so that every name has one spelling and no two names
    # share one: printable ASCII as is, but a backslash as \\ and a dot
    # inside a label as \., and any other byte as \DDD (decimal). dnslib's
    # own str() leaves backslashes alone, so a label holding the four
    # characters \027 would print like one holding an ESC byte.
    return ".".join("".join(_zone_char(byte) for byte in part) for part in label.label)


def _zone_char(byte: int) -> str:
    if byte in (0x5C, 0x2E):
        return "\\" + chr(byte)
    if 0x21 <= byte <= 0x7E:
        return chr(byte)
    return "\\%03d" % byte


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
