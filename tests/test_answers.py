"""--outcome's answers: the ICMP error or RST that ended a failed attempt,
who sent it and with what TTL, against the real kernel (a router namespace
that answers with ICMP, a DNAT rule that hides the real peer); and the pure
functions that name them."""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import subprocess
import sys
import uuid
from typing import Iterator

import pytest
from conftest import free_port, impatient_socket, ip_batch, nft, refused_connect, sh
from test_outcome import failing_connect

from tcpconnect.cause import cause_text, icmp_name
from tcpconnect.events import ANSWER_ICMP, ANSWER_RST, ERROR, OUTCOME_NO_SYN
from tcpconnect.outcome import TCP_CLOSE, result_name
from tcpconnect.records import EventRecord, decoded

# Linux's default TTL and hop limit (net.ipv4.ip_default_ttl,
# net.ipv6.conf.*.hop_limit), which no test namespace changes.
DEFAULT_TTL = 64


@pytest.fixture
def routed(veth) -> Iterator[tuple[str, str]]:
    """An IPv4 and an IPv6 address behind the test namespace, which routes
    for this host: the namespace forwards to a dummy interface that leads
    nowhere. Derived from the veth pair's random addresses, so concurrent
    runs do not collide."""
    v4 = ipaddress.IPv4Address(veth.peer4) + (10 << 16)  # 10.213.x.y -> 10.223.x.y
    v6 = ipaddress.IPv6Address(veth.peer6) + (1 << 32)
    sh("ip", "netns", "exec", veth.netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
       "net.ipv6.conf.all.forwarding=1")
    # A veth pair with both ends inside: a link that nothing answers on.
    ip_batch("link add nowhere type veth peer name nowhere1", "link set nowhere up",
             netns=veth.netns)
    ip_batch(f"route add {v4}/32 via {veth.peer4}", f"route add {v6}/128 via {veth.peer6}")
    try:
        yield str(v4), str(v6)
    finally:
        subprocess.run(["ip", "route", "del", f"{v4}/32"], capture_output=True)
        subprocess.run(["ip", "-6", "route", "del", f"{v6}/128"], capture_output=True)


# ---- answers on the real kernel -------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("router,icmp,code,expected_errno", [
    # An `unreachable` route: the router's own ICMP error (ip_error,
    # ip6_pkt_discard), a host-unreachable for IPv4 and no-route for IPv6.
    ("route", {4: "host-unreachable", 6: "no-route"}, {4: (3, 1), 6: (1, 0)},
     {4: errno.EHOSTUNREACH, 6: errno.ENETUNREACH}),
    # A firewall: nftables' reject, which the kernel turns into EACCES for
    # ICMPv6 (and EHOSTUNREACH for IPv4's code 13): a firewall's answer is
    # still `unreachable`, not `denied` (a refusal on this host).
    ("firewall", {4: "admin-prohibited", 6: "admin-prohibited"}, {4: (3, 13), 6: (1, 1)},
     {4: errno.EHOSTUNREACH, 6: errno.EACCES}),
])
def test_icmp_from_a_router(trace, veth, routed, family, router, icmp, code, expected_errno):
    target = routed[0] if family == 4 else routed[1]
    router_address = veth.peer4 if family == 4 else veth.peer6
    ip = "ip" if family == 4 else "ip6"
    if router == "route":
        sh("ip", "-n", veth.netns, "-%d" % family, "route", "add", "unreachable", target)
    else:
        sh("ip", "-n", veth.netns, "-%d" % family, "route", "add", target, "dev", "nowhere")
        nft(veth.netns, "add table inet t",
            "add chain inet t through { type filter hook forward priority 0; }",
            f"add rule inet t through {ip} daddr {target} reject with "
            f"{'icmp' if family == 4 else 'icmpv6'} type admin-prohibited")
    port = free_port()
    t = trace("--outcome", "-j", "-P", str(port))
    failing_connect(family, target, port, expected_errno[family])
    t.stop()
    [event] = t.json_rows()
    # The router is one hop away: its answer arrives with the TTL it was sent with.
    assert {name: event[name] for name in (
        "daddr", "result", "errno", "icmp_type", "icmp_code", "icmp_from", "rst_from",
        "answer_ttl", "cause")} == {
        "daddr": target, "result": "unreachable",
        "errno": errno.errorcode[expected_errno[family]],
        "icmp_type": code[family][0], "icmp_code": code[family][1],
        "icmp_from": router_address, "rst_from": None, "answer_ttl": DEFAULT_TTL,
        "cause": "%s %s from %s" % ("ICMP" if family == 4 else "ICMPv6", icmp[family],
                                    router_address)}


