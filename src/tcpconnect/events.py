"""Python mirrors of the records declared in bpf/tcpconnect.h: the kernel ABI.

Each C struct is mirrored exactly once here, with the struct-module layouts
derived from it and the positions of fields in a decoded record;
tests/test_events.py checks sizes and offsets against the BTF of the compiled
object. What is made of decoded records (identities, address text) is in
records.py.
"""

from __future__ import annotations

import ctypes
import struct
from ctypes import Structure, c_char, c_uint8, c_uint16, c_uint32, c_uint64

TASK_COMM_LEN = 16
DNS_PAYLOAD_MAX = 1232


class Event(Structure):
    _fields_ = [
        ("ts_ns", c_uint64),
        ("latency_ns", c_uint64),
        ("lport", c_uint16),
        ("outcome", c_uint16),
        ("error", c_uint16),
        ("syn_retries", c_uint16),
        ("drops", c_uint16),
        ("drop_reason", c_uint32),
        ("answer_from", c_uint8 * 16),
        ("cgroup_id", c_uint64),
        ("mntns_id", c_uint64),
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("uid", c_uint32),
        ("netns", c_uint32),
        ("ppid", c_uint32),
        ("ns_pid", c_uint32),
        ("ns_tid", c_uint32),
        ("dport", c_uint16),
        ("family", c_uint16),
        ("comm", c_char * TASK_COMM_LEN),
        ("pcomm", c_char * TASK_COMM_LEN),
        ("answer_kind", c_uint8),
        ("answer_type", c_uint8),
        ("answer_code", c_uint8),
        ("answer_ttl", c_uint8),
        ("exe_dev", c_uint32),
        ("exe_ino", c_uint64),
    ]


class SlotHead(Structure):
    """struct slot (attempt_state.bpf.h) up to its attempt, which follows:
    owner is the waiting attempt's socket, 0 while the slot is free."""

    _fields_ = [
        ("owner", c_uint64),
    ]


EXE_NAMES_MAX = 512
EXE_NAME_SLOT = 256


class ExeKey(Structure):
    _fields_ = [
        ("ino", c_uint64),
        ("dev", c_uint32),
    ]


class ExeRecord(Structure):
    _fields_ = [
        ("ino", c_uint64),
        ("dev", c_uint32),
        ("deleted", c_uint32),
        ("components", c_uint32),
        ("cut", c_uint32),
        ("names_len", c_uint32),
        ("names", c_char * (EXE_NAMES_MAX + EXE_NAME_SLOT)),
    ]


