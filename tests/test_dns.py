import ipaddress
import itertools

import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dns_attacks
from tcpconnect.dns import DnsCache, query_column

# Never loads BPF: the kernel matrix leaves it to the host run.
pytestmark = pytest.mark.host_only

MS = 1_000_000


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def response(
    qname: str, *answers: dnslib.RR, qtype: str = "A", rcode: int = 0
) -> bytes:
    # Fixed id: dnslib otherwise draws one from `random`, which hypothesis
    # rejects inside strategies because it breaks reproducibility.
    header = dnslib.DNSHeader(id=0x1234, qr=1, rd=1, ra=1, rcode=rcode)
    reply = dnslib.DNSRecord(
        header, q=dnslib.DNSQuestion(qname, getattr(dnslib.QTYPE, qtype))
    )
    reply.add_answer(*answers)
    return reply.pack()


def a(name: str, addr: str) -> dnslib.RR:
    return dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(addr), ttl=60)


def aaaa(name: str, addr: str) -> dnslib.RR:
    return dnslib.RR(name, dnslib.QTYPE.AAAA, rdata=dnslib.AAAA(addr), ttl=60)


def cname(name: str, target: str) -> dnslib.RR:
    return dnslib.RR(name, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME(target), ttl=60)


class FakeTimer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache() -> DnsCache:
    return DnsCache()


def test_a_record(cache: DnsCache) -> None:
    assert (
        cache.record(response("example.com", a("example.com", "93.184.216.34")), 42)
        == 1
    )
    assert cache.lookup(packed("93.184.216.34")) == ("example.com", 42)
    assert (cache.malformed, cache.ignored) == (0, 0)


def test_aaaa_record(cache: DnsCache) -> None:
    pkt = response(
        "example.com", aaaa("example.com", "2606:2800:220:1::248"), qtype="AAAA"
    )
    assert cache.record(pkt, 7) == 1
    assert cache.lookup(packed("2606:2800:220:1::248")) == ("example.com", 7)


def test_cname_chain_maps_to_question_name(cache: DnsCache) -> None:
    pkt = response(
        "a.example",
        cname("a.example", "b.example"),
        cname("b.example", "c.example"),
        a("c.example", "192.0.2.1"),
        aaaa("c.example", "2001:db8::1"),
    )
    assert cache.record(pkt, 1) == 2
    assert cache.lookup(packed("192.0.2.1")) == ("a.example", 1)
    assert cache.lookup(packed("2001:db8::1")) == ("a.example", 1)


def test_cname_chain_in_any_order_and_any_case(cache: DnsCache) -> None:
    pkt = response(
        "WwW.Example.COM",
        a("cdn.EXAMPLE.net", "192.0.2.9"),
        cname("edge.example.net", "CDN.example.net"),
        cname("www.example.com", "edge.example.net"),
    )
    assert cache.record(pkt, 1) == 1
    # The name is reported as asked, not lowercased.
    assert cache.lookup(packed("192.0.2.9")) == ("WwW.Example.COM", 1)


def test_cname_loop_terminates(cache: DnsCache) -> None:
    pkt = response(
        "a.example",
        cname("a.example", "b.example"),
        cname("b.example", "a.example"),
        a("b.example", "192.0.2.3"),
    )
    assert cache.record(pkt, 1) == 1
    assert cache.lookup(packed("192.0.2.3")) == ("a.example", 1)


def test_answers_unrelated_to_question_are_ignored(cache: DnsCache) -> None:
    pkt = response(
        "a.example", a("a.example", "192.0.2.1"), a("evil.example", "192.0.2.66")
    )
    assert cache.record(pkt, 1) == 1
    assert cache.lookup(packed("192.0.2.66")) is None


def test_multiple_answers(cache: DnsCache) -> None:
    addrs = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    pkt = response("multi.example", *(a("multi.example", x) for x in addrs))
    assert cache.record(pkt, 5) == 3
    for x in addrs:
        assert cache.lookup(packed(x)) == ("multi.example", 5)


def test_duplicate_answers_counted_once(cache: DnsCache) -> None:
    pkt = response(
        "dup.example", a("dup.example", "192.0.2.1"), a("dup.example", "192.0.2.1")
    )
    assert cache.record(pkt, 5) == 1


def test_non_address_answers_are_skipped(cache: DnsCache) -> None:
    mx = dnslib.RR(
        "mx.example", dnslib.QTYPE.MX, rdata=dnslib.MX("mail.example"), ttl=60
    )
    assert cache.record(response("mx.example", mx, qtype="MX"), 1) == 0
    assert len(cache) == 0
    assert (cache.malformed, cache.ignored) == (0, 0)


def test_later_response_overwrites(cache: DnsCache) -> None:
    cache.record(response("old.example", a("old.example", "192.0.2.1")), 1)
    cache.record(response("new.example", a("new.example", "192.0.2.1")), 2)
    assert cache.lookup(packed("192.0.2.1")) == ("new.example", 2)


