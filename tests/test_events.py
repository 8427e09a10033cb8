"""The Python mirrors of tcpconnect.h must match the compiled object's BTF."""

from __future__ import annotations

import ctypes
import json
import subprocess

import pytest
from conftest import ROOT

from tcpconnect.events import (
    DNS_EVENT_FORMAT,
    EVENT_FORMAT,
    IDENTITY,
    IDENTITY_BYTES,
    IDENTITY_FORMAT,
    ANSWER_ICMP,
    ANSWER_NONE,
    ANSWER_RST,
    FILTERS,
    MIRRORS,
    OUTCOME_END_UNSEEN,
    OUTCOME_NO_SYN,
    RECORD_FORMAT,
    DnsEvent,
    Event,
    SlotHead,
)
from tcpconnect.records import EventRecord, decode_event, identities

# Never loads BPF: the kernel matrix leaves it to the host run.
pytestmark = pytest.mark.host_only

OBJECT = ROOT / "src/tcpconnect/tcpconnect.bpf.o"


@pytest.fixture(scope="module")
def btf_types() -> dict[int, dict]:
    dump = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(OBJECT)],
                          capture_output=True, text=True, check=True).stdout
    return {t["id"]: t for t in json.loads(dump)["types"]}


def type_size(types: dict[int, dict], type_id: int) -> int:
    t = types[type_id]
    if t["kind"] in ("TYPEDEF", "CONST", "VOLATILE"):
        return type_size(types, t["type_id"])
    if t["kind"] == "ARRAY":
        return t["nr_elems"] * type_size(types, t["type_id"])
    return t["size"]


@pytest.mark.parametrize("name,values", [
    ("outcome_code", {"OUTCOME_NO_SYN": OUTCOME_NO_SYN,
                      "OUTCOME_END_UNSEEN": OUTCOME_END_UNSEEN}),
    ("answer_kind", {"ANSWER_NONE": ANSWER_NONE, "ANSWER_ICMP": ANSWER_ICMP,
                     "ANSWER_RST": ANSWER_RST}),
    ("filter_kind", {"FILTERED_NONE": 0,
                     **{"FILTERED_" + name.upper(): i for i, name in enumerate(FILTERS, 1)},
                     "FILTERED_KINDS": len(FILTERS) + 1}),
])
def test_enum_matches_btf(btf_types, name, values):
    [enum] = [t for t in btf_types.values() if t["kind"] == "ENUM" and t["name"] == name]
    assert {v["name"]: v["val"] for v in enum["values"]} == values


@pytest.mark.parametrize("name", sorted(MIRRORS))
def test_mirror_matches_btf(btf_types, name):
    [struct] = [t for t in btf_types.values() if t["kind"] == "STRUCT" and t["name"] == name]
    mirror = MIRRORS[name]
    assert ctypes.sizeof(mirror) == struct["size"]
    fields = [(f[0], getattr(mirror, f[0]).offset, getattr(mirror, f[0]).size)
              for f in mirror._fields_]
    members = [(m["name"], m["bits_offset"] // 8, type_size(btf_types, m["type_id"]))
               for m in struct["members"]]
    assert fields == members


def test_a_parked_attempt_begins_with_its_event(btf_types):
    # User space reads an attempt still parked at exit as the event at the
    # start of the table's value (Tracer.take_pending), whatever follows it.
    [attempt] = [t for t in btf_types.values()
                 if t["kind"] == "STRUCT" and t["name"] == "attempt"]
    first = attempt["members"][0]
    assert first["bits_offset"] == 0
    assert btf_types[first["type_id"]]["name"] == "event"
    assert attempt["size"] >= ctypes.sizeof(Event)


def test_a_slot_holds_its_owner_then_its_attempt(btf_types):
    # Tracer._take_slots reads a slot's owner through SlotHead and the
    # attempt's event right after it.
    [slot] = [t for t in btf_types.values() if t["kind"] == "STRUCT" and t["name"] == "slot"]
    members = [(m["name"], m["bits_offset"] // 8) for m in slot["members"]]
    assert members == [("owner", SlotHead.owner.offset), ("attempt", ctypes.sizeof(SlotHead))]
    assert type_size(btf_types, slot["members"][0]["type_id"]) == SlotHead.owner.size
    assert btf_types[slot["members"][1]["type_id"]]["name"] == "attempt"


def test_batch_format_decodes_like_the_mirror():
    # The struct format the reader decodes batches with is derived from the
    # mirror; both must read the same bytes the same way.
    event = Event(ts_ns=1, cgroup_id=2, mntns_id=3, pid=4, tid=5, uid=6, lport=7, dport=8,
                  family=6, comm=b"name", ppid=9, pcomm=b"parent", ns_pid=10, ns_tid=11,
                  answer_kind=1, answer_type=3, answer_code=13,
                  answer_ttl=63)
    event.answer_from[:] = bytes(range(32, 48))
    event.saddr[:] = bytes(range(16))
    event.daddr[:] = bytes(range(16, 32))
    decoded = EventRecord._make(EVENT_FORMAT.unpack(bytes(event)))
    assert EVENT_FORMAT.size == RECORD_FORMAT.size == ctypes.sizeof(Event)
    for name, _ in Event._fields_:
        value = getattr(event, name)
        expected = bytes(value) if isinstance(value, ctypes.Array) else value
        assert getattr(decoded, name) == (expected.ljust(16, b"\0") if name in ("comm", "pcomm")
                                          else expected)
    # The reader's form: the fields before the identity one by one, then the
    # identity's bytes, which decode to the same fields, then those after it.
    record = decode_event(event)
    names = list(EventRecord._fields)
    split, end = names.index(IDENTITY[0]), names.index(IDENTITY[1]) + 1
    assert record[:IDENTITY_BYTES] == decoded[:split]
    assert record[IDENTITY_BYTES + 1:] == decoded[end:]
    assert len(record) == split + 1 + len(names) - end
    assert identities[record[IDENTITY_BYTES]] == decoded[split:end]
    assert IDENTITY_FORMAT.size == len(record[IDENTITY_BYTES])


def test_identity_fields_are_contiguous_and_unpadded():
    # The identity's bytes are a cache key: a padding byte inside them (never
    # written by the kernel side) could split one identity into many.
    names = [name for name, _ in Event._fields_]
    run = names[names.index(IDENTITY[0]):names.index(IDENTITY[1]) + 1]
    for before, after in zip(run, run[1:]):
        field = getattr(Event, before)
        assert field.offset + field.size == getattr(Event, after).offset
    assert DNS_EVENT_FORMAT.size == ctypes.sizeof(DnsEvent)
