"""Decoded records as the reader hands them out (plain tuples in
events.RECORD_FORMAT's order), and what is made of them, kept per identity
in bounded caches: the decoded identity, the destination, address text.
"""

from __future__ import annotations

import ctypes
import socket
from collections import namedtuple

from .cache import BoundedCache
from .events import (
    DADDR,
    DNS_LEN,
    DNS_PAYLOAD,
    EVENT_FORMAT,
    FAMILY,
    IDENTITY_BYTES,
    IDENTITY_FORMAT,
    RECORD_FORMAT,
    Event,
)

# An event with every field by name, for code that builds or inspects one;
# the reader hands out plain tuples in RECORD_FORMAT's order (building a
# named tuple per event would cost more than printing it). A field not given
# is zero, as the kernel side leaves the fields a run does not fill.
EventRecord = namedtuple(  # type: ignore[misc]
    "EventRecord", [name for name, _ in Event._fields_],
    defaults=[bytes(ctypes.sizeof(ctype)) if hasattr(ctype, "_length_") else 0
              for _, ctype in Event._fields_])
# identities[record[IDENTITY_BYTES]][PID] and so on.
identities = BoundedCache(IDENTITY_FORMAT.unpack)


def decode_event(event: Event) -> tuple:
    """The decoded form of one ctypes Event (as read from a map)."""
    return RECORD_FORMAT.unpack(bytes(event))


def decoded(record: EventRecord) -> tuple:
    """The form the reader hands out of an event given field by field."""
    return RECORD_FORMAT.unpack(EVENT_FORMAT.pack(*record))


def dns_message(answer: tuple) -> bytes:
    """The captured part of a decoded dns_event's DNS message (all of it
    unless len < orig_len; never more than the payload, whatever len says)."""
    return answer[DNS_PAYLOAD][:answer[DNS_LEN]]


def packed_address(family: int, raw: bytes) -> bytes:
    """The address bytes of a 16-byte kernel field: 4 for IPv4, 16 for IPv6."""
    return raw[:4] if family == 4 else raw


def _destination_of(raw_identity: bytes) -> tuple[int, bytes]:
    identity = identities[raw_identity]
    return identity[FAMILY], packed_address(identity[FAMILY], identity[DADDR])


_destinations = BoundedCache(_destination_of)


def destination(record: tuple) -> tuple[int, bytes]:
    """The family and address bytes a decoded record's connect went to."""
    return _destinations[record[IDENTITY_BYTES]]


# Text of recently seen addresses by family, keyed by the 16-byte kernel
# field: inet_ntop costs the reader more per event than the rest of a row.
# Anything but 4 is IPv6, as the kernel side reports only those.
ADDRESS_TEXT = {
    4: BoundedCache(lambda raw: socket.inet_ntop(socket.AF_INET, packed_address(4, raw))),
    6: BoundedCache(lambda raw: socket.inet_ntop(socket.AF_INET6, packed_address(6, raw))),
}


def format_address(family: int, raw: bytes) -> str:
    return ADDRESS_TEXT[4 if family == 4 else 6][raw]
