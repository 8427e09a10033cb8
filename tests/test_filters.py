"""The kernel-side filters of addresses (--daddr, --saddr and their
exclusions), task names (--comm) and ports (--exclude-port), against the
real kernel across a veth pair; how many connects each removed
(--filter-counts, --metrics); their one-line errors; the trie keys."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import re
import urllib.request

import pytest
from conftest import free_port, run_tool

from tcpconnect.address_filters import parse_prefixes, trie_key
from tcpconnect.cli import parse_args
from tcpconnect.records import destination, format_address
from tcpconnect.session import tracer_config
from tcpconnect.tracer import Tracer


def destinations(veth) -> list[tuple[int, str, str]]:
    """(family of the connect, address connected to, daddr the row shows):
    loopback, the veth peer over both families, and the peer as a
    v4-mapped IPv6 address (an IPv4 connection on the wire)."""
    return [(4, "127.0.0.1", "127.0.0.1"), (4, "127.0.0.2", "127.0.0.2"), (6, "::1", "::1"),
            (4, veth.peer4, veth.peer4), (6, veth.peer6, veth.peer6),
            (6, "::ffff:" + veth.peer4, veth.peer4)]


def traced_destinations(workload, veth, *runs: tuple[str, ...]) -> list[list[str]]:
    """The destination of each event of each run, when a workload connects
    to every destination (a closed port: refused) once: a tracer per set of
    options, side by side, configured by the command line's own parsing.
    In this process, not as ten tool processes: under TCG each of those
    took seconds to start."""
    port = free_port()
    w = workload()
    with contextlib.ExitStack() as stack:
        tracers = [stack.enter_context(Tracer(tracer_config(parse_args(
            ["-P", str(port), *options])))) for options in runs]
        for family, addr, _ in destinations(veth):
            assert w.connect(family, addr, port)[1] == errno.ECONNREFUSED
        return [[format_address(*destination(event)) for event in tracer.finish().events]
                for tracer in tracers]


# Options, then the destinations whose rows they keep.
ADDRESS_CASES = [
    (("--daddr", "127.0.0.0/8"), ["127.0.0.1", "127.0.0.2"]),
    # Exclusions win, down to a single address (/32).
    (("--daddr", "127.0.0.0/8", "--exclude-daddr", "127.0.0.2"), ["127.0.0.1"]),
    # An IPv4 prefix matches a v4-mapped IPv6 destination.
    (("--daddr", "{peer4}/32"), ["{peer4}", "{peer4}"]),
    (("--daddr", "::1/128,{peer6}/128"), ["::1", "{peer6}"]),
    # 0.0.0.0/0 is every IPv4 address and no IPv6 one.
    (("--exclude-daddr", "0.0.0.0/0"), ["::1", "{peer6}"]),
    # ::/0 holds the IPv4 space too (at ::ffff:0:0/96): everything.
    (("--exclude-daddr", "::/0"), []),
    (("--daddr", "::ffff:0:0/96"), ["127.0.0.1", "127.0.0.2", "{peer4}", "{peer4}"]),
    # Sources: the veth side's own address, or anything but loopback.
    (("--saddr", "{host4}"), ["{peer4}", "{peer4}"]),
    (("--exclude-saddr", "127.0.0.0/8,::1"), ["{peer4}", "{peer6}", "{peer4}"]),
    # Repeated options add up.
    (("--daddr", "127.0.0.1", "--daddr", "{peer6}"), ["127.0.0.1", "{peer6}"]),
]


def test_address_filters(workload, veth):
    # One set of connects, a tracer per case: each case's rows exact.
    names = {"peer4": veth.peer4, "peer6": veth.peer6, "host4": veth.host4}
    runs = [tuple(option.format(**names) for option in options) for options, _ in ADDRESS_CASES]
    expected = [[address.format(**names) for address in kept] for _, kept in ADDRESS_CASES]
    assert dict(zip(runs, traced_destinations(workload, veth, *runs))) == dict(
        zip(runs, expected))


def test_ten_thousand_prefixes_from_a_file(workload, veth, tmp_path):
    # 9,999 /32s nobody connects to and the one that matters, in a file
    # with comments (a list this long fits no command line).
    many = [f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(9999)]
    listed = tmp_path / "blocked"
    listed.write_text("# blocked\n" + "\n".join(many) + "\n127.0.0.2  # loopback's other\n")
    assert traced_destinations(workload, veth, ("--exclude-daddr", f"@{listed}")) == [[
        "127.0.0.1", "::1", veth.peer4, veth.peer6, veth.peer4]]


def test_comm_is_the_kernels_name_not_the_programs(trace, workload):
    port = free_port()
    renamed = workload(name="sshd")
    plain = workload()
    t = trace("-j", "-P", str(port), "--comm", "sshd,no-such-task")
    for w in (plain, renamed, plain):
        assert w.connect(4, "127.0.0.1", port)[1] == errno.ECONNREFUSED
    t.stop()
    assert [(row["pid"], row["comm"]) for row in t.json_rows()] == [(renamed.pid, "sshd")]


def test_excluded_ports_with_and_without_a_port_list(trace, workload):
    w = workload(name="tcf-ports")
    ports = [free_port() for _ in range(3)]
    listed = ",".join(map(str, ports))
    tracers = [trace("-j", "--comm", "tcf-ports", f"-P{listed}", f"--exclude-port={ports[1]}"),
               trace("-j", "--comm", "tcf-ports", f"--exclude-port={ports[0]},{ports[2]}")]
    for port in ports:
        w.connect(4, "127.0.0.1", port)
    for t in tracers:
        t.stop()
    assert [[row["dport"] for row in t.json_rows()] for t in tracers] == [
        [ports[0], ports[2]], [ports[1]]]


FILTERED = re.compile(r"Connects filtered out in the kernel: (?:\d+ by --comm, )?"
                      r"2 by -P/--exclude-port, 1 by --daddr/--exclude-daddr")


def test_filter_counts_say_what_each_filter_removed(trace, workload):
    # --comm first rejects every other task's connects, so the counts of
    # the filters after it are this workload's alone.
    w = workload(name="tcf-counts")
    port, excluded = free_port(), free_port()
    t = trace("--comm", "tcf-counts", "--exclude-port", str(excluded), "--daddr", "127.0.0.0/8",
              "--filter-counts")
    w.connect(4, "127.0.0.1", excluded)
    w.connect(6, "::1", excluded)
    w.connect(6, "::1", port)
    w.connect(4, "127.0.0.1", port)
    t.stop()
    assert len(t.rows) == 1  # the one connect wanted
    assert FILTERED.fullmatch(t.stderr.strip()), t.stderr


def test_filtered_connects_in_metrics(trace, workload):
    w = workload(name="tcf-metrics")
    port = free_port()
    metrics_port = free_port()
    t = trace("--metrics", f"127.0.0.1:{metrics_port}", "-q", "--comm", "tcf-metrics",
              "--exclude-daddr", "127.0.0.0/8")
    for _ in range(3):
        w.connect(4, "127.0.0.1", port)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    t.stop()
    assert 'tcpconnect_filtered_connects_total{filter="daddr"} 3.0' in text.splitlines()
    assert re.search(r'^tcpconnect_filtered_connects_total\{filter="comm"\} \d+\.0$', text,
                     re.MULTILINE)


@pytest.mark.host_only
@pytest.mark.parametrize("args,message", [
    (("--daddr", "10.0.0.0/33"), "argument --daddr: '10.0.0.0/33' is not an address or prefix "
                                 "(ADDRESS[/LENGTH])"),
    (("--exclude-saddr", "10.0.0.1,nope"), "argument --exclude-saddr: 'nope' is not an address "
                                           "or prefix (ADDRESS[/LENGTH])"),
    (("--comm", "a-name-of-16-byte"), "argument --comm: invalid task name 'a-name-of-16-byte' "
                                      "in 'a-name-of-16-byte': expected 1 to 15 bytes (the "
                                      "kernel keeps no more of a name)"),
    (("--comm", "curl,"), "argument --comm: invalid task name '' in 'curl,': expected 1 to 15 "
                          "bytes (the kernel keeps no more of a name)"),
    (("--daddr", "@/nonexistent"), "argument --daddr: /nonexistent: No such file or directory"),
    (("--saddr", "@/dev/null"), "argument --saddr: /dev/null: no address or prefix in it"),
])
def test_bad_filters_are_one_line_errors(args, message):
    done = run_tool(*args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"tcpconnect: error: {message}\n"


@pytest.mark.host_only
def test_trie_keys_put_ipv4_in_the_mapped_space():
    [v4, v6, host] = parse_prefixes("10.1.2.3/8,2001:db8::/32,192.0.2.1")
    assert host == ipaddress.ip_network("192.0.2.1/32")
    assert trie_key(v4) == (104).to_bytes(4, "little") + bytes(10) + b"\xff\xff" + bytes(
        [10, 0, 0, 0])
    assert trie_key(v6) == (32).to_bytes(4, "little") + ipaddress.IPv6Address(
        "2001:db8::").packed
    assert parse_prefixes("10.0.0.0/8,10.0.0.0/8") == (ipaddress.ip_network("10.0.0.0/8"),)