@pytest.mark.parametrize("family,addr", [(4, "127.0.0.1"), (6, "::1")])
def test_rst_from_the_destination(trace, family, addr):
    port = free_port()
    t = trace("--outcome", "-j", "-P", str(port))
    refused_connect(family, port)
    t.stop()
    [event] = t.json_rows()
    assert {name: event[name] for name in (
        "result", "icmp_type", "icmp_code", "icmp_from", "rst_from", "answer_ttl", "cause")} == {
        "result": "refused", "icmp_type": None, "icmp_code": None, "icmp_from": None,
        "rst_from": addr, "answer_ttl": DEFAULT_TTL, "cause": "RST from destination"}


def test_an_earlier_attempts_answer_is_not_taken_by_the_next_on_its_port(trace, veth):
    # Both attempts from one local address and port: the first is refused
    # (its RST stays in the port's slot), the second's SYN is dropped by the
    # peer, so it times out with an error and no answer of its own.
    refused, dropped = free_port(), free_port()
    nft(veth.netns, "add table inet t",
        "add chain inet t in { type filter hook input priority 0; }",
        f"add rule inet t in tcp dport {dropped} drop")
    t = trace("--outcome", "-j", "-L", "-P", f"{refused},{dropped}")
    local_port = 0
    for port, expected in ((refused, errno.ECONNREFUSED), (dropped, errno.ETIMEDOUT)):
        with impatient_socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            client.bind((veth.host4, local_port))
            local_port = client.getsockname()[1]
            with pytest.raises(OSError) as failure:
                client.connect((veth.peer4, port))
            assert failure.value.errno == expected
    t.stop()
    first, second = t.json_rows()
    assert [(row["lport"], row["result"], row["rst_from"], row["icmp_from"])
            for row in (first, second)] == [(local_port, "refused", veth.peer4, None),
                                            (local_port, "timeout", None, None)]


# Sends one TCP segment with RST and without ACK from argv[1]:argv[3] to
# argv[2]:argv[4] through a raw socket (the kernel adds the IP header).
RST_WITHOUT_ACK = """
import socket, struct, sys
src, dst, sport, dport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
header = struct.pack("!HHIIHHHH", sport, dport, 12345, 0, (5 << 12) | 0x04, 0, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header))
total = sum(struct.unpack("!%dH" % ((len(pseudo) + len(header)) // 2), pseudo + header))
while total >> 16:
    total = (total & 0xffff) + (total >> 16)
header = header[:16] + struct.pack("!H", ~total & 0xffff) + header[18:]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.sendto(header, (dst, 0))
"""


def test_a_rst_tcp_ignores_is_not_named(trace, veth):
    # TCP in SYN_SENT ignores a RST that acknowledges nothing (RFC 793;
    # tcp_rcv_synsent_state_process): the attempt goes on and times out,
    # and the RST is not its answer.
    port = free_port()
    nft(veth.netns, "add table inet t",
        "add chain inet t in { type filter hook input priority 0; }",
        f"add rule inet t in tcp dport {port} drop")
    t = trace("--outcome", "-j", "-P", str(port))
    with impatient_socket() as client:
        client.setblocking(False)
        assert client.connect_ex((veth.peer4, port)) == errno.EINPROGRESS
        sender = veth.run(sys.executable, "-c", RST_WITHOUT_ACK, veth.peer4, veth.host4,
                          str(port), str(client.getsockname()[1]))
        assert sender.wait(timeout=30) == 0
        assert select.select([], [client], [], 10)[1]
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ETIMEDOUT
    t.stop()
    [row] = t.json_rows()
    assert (row["result"], row["rst_from"], row["icmp_from"]) == ("timeout", None, None)


