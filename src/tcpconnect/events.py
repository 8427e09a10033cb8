"""Python mirrors of the records declared in bpf/tcpconnect.h, and their decoding.

Each C struct is mirrored exactly once here; tests/test_events.py checks sizes
and offsets against the BTF of the compiled object.
"""

from __future__ import annotations

import ctypes
import socket
from ctypes import Structure, c_char, c_uint8, c_uint16, c_uint32, c_uint64

TASK_COMM_LEN = 16
DNS_PAYLOAD_MAX = 1232


class Event(Structure):
    _fields_ = [
        ("ts_ns", c_uint64),
        ("cgroup_id", c_uint64),
        ("mntns_id", c_uint64),
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("uid", c_uint32),
        ("lport", c_uint16),
        ("dport", c_uint16),
        ("family", c_uint16),
        ("comm", c_char * TASK_COMM_LEN),
    ]


class CountKey(Structure):
    _fields_ = [
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("dport", c_uint16),
        ("family", c_uint16),
    ]


class DnsEvent(Structure):
    _fields_ = [
        ("ts_ns", c_uint64),
        ("len", c_uint16),
        ("orig_len", c_uint16),
        ("payload", c_uint8 * DNS_PAYLOAD_MAX),
    ]

    def message(self) -> bytes:
        """The captured part of the DNS message (all of it unless len < orig_len)."""
        # bytes() of the whole array first: slicing a ctypes array builds a
        # list of ints, several times slower for a full-size answer.
        return bytes(self.payload)[:self.len]


MIRRORS: dict[str, type[Structure]] = {
    "event": Event,
    "count_key": CountKey,
    "dns_event": DnsEvent,
}


def packed_address(family: int, raw: ctypes.Array) -> bytes:
    """The address bytes of a 16-byte kernel field: 4 for IPv4, 16 for IPv6."""
    return bytes(raw)[:4] if family == 4 else bytes(raw)


# Text of recently seen addresses, per family. A traced host talks to few
# peers, and inet_ntop costs the reader more per event than the rest of a row.
_ADDRESS_TEXT: dict[int, dict[bytes, str]] = {4: {}, 6: {}}
ADDRESS_CACHE_SIZE = 4096


def format_address(family: int, raw: ctypes.Array) -> str:
    key = bytes(raw)
    known = _ADDRESS_TEXT[4 if family == 4 else 6]
    text = known.get(key)
    if text is None:
        if len(known) >= ADDRESS_CACHE_SIZE:
            known.clear()  # cheaper than LRU bookkeeping on every hit
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        text = known[key] = socket.inet_ntop(af, packed_address(family, raw))
    return text
