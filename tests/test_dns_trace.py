"""-d against the real kernel: real DNS answers (dnsmasq) received on loopback,
over veth and inside a test network namespace, then real connects to the
answered addresses; exact rows including the QUERY column."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from dataclasses import dataclass
from typing import Iterator, Protocol

import dns_attacks
import dnslib
import pytest
from conftest import (
    ROOT,
    VethPair,
    comm_of,
    dns_capture_reads_whole_packets,
    free_port,
    kernel_allows_whole_packets,
    refused_connect,
    row,
)

from tcpconnect.events import DNS_PAYLOAD_MAX
from tcpconnect.tracer import DNS_DYNPTR_PROGRAM, Tracer, TracerConfig

DNSMASQ = "/usr/sbin/dnsmasq"
ME = os.getpid()

# Looks up a name at a DNS server, waits, then connects to the last address of
# the answer (expecting a refusal) and reports what it did. Query and connect
# happen in one process, so a "fast" lookup is microseconds old at the connect:
# the target comes from a scan of the answer section, and dnslib's parse (tens
# of ms for 60 records under TCG, enough to cross the tracer's 100 ms
# staleness mark) waits until after the connect.
CLIENT = textwrap.dedent("""
    import json, os, socket, sys, time
    import dnslib
    server, name, qtype, port, delay, udp_len = sys.argv[1:7]
    query = dnslib.DNSRecord.question(name, qtype)
    query.add_ar(dnslib.EDNS0(udp_len=int(udp_len)))
    af = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(query.pack(), (server, 53))
        message = s.recv(65535)

    def past_name(i):
        while message[i] and message[i] < 0xC0:
            i += message[i] + 1
        return i + (2 if message[i] else 1)

    families = {1: socket.AF_INET, 28: socket.AF_INET6}
    i = past_name(12) + 4
    for _ in range(int.from_bytes(message[6:8], "big")):
        i = past_name(i)
        rtype = int.from_bytes(message[i:i + 2], "big")
        length = int.from_bytes(message[i + 8:i + 10], "big")
        if rtype in families:
            target = socket.inet_ntop(families[rtype], message[i + 10:i + 10 + length])
        i += 10 + length
    time.sleep(float(delay))
    with socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET) as c:
        try:
            c.connect((target, int(port)))
            refused = False
        except ConnectionRefusedError:
            refused = True
    reply = dnslib.DNSRecord.parse(message)
    answers = [str(rr.rdata) for rr in reply.rr if rr.rtype in (1, 28)]
    assert answers[-1] == target, (answers, target)
    print(json.dumps({"pid": os.getpid(), "comm": open("/proc/self/comm").read().strip(),
                      "answers": answers, "size": len(message), "refused": refused}))