class CountKey(Structure):
    _fields_ = [
        ("cgroup_id", c_uint64),
        ("exe_ino", c_uint64),
        ("saddr", c_uint8 * 16),
        ("daddr", c_uint8 * 16),
        ("uid", c_uint32),
        ("exe_dev", c_uint32),
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


# enum outcome_code: struct event's outcome for a connect() that failed
# before its socket reached SYN_SENT (no SYN sent; error is its errno), and
# for an attempt whose end the kernel skipped the program run for (seen
# only when its socket was destroyed).
OUTCOME_NO_SYN = 256
OUTCOME_END_UNSEEN = 257
# enum answer_kind: the packet that answered a failed attempt (struct
# event's answer_kind).
ANSWER_NONE, ANSWER_ICMP, ANSWER_RST = 0, 1, 2

# enum filter_kind past FILTERED_NONE, in order: the kernel-side filters,
# each counting the attempts it removed.
FILTERS = ("pid", "uid", "comm", "family", "port", "daddr", "saddr", "netns", "cgroup",
           "mntns")

MIRRORS: dict[str, type[Structure]] = {
    "event": Event,
    "count_key": CountKey,
    "dns_event": DnsEvent,
    "exe_key": ExeKey,
    "exe_record": ExeRecord,
}

_STRUCT_CODES = {c_uint8: "B", c_uint16: "H", c_uint32: "I", c_uint64: "Q", c_char: "c"}


def struct_format(mirror: type[Structure], joined: tuple[str, str] | None = None,
                  only: tuple[str, str] | None = None) -> struct.Struct:
    """The struct module's layout of a mirror, for decoding many records at
    once with iter_unpack (far cheaper per record than a ctypes object).
    Derived from the mirror's own fields, so it cannot drift from it;
    arrays become byte strings. `joined` names the first and last of a run
    of fields decoded together as one byte string; `only` limits the layout
    to the run of fields from its first to its last."""
    names = [name for name, _ in mirror._fields_]

    def span(run: tuple[str, str]) -> tuple[int, int, int, int]:
        first, last = names.index(run[0]), names.index(run[1])
        end = getattr(mirror, run[1])
        return first, last, getattr(mirror, run[0]).offset, end.offset + end.size

    first, last, begin, finish = span(only) if only else (0, len(names) - 1, 0,
                                                           ctypes.sizeof(mirror))
    joined_first, joined_last, _, joined_end = span(joined) if joined else (-1, -1, 0, 0)
    layout, end = "=", begin
    for i, (name, ctype) in enumerate(mirror._fields_[first:last + 1], start=first):
        if joined_first < i <= joined_last:
            continue
        field = getattr(mirror, name)
        layout += "%dx" % (field.offset - end) if field.offset > end else ""
        end = joined_end if i == joined_first else field.offset + field.size
        if i == joined_first:
            layout += "%ds" % (end - field.offset)
        elif hasattr(ctype, "_length_"):
            layout += "%ds" % ctypes.sizeof(ctype)
        else:
            layout += _STRUCT_CODES[ctype]
    layout += "%dx" % (finish - end) if finish > end else ""
    return struct.Struct(layout)


# The fields of Event that are the same for every connect one thread makes
# to one destination, first and last; tcpconnect.h keeps them contiguous.
IDENTITY = ("cgroup_id", "pcomm")
# Every field of an event, one by one (ctypes Event <-> EventRecord).
EVENT_FORMAT = struct_format(Event)
# How the reader decodes an event: the fields that change from one connect
# to the next, then the identity fields as one byte string, the key of the
# caches of decoded identities and formatted rows (see output.py).
RECORD_FORMAT = struct_format(Event, joined=IDENTITY)
IDENTITY_FORMAT = struct_format(Event, only=IDENTITY)
DNS_EVENT_FORMAT = struct_format(DnsEvent)
EXE_RECORD_FORMAT = struct_format(ExeRecord)


# Positions of fields in a decoded record, then in a decoded identity.
_NAMES = [name for name, _ in Event._fields_]
_SPLIT, _END = _NAMES.index(IDENTITY[0]), _NAMES.index(IDENTITY[1]) + 1
_RECORD = [*_NAMES[:_SPLIT], "identity", *_NAMES[_END:]]
(TS_NS, LATENCY_NS, LPORT, OUTCOME, ERROR, SYN_RETRIES, DROPS, DROP_REASON, ANSWER_FROM,
 IDENTITY_BYTES, ANSWER_KIND, ANSWER_TYPE, ANSWER_CODE, ANSWER_TTL, EXE_DEV, EXE_INO) = (
    _RECORD.index(name) for name in (
        "ts_ns", "latency_ns", "lport", "outcome", "error", "syn_retries", "drops",
        "drop_reason", "answer_from", "identity", "answer_kind", "answer_type", "answer_code",
        "answer_ttl", "exe_dev", "exe_ino"))
(CGROUP_ID, MNTNS_ID, SADDR, DADDR, PID, TID, UID, NETNS, PPID, NS_PID, NS_TID, DPORT, FAMILY,
 COMM, PCOMM) = (
    _NAMES[_SPLIT:_END].index(name) for name in (
        "cgroup_id", "mntns_id", "saddr", "daddr", "pid", "tid", "uid", "netns", "ppid",
        "ns_pid", "ns_tid", "dport", "family", "comm", "pcomm"))
DNS_TS_NS, DNS_LEN, DNS_PAYLOAD = (
    [name for name, _ in DnsEvent._fields_].index(name) for name in ("ts_ns", "len", "payload"))
EXE_RECORD_INO, EXE_RECORD_DEV, EXE_RECORD_DELETED, EXE_RECORD_COMPONENTS, EXE_RECORD_CUT, \
    EXE_RECORD_NAMES_LEN, EXE_RECORD_NAMES = range(len(ExeRecord._fields_))
