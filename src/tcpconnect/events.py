"""Python mirrors of the records declared in bpf/tcpconnect.h, and their decoding.

Each C struct is mirrored exactly once here; tests/test_events.py checks sizes
and offsets against the BTF of the compiled object.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections import namedtuple
from ctypes import Structure, c_char, c_uint8, c_uint16, c_uint32, c_uint64

TASK_COMM_LEN = 16
DNS_PAYLOAD_MAX = 1232


class Event(Structure):
    _fields_ = [
        ("ts_ns", c_uint64),
        ("cgroup_id", c_uint64),
        ("mntns_id", c_uint64),
        ("latency_ns", c_uint64),
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("uid", c_uint32),
        ("netns", c_uint32),
        ("lport", c_uint16),
        ("dport", c_uint16),
        ("family", c_uint16),
        ("outcome", c_uint16),
        ("error", c_uint16),
        ("comm", c_char * TASK_COMM_LEN),
    ]


class CountKey(Structure):
    _fields_ = [
        ("cgroup_id", c_uint64),
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("uid", c_uint32),
        ("dport", c_uint16),
        ("family", c_uint16),
        ("outcome", c_uint16),
        ("error", c_uint16),
        ("comm", c_char * TASK_COMM_LEN),
    ]


class DnsEvent(Structure):
    _fields_ = [
        ("ts_ns", c_uint64),
        ("len", c_uint16),
        ("orig_len", c_uint16),
        ("payload", c_uint8 * DNS_PAYLOAD_MAX),
    ]


MIRRORS: dict[str, type[Structure]] = {
    "event": Event,
    "count_key": CountKey,
    "dns_event": DnsEvent,
}

_STRUCT_CODES = {c_uint8: "B", c_uint16: "H", c_uint32: "I", c_uint64: "Q", c_char: "c"}


def struct_format(mirror: type[Structure]) -> struct.Struct:
    """The struct module's layout of a mirror, for decoding many records at
    once with iter_unpack (far cheaper per record than a ctypes object).
    Derived from the mirror's own fields, so it cannot drift from it;
    arrays become byte strings."""
    layout, end = "=", 0
    for name, ctype in mirror._fields_:
        field = getattr(mirror, name)
        layout += "%dx" % (field.offset - end) if field.offset > end else ""
        if hasattr(ctype, "_length_"):
            layout += "%ds" % ctypes.sizeof(ctype)
        else:
            layout += _STRUCT_CODES[ctype]
        end = field.offset + field.size
    layout += "%dx" % (ctypes.sizeof(mirror) - end) if ctypes.sizeof(mirror) > end else ""
    return struct.Struct(layout)


EVENT_FORMAT = struct_format(Event)
DNS_EVENT_FORMAT = struct_format(DnsEvent)


# A decoded event: the fields of Event in its order, arrays as bytes. The
# reader hands out plain tuples of this shape (building a named tuple per
# event would cost more than formatting it); the named type is for code that
# builds or inspects one.
EventRecord = namedtuple("EventRecord", [name for name, _ in Event._fields_])  # type: ignore[misc]
# Positions of fields in a decoded record, for the per-event hot paths.
(TS_NS, CGROUP_ID, MNTNS_ID, LATENCY_NS, SADDR, DADDR, PID, TID, UID, NETNS, LPORT, DPORT,
 FAMILY, OUTCOME, ERROR, COMM) = (
    EventRecord._fields.index(name) for name in (
        "ts_ns", "cgroup_id", "mntns_id", "latency_ns", "saddr", "daddr", "pid", "tid", "uid",
        "netns", "lport", "dport", "family", "outcome", "error", "comm"))
DNS_TS_NS, DNS_LEN, DNS_PAYLOAD = (
    [name for name, _ in DnsEvent._fields_].index(name) for name in ("ts_ns", "len", "payload"))


def decode_event(event: Event) -> tuple:
    """The decoded form of one ctypes Event (as read from a map)."""
    return EVENT_FORMAT.unpack(bytes(event))


def dns_message(answer: tuple) -> bytes:
    """The captured part of a decoded dns_event's DNS message (all of it
    unless len < orig_len; never more than the payload, whatever len says)."""
    return answer[DNS_PAYLOAD][:answer[DNS_LEN]]


def packed_address(family: int, raw: bytes) -> bytes:
    """The address bytes of a 16-byte kernel field: 4 for IPv4, 16 for IPv6."""
    return raw[:4] if family == 4 else raw


class _AddressText(dict):
    """Text of recently seen addresses of one family, keyed by the 16-byte
    kernel field. A traced host talks to few peers, and inet_ntop costs the
    reader more per event than the rest of a row; a hit is one dict lookup."""

    def __init__(self, family: int) -> None:
        super().__init__()
        self._family = family

    def __missing__(self, raw: bytes) -> str:
        if len(self) >= ADDRESS_CACHE_SIZE:
            self.clear()  # cheaper than LRU bookkeeping on every hit
        af = socket.AF_INET if self._family == 4 else socket.AF_INET6
        text = self[raw] = socket.inet_ntop(af, packed_address(self._family, raw))
        return text


ADDRESS_CACHE_SIZE = 4096
# By family; anything but 4 is IPv6, as the kernel side reports only those.
ADDRESS_TEXT = {4: _AddressText(4), 6: _AddressText(6)}


def format_address(family: int, raw: bytes) -> str:
    return ADDRESS_TEXT[4 if family == 4 else 6][raw]