""")


@dataclass
class Lookup:
    """What one CLIENT run did."""

    pid: int
    comm: str
    answers: list[str]
    size: int  # of the DNS message received

    @property
    def target(self) -> str:
        return self.answers[-1]


def lookup_and_connect(server: str, name: str, qtype: str, port: int, delay: float = 0,
                       udp_len: int = 1232, netns: VethPair | None = None) -> Lookup:
    cmd = [sys.executable, "-c", CLIENT, server, name, qtype, str(port), str(delay),
           str(udp_len)]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns.netns, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report.pop("refused"), "the connect was expected to be refused"
    return Lookup(**report)


class StartDnsmasq(Protocol):
    def __call__(self, listen: list[str], *records: str,
                 netns: VethPair | None = None) -> None: ...


@pytest.fixture
def dnsmasq() -> Iterator[StartDnsmasq]:
    """Starts dnsmasq answering only from its command line (`records`),
    bound to the `listen` addresses, in the root or a test namespace."""
    started: list[subprocess.Popen] = []

    def start(listen: list[str], *records: str, netns: VethPair | None = None) -> None:
        cmd = [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
               "--port=53", "--bind-interfaces", *(f"--listen-address={a}" for a in listen),
               *records]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns.netns, *cmd]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        started.append(proc)
        # It logs "started" once its sockets are bound.
        assert proc.stderr is not None
        log = []
        for line in proc.stderr:
            log.append(line)
            if "started" in line:
                break
        else:
            pytest.fail("dnsmasq did not start: " + "".join(log))

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def unique_loopback(first: int) -> str:
    """A loopback address of this test alone: 127.first.x.y."""
    tag = uuid.uuid4().int
    return f"127.{first}.{tag % 250 + 1}.{tag // 250 % 250 + 1}"


def query_row(lookup: Lookup, family: int, saddr: str, port: int, query: str) -> str:
    return row(lookup.pid, lookup.comm, family, saddr, lookup.target, port, query=query)


@pytest.mark.user_space
def test_header_ends_with_query_column(trace):
    t = trace("-d", "-P", str(free_port()))
    # bcc: "%-6s" % "DPORT", then " QUERY".
    assert t.header == ("PID     COMM         IP SADDR            DADDR            DPORT"
                        "  QUERY")
    t.stop()
    t = trace("-d", "-L", "-P", str(free_port()))
    assert t.header == ("PID     COMM         IP SADDR            LPORT  DADDR"
                        "            DPORT  QUERY")
    t.stop()


# Where the resolver runs, who asks it, and what answers: every path a DNS
# answer can take to the tracer here, on IPv4 and IPv6 transport.
PATHS = {
    # A stub resolver on the host's loopback.
    "root-loopback-v4": dict(server_in_netns=False, client_in_netns=False, qtype="A"),
    # A resolver in the test namespace on its own ::1, asked from there.
    "netns-loopback-v6": dict(server_in_netns=True, client_in_netns=True, qtype="AAAA"),
    "netns-loopback-v4": dict(server_in_netns=True, client_in_netns=True, qtype="A"),
    # Answers coming into the root namespace over veth.
    "veth-to-root-v4": dict(server_in_netns=True, client_in_netns=False, qtype="A"),
    "veth-to-root-v6": dict(server_in_netns=True, client_in_netns=False, qtype="AAAA"),
    # Answers coming into the test namespace over veth.
    "veth-to-netns-v4": dict(server_in_netns=False, client_in_netns=True, qtype="A"),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_fast_lookup_shows_the_name(trace, dnsmasq, veth, path):
    where = PATHS[path]
    v6 = where["qtype"] == "AAAA"
    port = free_port()
    if where["server_in_netns"] and where["client_in_netns"]:
        # Inside the namespace its loopback is private to this test.
        server = "::1" if v6 else "127.0.0.1"
        answer = veth.peer6 if v6 else "127.0.0.9"
        saddr = veth.peer6 if v6 else "127.0.0.1"
    elif where["server_in_netns"]:
        server = veth.peer6 if v6 else veth.peer4
        answer = server
        saddr = veth.host6 if v6 else veth.host4
    elif where["client_in_netns"]:
        server = answer = veth.host4
        saddr = veth.peer4
    else:
        server = unique_loopback(53)
        answer = unique_loopback(54)
        saddr = "127.0.0.1"
    dnsmasq([server], f"--host-record=svc.test,{answer}",
            netns=veth if where["server_in_netns"] else None)
    t = trace("-d", "-P", str(port))
    lookup = lookup_and_connect(server, "svc.test", where["qtype"], port,
                                netns=veth if where["client_in_netns"] else None)
    t.stop()
    assert lookup.answers == [answer]
    assert t.rows == [query_row(lookup, 6 if v6 else 4, saddr, port, "svc.test")]
    assert t.stderr == ""


@pytest.mark.user_space
def test_slow_lookup_shows_its_age(trace, dnsmasq):
    server, answer, port = unique_loopback(53), unique_loopback(54), free_port()
    dnsmasq([server], f"--host-record=svc.test,{answer}")
    t = trace("-d", "-P", str(port))
    lookup = lookup_and_connect(server, "svc.test", "A", port, delay=0.15)
    t.stop()
    [line] = t.rows
    prefix = row(lookup.pid, lookup.comm, 4, "127.0.0.1", answer, port, query="svc.test (")
    assert line.startswith(prefix)
    age = re.fullmatch(r"(\d+\.\d{3})ms\)", line[len(prefix):])
    assert age, line
    # The answer arrived before the client's 150 ms sleep began.
    assert 150 <= float(age.group(1)) < 3000


@pytest.mark.user_space
def test_json_carries_the_query(trace, dnsmasq):
    server, answer, port = unique_loopback(53), unique_loopback(54), free_port()
    dnsmasq([server], f"--host-record=svc.test,{answer}")
    t = trace("-j", "-d", "-P", str(port))
    lookup = lookup_and_connect(server, "svc.test", "A", port)
    t.stop()
    [record] = t.json_rows()
    assert (record["pid"], record["daddr"], record["dport"], record["query"]) == (
        lookup.pid, answer, port, "svc.test")


@pytest.mark.user_space
def test_connect_without_lookup(trace):
    port, addr = free_port(), unique_loopback(55)
    t = trace("-d", "-P", str(port))
    refused_connect(4, port, addr)
    t.stop()
    assert t.rows == [row(ME, comm_of(ME), 4, "127.0.0.1", addr, port, query="No DNS Query")]


@pytest.mark.user_space
def test_loopback_is_localhost(trace):
    port = free_port()
    t = trace("-d", "-P", str(port))
    refused_connect(4, port)
    refused_connect(6, port)
    t.stop()
    assert t.rows == [row(ME, comm_of(ME), 4, "127.0.0.1", "127.0.0.1", port, query="localhost"),
                      row(ME, comm_of(ME), 6, "::1", "::1", port, query="localhost")]


@pytest.mark.user_space
def test_cname_chain_shows_the_question(trace, dnsmasq):
    server, answer, port = unique_loopback(53), unique_loopback(54), free_port()
    dnsmasq([server], f"--host-record=svc.test,{answer}", "--cname=alias.test,svc.test",
            "--cname=www.test,alias.test")
    t = trace("-d", "-P", str(port))
    lookup = lookup_and_connect(server, "www.test", "A", port)
    t.stop()
    assert lookup.answers == [answer]
    assert t.rows == [query_row(lookup, 4, "127.0.0.1", port, "www.test")]


def many_addresses(count: int) -> tuple[list[str], list[str]]:
    """dnsmasq options answering big.test with `count` A records."""
    base = unique_loopback(56).rsplit(".", 1)[0]
    addrs = [f"{base}.{i}" for i in range(1, count + 1)]
    return [f"--host-record=big.test,{a}" for a in addrs], addrs


def test_answer_beyond_512_bytes(trace, dnsmasq):
    # dnsmasq rotates the records; the client connects to the last one,
    # which lies past byte 512 of the message.
    server, port = unique_loopback(53), free_port()
    records, addrs = many_addresses(60)
    dnsmasq([server], *records)
    t = trace("-d", "-P", str(port))
    lookup = lookup_and_connect(server, "big.test", "A", port)
    t.stop()
    assert 512 < lookup.size <= DNS_PAYLOAD_MAX
    assert sorted(lookup.answers) == sorted(addrs)
    assert t.rows == [query_row(lookup, 4, "127.0.0.1", port, "big.test")]
    assert t.stderr == ""


def test_answer_beyond_the_capture_is_counted_not_shown(trace, dnsmasq):
    server, port = unique_loopback(53), free_port()
    records, _ = many_addresses(90)
    dnsmasq([server], "--edns-packet-max=4096", *records)
    t = trace("-d", "-P", str(port))
    lookup = lookup_and_connect(server, "big.test", "A", port, udp_len=4096)
    t.stop()
    assert lookup.size > DNS_PAYLOAD_MAX
    assert t.rows == [query_row(lookup, 4, "127.0.0.1", port, "No DNS Query")]
    # Other DNS traffic on the machine may add to the count, never take away.
    skipped = re.search(r"^Skipped (\d+) malformed DNS responses$", t.stderr, re.M)
    assert skipped and int(skipped.group(1)) >= 1, t.stderr


def serve_one_answer(server: str, reply: dnslib.DNSRecord) -> threading.Thread:
    """Answers the next query to server:53 with `reply` (its id set to the
    query's): for answers no real server would give."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((server, 53))
    sock.settimeout(10)

    def serve() -> None:
        with sock:
            query, client = sock.recvfrom(4096)
            reply.header.id = dnslib.DNSRecord.parse(query).header.id
            sock.sendto(reply.pack(), client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.user_space
def test_hostile_name_is_escaped(trace):
    server, answer, port = unique_loopback(53), unique_loopback(54), free_port()
    # Terminal escape sequences, a bell and a NUL in the labels.
    name = dnslib.DNSLabel([b"\x1b[2J\x1b]0;owned\x07", b"x\x00y", b"test"])
    reply = dnslib.DNSRecord(dnslib.DNSHeader(qr=1, aa=1), q=dnslib.DNSQuestion(name))
    reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(answer), ttl=60))
    server_thread = serve_one_answer(server, reply)
    t = trace("-d", "-P", str(port))
    lookup = lookup_and_connect(server, "whatever.test", "A", port)
    t.stop()
    server_thread.join()
    assert t.rows == [query_row(lookup, 4, "127.0.0.1", port,
                                r"\027[2J\027]0;owned\007.x\000y.test")]
    assert all(c.isprintable() for c in t.stdout.replace("\n", ""))