def test_query_is_ignored(cache: DnsCache) -> None:
    query = dnslib.DNSRecord.question("example.com")
    query.add_answer(a("example.com", "192.0.2.1"))
    assert cache.record(query.pack(), 1) == 0
    assert cache.ignored == 1
    assert cache.lookup(packed("192.0.2.1")) is None


def test_response_without_question_is_ignored(cache: DnsCache) -> None:
    reply = dnslib.DNSRecord(dnslib.DNSHeader(qr=1), a=a("example.com", "192.0.2.1"))
    assert cache.record(reply.pack(), 1) == 0
    assert cache.ignored == 1
    assert len(cache) == 0


def test_nxdomain_records_nothing(cache: DnsCache) -> None:
    pkt = response("nope.example", rcode=dnslib.RCODE.NXDOMAIN)
    assert cache.record(pkt, 1) == 0
    assert len(cache) == 0
    assert (cache.malformed, cache.ignored) == (0, 0)


def test_unusual_label_bytes_become_str(cache: DnsCache) -> None:
    name = dnslib.DNSLabel([b"we\x00ird.dot", "caf\u00e9".encode(), b"example"])
    reply = dnslib.DNSRecord(dnslib.DNSHeader(qr=1), q=dnslib.DNSQuestion(name))
    reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.1")))
    assert cache.record(reply.pack(), 1) == 1
    entry = cache.lookup(packed("192.0.2.1"))
    assert entry is not None
    assert isinstance(entry[0], str)
    assert not entry[0].endswith(".")


def test_truncated_at_every_offset(cache: DnsCache) -> None:
    pkt = response(
        "a.example",
        cname("a.example", "b.example"),
        a("b.example", "192.0.2.1"),
        aaaa("b.example", "2001:db8::1"),
    )
    for cut in range(len(pkt)):
        before = cache.malformed
        assert cache.record(pkt[:cut], 1) == 0
        assert cache.malformed == before + 1, cut
    assert len(cache) == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        b"\xff" * 12,
        b"\xff" * 600,
        # Header claims one question whose name is a self-referencing pointer.
        bytes.fromhex("0000 8180 0001 0000 0000 0000 c00c 0001 0001"),
        # Label that is not valid UTF-8.
        bytes.fromhex("0000 8180 0001 0000 0000 0000 02ff fe00 0001 0001"),
    ],
)
def test_garbage(cache: DnsCache, garbage: bytes) -> None:
    assert cache.record(garbage, 1) == 0
    assert cache.malformed == 1
    assert len(cache) == 0


def test_ttl_expiry() -> None:
    timer = FakeTimer()
    cache = DnsCache(timer=timer)
    cache.record(response("example.com", a("example.com", "192.0.2.1")), 1)
    timer.now = 24 * 3600 - 1
    assert cache.lookup(packed("192.0.2.1")) == ("example.com", 1)
    timer.now = 24 * 3600 + 1
    assert cache.lookup(packed("192.0.2.1")) is None


def test_a_lookup_sees_every_answer_recorded_before_it() -> None:
    # Lookups are kept in front of the cache; a new answer must show at once.
    cache = DnsCache(timer=FakeTimer())
    assert cache.lookup(packed("192.0.2.1")) is None
    cache.record(response("one.example", a("one.example", "192.0.2.1")), 1)
    assert cache.lookup(packed("192.0.2.1")) == ("one.example", 1)
    cache.record(response("two.example", a("two.example", "192.0.2.1")), 2)
    assert cache.lookup(packed("192.0.2.1")) == ("two.example", 2)


def test_maxsize_bound() -> None:
    cache = DnsCache(timer=FakeTimer())
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    for i in range(10240 + 100):
        addr = str(ipaddress.IPv4Address(base + i))
        assert cache.record(response("bulk.example", a("bulk.example", addr)), i) == 1
    assert len(cache) == 10240
    newest = str(ipaddress.IPv4Address(base + 10240 + 99))
    assert cache.lookup(packed(newest)) == ("bulk.example", 10240 + 99)


def test_query_column_localhost(cache: DnsCache) -> None:
    assert query_column(cache, 4, packed("127.0.0.1"), 0) == "localhost"
    assert query_column(cache, 6, packed("::1"), 0) == "localhost"


def test_query_column_localhost_wins_over_cache(cache: DnsCache) -> None:
    cache.record(response("localhost", a("localhost", "127.0.0.1")), 0)
    assert query_column(cache, 4, packed("127.0.0.1"), 10**12) == "localhost"


def test_query_column_other_loopback_is_not_special(cache: DnsCache) -> None:
    assert query_column(cache, 4, packed("127.0.0.2"), 0) == "No DNS Query"


def test_query_column_no_query(cache: DnsCache) -> None:
    assert query_column(cache, 4, packed("192.0.2.1"), 0) == "No DNS Query"
    assert query_column(cache, 6, packed("2001:db8::1"), 0) == "No DNS Query"


def test_query_column_fast_lookup(cache: DnsCache) -> None:
    cache.record(response("example.com", a("example.com", "192.0.2.1")), 1_000 * MS)
    # Exactly 100 ms is still "fast"; only strictly more gets the delta.
    assert query_column(cache, 4, packed("192.0.2.1"), 1_100 * MS) == "example.com"


