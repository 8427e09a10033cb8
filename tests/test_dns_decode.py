"""The user-space half of -d end to end: a dns_event record as the kernel
hands it over, through DnsCache, to the printed row. tests/test_dns.py covers
the parser on its own; this adds the record decoding and the terminal."""

from __future__ import annotations

import ctypes
import ipaddress
import struct

import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpconnect.dns import DnsCache, query_column, query_of
from tcpconnect.events import DNS_EVENT_FORMAT, DNS_PAYLOAD_MAX, DNS_TS_NS, TS_NS, DnsEvent
from tcpconnect.output import Columns, TextFormatter
from tcpconnect.records import EventRecord, decoded, destination, dns_message

# Never loads BPF: the kernel matrix leaves it to the host run.
pytestmark = pytest.mark.host_only

RECORD_SIZE = ctypes.sizeof(DnsEvent)
HEADER = struct.Struct("<QHH")  # ts_ns, len, orig_len


def record(message: bytes, ts_ns: int = 0) -> bytes:
    """A dns_event as the kernel writes it: the message cut at the capture."""
    captured = message[:DNS_PAYLOAD_MAX]
    raw = HEADER.pack(ts_ns, len(captured), len(message)) + captured
    return raw + bytes(RECORD_SIZE - len(raw))


@given(st.binary(min_size=RECORD_SIZE, max_size=RECORD_SIZE))
def test_any_record_decodes_without_raising(raw: bytes) -> None:
    event = DNS_EVENT_FORMAT.unpack(raw)
    length = DnsEvent.from_buffer_copy(raw).len
    # A len beyond the buffer (never written by the kernel) cannot over-read.
    assert dns_message(event) == raw[HEADER.size:HEADER.size + length][:DNS_PAYLOAD_MAX]
    DnsCache().record(dns_message(event), event[DNS_TS_NS])


def connect_to(addr: str, ts_ns: int) -> tuple:
    return decoded(EventRecord(ts_ns=ts_ns, cgroup_id=0, mntns_id=0, latency_ns=0,
                               saddr=ipaddress.IPv4Address("10.0.0.1").packed + bytes(12),
                               daddr=ipaddress.IPv4Address(addr).packed + bytes(12),
                               pid=1, tid=1, uid=0, netns=0, lport=0, dport=443, family=4,
                               outcome=0, error=0, syn_retries=0, drops=0, drop_reason=0,
                               comm=b"curl".ljust(16, b"\0")))


def is_utf8(data: bytes) -> bool:
    try:
        data.decode()
        return True
    except UnicodeDecodeError:
        return False


# Mostly UTF-8 labels (control characters and escape sequences included),
# since dnslib rejects any other bytes before a name can reach the terminal.
LABEL = st.one_of(st.text(min_size=1, max_size=15).map(str.encode), st.binary(min_size=1, max_size=63))


@settings(max_examples=300)
@given(labels=st.lists(LABEL, min_size=1, max_size=4),
       addr=st.ip_addresses(v=4).map(str))
def test_any_name_prints_as_one_safe_line(labels: list[bytes], addr: str) -> None:
    name = dnslib.DNSLabel(labels)
    reply = dnslib.DNSRecord(dnslib.DNSHeader(id=1, qr=1), q=dnslib.DNSQuestion(name))
    reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(addr), ttl=60))
    cache = DnsCache()
    event = DNS_EVENT_FORMAT.unpack(record(reply.pack(), ts_ns=1_000))
    cache.record(dns_message(event), event[DNS_TS_NS])
    formatter = TextFormatter(Columns(dns=True), lambda e: query_column(
        cache, *destination(e), e[TS_NS]))
    connect = connect_to(addr, ts_ns=2_000)
    [line] = formatter.rows([connect])
    assert line.isprintable()
    if addr == "127.0.0.1":
        expected = "localhost"
    elif cache.malformed:
        # dnslib refuses labels that are not UTF-8 (DNS allows any byte):
        # such an answer is counted and skipped.
        assert any(not is_utf8(label) for label in labels)
        expected = "No DNS Query"
    else:
        # Zone-file text: \DDD for other bytes, \\ and \. for backslash and dot.
        expected = ".".join("".join(
            c if 0x21 <= ord(c) <= 0x7E and c not in "\\." else
            "\\" + c if c in "\\." else "\\%03d" % ord(c)
            for c in label.decode("latin-1")) for label in labels)
    assert line == TextFormatter(Columns()).rows([connect])[0] + expected


def test_a_name_spelling_an_escape_differs_from_one_holding_the_byte() -> None:
    cache = DnsCache()
    for label, addr in ((b"\\027", "192.0.2.1"), (b"\x1b", "192.0.2.2")):
        name = dnslib.DNSLabel([label, b"test"])
        reply = dnslib.DNSRecord(dnslib.DNSHeader(id=1, qr=1), q=dnslib.DNSQuestion(name))
        reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(addr), ttl=60))
        cache.record(reply.pack(), 0)
    spelled = query_of(cache, 4, ipaddress.IPv4Address("192.0.2.1").packed, 0)[0]
    holding = query_of(cache, 4, ipaddress.IPv4Address("192.0.2.2").packed, 0)[0]
    assert (spelled, holding) == ("\\\\027.test", "\\027.test")