# Sends each payload (hex in argv) from 127.0.0.1:53 to 127.0.0.1:5353 of the
# network namespace it runs in.
SEND_FROM_PORT_53 = textwrap.dedent("""
    import socket, sys
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 53))
        for payload in sys.argv[1:]:
            s.sendto(bytes.fromhex(payload), ("127.0.0.1", 5353))
""")


def test_costly_answers_from_an_unprivileged_user_are_refused(trace):
    """nobody, in a user and network namespace of its own, sends the answers
    dnslib would spend the most on: the tracer sees them (loopback of every
    namespace), refuses them within bounded work and loses no connect."""
    port = free_port()
    attacks = [dns_attacks.pointer_chain(200), dns_attacks.long_question(40),
               dns_attacks.name_over_255_octets(), dns_attacks.address_with_rdlength(1, 5)]
    rounds = 15
    t = trace("-d", "-P", str(port))
    sender = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "unshare", "-Urn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
         "/usr/bin/python3", "-c", SEND_FROM_PORT_53,
         *[payload.hex() for payload in attacks * rounds]],
        stderr=subprocess.PIPE, text=True)
    lports = [refused_connect(4, port) for _ in range(100)]
    assert sender.wait(timeout=30) == 0, sender.stderr.read()
    t.stop()
    assert t.rows == [row(ME, comm_of(ME), 4, "127.0.0.1", "127.0.0.1", port, query="localhost")
                      for _ in lports]
    refused = re.search(r"^Refused (\d+) DNS responses", t.stderr, re.M)
    # Other DNS traffic on the machine may add to the count, never take away.
    assert refused and int(refused.group(1)) >= len(attacks) * rounds, t.stderr
    assert "lost" not in t.stderr.lower(), t.stderr