def test_query_column_slow_lookup(cache: DnsCache) -> None:
    cache.record(
        response("example.com", aaaa("example.com", "2001:db8::1"), qtype="AAAA"),
        1_000 * MS,
    )
    connect_ns = 1_000 * MS + 250_123_456
    assert (
        query_column(cache, 6, packed("2001:db8::1"), connect_ns)
        == "example.com (250.123ms)"
    )
    assert (
        query_column(cache, 6, packed("2001:db8::1"), 1_100 * MS + 1)
        == "example.com (100.000ms)"
    )


# --- property tests -------------------------------------------------------------

_label = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20
)
_name = st.lists(_label, min_size=1, max_size=4).map(".".join)
_ipv4 = st.ip_addresses(v=4)
_ipv6 = st.ip_addresses(v=6)

# Enough examples to hit odd corners, few enough to keep the file at ~1-2 s.
_FAST = settings(max_examples=150, deadline=None)


@_FAST
@given(st.binary(max_size=600))
def test_record_never_raises_on_arbitrary_bytes(payload: bytes) -> None:
    cache = DnsCache()
    recorded = cache.record(payload, 0)
    assert recorded == len(cache)
    if recorded:
        assert (cache.malformed, cache.ignored, cache.refused) == (0, 0, 0)
    else:
        assert cache.malformed + cache.ignored + cache.refused <= 1


@st.composite
def _valid_response(draw: st.DrawFn) -> bytes:
    name = draw(_name)
    target = draw(_name)
    return response(
        name,
        cname(name, target),
        a(target, str(draw(_ipv4))),
        aaaa(target, str(draw(_ipv6))),
    )


@st.composite
def _mutated_response(draw: st.DrawFn) -> bytes:
    pkt = bytearray(draw(_valid_response()))
    flips = draw(
        st.lists(
            st.tuples(st.integers(0, len(pkt) - 1), st.integers(0, 255)), max_size=8
        )
    )
    for pos, value in flips:
        pkt[pos] = value
    # Truncation is optional so that flips alone also reach the answer
    # parsing and caching code instead of always failing at the cut.
    cut = draw(st.one_of(st.none(), st.integers(0, len(pkt))))
    return bytes(pkt[:cut])


@_FAST
@given(_mutated_response())
def test_record_never_raises_on_mutated_responses(payload: bytes) -> None:
    cache = DnsCache()
    assert cache.record(payload, 0) == len(cache)
    assert cache.malformed + cache.ignored + cache.refused <= 1


@_FAST
@given(
    _name, st.lists(_name, max_size=3), st.one_of(_ipv4, _ipv6), st.integers(0, 2**63)
)
def test_round_trip(qname: str, chain: list[str], addr, received_ns: int) -> None:
    cache = DnsCache()
    owners = [qname, *chain]
    records = [cname(src, dst) for src, dst in itertools.pairwise(owners)]
    record_type = a if addr.version == 4 else aaaa
    records.append(record_type(owners[-1], str(addr)))
    assert cache.record(response(qname, *records), received_ns) == 1
    assert cache.lookup(addr.packed) == (qname, received_ns)


@pytest.mark.parametrize("payload", [
    pytest.param(dns_attacks.pointer_chain(200), id="pointer-chain-200"),
    pytest.param(dns_attacks.pointer_chain(17), id="pointer-chain-17"),
    pytest.param(dns_attacks.long_question(40), id="labels-per-message"),
    pytest.param(dns_attacks.name_over_255_octets(), id="name-over-255-octets"),
    pytest.param(dns_attacks.address_with_rdlength(1, 5), id="A-rdlength-5"),
    pytest.param(dns_attacks.address_with_rdlength(1, 3), id="A-rdlength-3"),
    pytest.param(dns_attacks.address_with_rdlength(28, 4), id="AAAA-rdlength-4"),
    pytest.param(dns_attacks.address_with_rdlength(28, 20), id="AAAA-rdlength-20"),
])
def test_costly_or_lying_answers_are_refused(cache: DnsCache, payload: bytes) -> None:
    assert len(payload) <= dns_attacks.ANSWER_SIZE
    assert cache.record(payload, 1) == 0
    assert (cache.refused, cache.malformed, cache.ignored, len(cache)) == (1, 0, 0, 0)


@pytest.mark.parametrize("payload, recorded", [
    pytest.param(dns_attacks.full_size_answer(), 75, id="full-size"),
    # Its A records are not named after the question, so none is kept.
    pytest.param(dns_attacks.pointer_chain(4), 0, id="short-pointer-chain"),
    pytest.param(dns_attacks.address_with_rdlength(1, 4), 2, id="A-rdlength-4"),
    pytest.param(dns_attacks.address_with_rdlength(28, 16), 2, id="AAAA-rdlength-16"),
])
def test_answers_within_the_bounds_are_parsed(cache: DnsCache, payload: bytes,
                                              recorded: int) -> None:
    assert cache.record(payload, 1) == recorded
    assert (cache.refused, cache.malformed, cache.ignored) == (0, 0, 0)