@pytest.fixture
def dnat() -> Iterator[str]:
    """An nftables table of its own in this host's namespace (removed
    afterwards), for DNAT rules on locally made connects."""
    table = "tcpconnect_test_" + uuid.uuid4().hex[:8]
    sh("nft", f"add table ip {table}")
    sh("nft", f"add chain ip {table} out {{ type nat hook output priority -100; }}")
    try:
        yield table
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)


def test_rst_from_behind_dnat_names_the_real_peer(trace, veth, dnat):
    # A service address this host rewrites to a backend (as kube-proxy
    # does): the row keeps the address the process asked for, the cause
    # names the backend that refused.
    service = str(ipaddress.IPv4Address(veth.peer4) + (20 << 16))  # 10.233.x.y
    port = free_port()
    sh("nft", f"add rule ip {dnat} out ip daddr {service} tcp dport {port} "
              f"dnat to {veth.peer4}")
    # Routed towards the backend, so the source address is one it can answer.
    sh("ip", "route", "add", f"{service}/32", "via", veth.peer4)
    try:
        t = trace("--outcome", "-j", "-P", str(port))
        refused_connect(4, port, service)
        t.stop()
    finally:
        subprocess.run(["ip", "route", "del", f"{service}/32"], capture_output=True)
    [event] = t.json_rows()
    assert (event["daddr"], event["result"], event["rst_from"], event["cause"]) == (
        service, "refused", veth.peer4, f"RST from {veth.peer4}")


# ---- pure functions -------------------------------------------------------

def answered(kind: int, family: int, daddr: str, sender: str, icmp: tuple[int, int] = (0, 0),
             error: int = errno.EHOSTUNREACH) -> tuple:
    packed = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, daddr)
    return decoded(EventRecord(
        outcome=TCP_CLOSE, error=error, family=family, daddr=packed.ljust(16, b"\0"),
        answer_from=socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6,
                                     sender).ljust(16, b"\0"),
        answer_kind=kind, answer_type=icmp[0], answer_code=icmp[1], answer_ttl=61))


@pytest.mark.host_only
@pytest.mark.parametrize("event,cause", [
    (answered(ANSWER_ICMP, 4, "192.0.2.1", "10.9.0.1", (3, 13)),
     "ICMP admin-prohibited from 10.9.0.1"),
    (answered(ANSWER_ICMP, 4, "192.0.2.1", "10.9.0.1", (11, 0)), "ICMP ttl-exceeded from 10.9.0.1"),
    (answered(ANSWER_ICMP, 4, "192.0.2.1", "10.9.0.1", (3, 99)),
     "ICMP type-3-code-99 from 10.9.0.1"),
    (answered(ANSWER_ICMP, 6, "2001:db8::1", "fd00::1", (1, 3)),
     "ICMPv6 addr-unreachable from fd00::1"),
    (answered(ANSWER_RST, 4, "192.0.2.1", "192.0.2.1", error=errno.ECONNREFUSED),
     "RST from destination"),
    (answered(ANSWER_RST, 6, "2001:db8::1", "2001:db8::2", error=errno.ECONNRESET),
     "RST from 2001:db8::2"),
])
def test_answer_causes(event, cause):
    assert cause_text(event, result_name(TCP_CLOSE, event[ERROR])) == cause


@pytest.mark.host_only
def test_no_answer_keeps_the_syn_count():
    event = decoded(EventRecord(outcome=TCP_CLOSE, error=errno.ECONNREFUSED, family=4,
                                syn_retries=2))
    assert cause_text(event, "refused") == "RST after 3 SYNs"
    no_syn = decoded(EventRecord(outcome=OUTCOME_NO_SYN, error=errno.ENETUNREACH, family=4))
    assert cause_text(no_syn, "no-route") == "no SYN sent"


@pytest.mark.host_only
@pytest.mark.parametrize("family,icmp,name", [
    (4, (3, 0), "net-unreachable"), (4, (3, 3), "port-unreachable"),
    (4, (3, 4), "frag-needed"), (4, (12, 0), "parameter-problem"),
    (6, (1, 0), "no-route"), (6, (1, 1), "admin-prohibited"),
    (6, (1, 4), "port-unreachable"), (6, (3, 0), "hop-limit-exceeded"),
    (6, (2, 0), "type-2-code-0"),
])
def test_icmp_names(family, icmp, name):
    assert icmp_name(family, *icmp) == name