# Writes one Ethernet frame (this tap's MAC, then the given IP packet) to a
# new tap device with IFF_NAPI_FRAGS: the kernel puts the first iovec in the
# skb's linear area and the rest in page fragments, and GRO (unless turned
# off) pulls only the headers it parsed, as drivers that split headers from
# data do.
TAP_INJECT = textwrap.dedent("""
    import ctypes, fcntl, os, socket, struct, subprocess, sys
    name, split, gro, packet = sys.argv[1], int(sys.argv[2]), sys.argv[3], bytes.fromhex(sys.argv[4])
    TUNSETIFF, SIOCETHTOOL, ETHTOOL_SGRO = 0x400454CA, 0x8946, 0x2C
    IFF_TAP, IFF_NO_PI, IFF_NAPI, IFF_NAPI_FRAGS = 0x0002, 0x1000, 0x0010, 0x0020
    tap = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", name.encode(),
                                            IFF_TAP | IFF_NO_PI | IFF_NAPI | IFF_NAPI_FRAGS))
    if gro == "off":
        value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_SGRO, 0))
        with socket.socket() as s:
            fcntl.ioctl(s, SIOCETHTOOL,
                        struct.pack("16sP", name.encode(), ctypes.addressof(value)) + bytes(16))
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    mac = bytes.fromhex(open(f"/sys/class/net/{name}/address").read().strip().replace(":", ""))
    frame = mac + bytes.fromhex("020000000053") + b"\\x08\\x00" + packet
    os.writev(tap, [frame[:split], frame[split:]])
""")


def ipv4_checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp4_from_port_53(payload: bytes) -> bytes:
    """An IPv4 datagram 192.0.2.53:53 -> 192.0.2.1 (UDP checksum 0: none). No
    address of the namespace is involved, so after the tracepoint the kernel
    simply drops it."""
    udp = (53).to_bytes(2, "big") + (33333).to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + bytes(2) + payload
    header = bytearray(bytes.fromhex("4500") + (20 + len(udp)).to_bytes(2, "big") +
                       bytes.fromhex("00014000 4011 0000 c0000235 c0000201"))
    header[10:12] = ipv4_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + udp


# Where tracing programs cannot read page fragments (before Linux 6.12, or
# raw tracepoints), what the answer's loss is reported as.
UNREAD_ANSWER = (r"^(\d+) DNS responses could not be read: their payload was in page "
                 r"fragments, which tracing programs on this kernel cannot read")
UNCHECKED_PACKET = (r"^(\d+) received packets were not checked for DNS responses: their "
                    r"headers were in page fragments")


def test_whole_packet_capture_exactly_where_the_kernel_allows_it():
    """The tool's probe (loading dns_dynptr.bpf.o) against the kernel's
    release: a verifier regression that refuses the capture on 6.12+, or a
    probe that takes a broken load for support, fails here."""
    with Tracer(TracerConfig(dns=True)) as tracer:
        whole = DNS_DYNPTR_PROGRAM in tracer.programs
        refused = tracer.dns_dynptr_refused
    assert whole == kernel_allows_whole_packets(), refused


@pytest.mark.parametrize("gro,split,unread", [
    ("on", 14, UNREAD_ANSWER),   # GRO pulls the IP and UDP headers: only the payload is paged
    ("off", 34, UNCHECKED_PACKET),  # the IP header is linear, the UDP header paged
    ("off", 14, UNCHECKED_PACKET),  # nothing but the Ethernet header was linear: all paged
], ids=["payload-paged", "udp-header-paged", "all-paged"])
def test_answer_in_page_fragments(trace, veth, gro, split, unread):
    answer, port = unique_loopback(57), free_port()
    reply = dnslib.DNSRecord(dnslib.DNSHeader(id=7, qr=1, aa=1),
                             q=dnslib.DNSQuestion("paged.test"))
    reply.add_answer(dnslib.RR("paged.test", dnslib.QTYPE.A, rdata=dnslib.A(answer), ttl=60))
    t = trace("-d", "-P", str(port))
    inject = veth.run(sys.executable, "-c", TAP_INJECT, f"tdq{uuid.uuid4().hex[:8]}",
                      str(split), gro, udp4_from_port_53(reply.pack()).hex(),
                      stderr=subprocess.PIPE, text=True)
    _, err = inject.communicate(timeout=20)
    assert inject.returncode == 0, err
    refused_connect(4, port, answer)
    t.stop()
    [line] = t.rows
    if not dns_capture_reads_whole_packets():
        assert line == row(ME, comm_of(ME), 4, "127.0.0.1", answer, port, query="No DNS Query")
        # Other traffic on the machine may add to the count, never take away.
        counted = re.search(unread, t.stderr, re.M)
        assert counted and int(counted.group(1)) >= 1, t.stderr
        return
    # The connect follows the injection only after a process exit: on a
    # busy machine that may take more than 100 ms, which adds the age.
    expected = row(ME, comm_of(ME), 4, "127.0.0.1", answer, port, query="paged.test")
    assert re.fullmatch(re.escape(expected) + r"( \(\d+\.\d{3}ms\))?", line), line
