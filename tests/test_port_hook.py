"""-L's two ways to an attempt's local port, on the running kernel: an fexit
program on the functions that choose it (where BPF trampolines load) and
the attempt parked until its SYN leaves (everywhere). Each test runs both
ways; the first is skipped where tracefs says ftrace cannot hook both
functions (this project's 6.18 host), and the probe must agree."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest
from conftest import free_port, port_hook_expected, refused_connect, sh
from test_failures import EXHAUST, lonely  # noqa: F401 (a fixture)

from tcpconnect import tracer as tracer_module
from tcpconnect.events import DPORT, IDENTITY_BYTES, LPORT, PID
from tcpconnect.libbpf import fexit_refusal
from tcpconnect.plan import PORT_HOOK_FUNCTIONS, PORT_HOOK_PROGRAMS
from tcpconnect.records import identities
from tcpconnect.tracer import Tracer, TracerConfig

ASKED = "the SYN's way, asked for by the test"


@pytest.fixture(params=["hook", "syn"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "hook" and not port_hook_expected():
        pytest.skip("ftrace cannot hook inet_hash_connect and inet6_hash_connect here")
    if request.param == "syn":
        monkeypatch.setattr(tracer_module, "fexit_refusal", lambda functions: ASKED)
    return request.param


def ports_seen(tracer: Tracer) -> list[tuple[int, int, int]]:
    """(pid, local port, destination port) of every attempt reported."""
    return [(identities[e[IDENTITY_BYTES]][PID], e[LPORT], identities[e[IDENTITY_BYTES]][DPORT])
            for e in tracer.finish().events]


def test_the_probe_agrees_with_tracefs():
    # The tool loads a do-nothing fexit program on each function (libbpf.py).
    refusal = fexit_refusal(PORT_HOOK_FUNCTIONS)
    assert (refusal is None) == port_hook_expected(), refusal


def check_programs(tracer: Tracer, way: str) -> None:
    """Each way loads only its programs (the parking ones in either build:
    with slots or with the table alone)."""
    hooks = {name.removesuffix("_slots") for name in tracer.programs}
    if way == "hook":
        assert tracer.port_hook_refused is None
        assert set(PORT_HOOK_PROGRAMS) <= hooks
        assert not {"handle_set_state", "handle_xmit", "handle_drop", "handle_destroy"} & hooks
    else:
        assert tracer.port_hook_refused == ASKED
        assert {"handle_set_state", "handle_xmit", "handle_drop"} <= hooks
        assert not set(PORT_HOOK_PROGRAMS) & hooks


def test_every_family_gets_its_exact_port(way):
    port = free_port()
    with Tracer(TracerConfig(lport=True, ports=(port,))) as tracer:
        check_programs(tracer, way)
        made = [refused_connect(4, port), refused_connect(6, port),
                refused_connect(6, port, "::ffff:127.0.0.1")]
        with socket.create_server(("127.0.0.1", port)) as server:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                made.append(client.getsockname()[1])
                server.accept()[0].close()
        seen = ports_seen(tracer)
    me = os.getpid()
    assert seen == [(me, lport, port) for lport in made]
    assert all(made)


def test_no_free_local_port_is_seen_with_port_0(way, lonely):  # noqa: F811
    sh("ip", "netns", "exec", lonely, "sysctl", "-qw",
       "net.ipv4.ip_local_port_range=40000 40001")
    with Tracer(TracerConfig(lport=True, ports=(5000,))) as tracer:
        proc = subprocess.Popen(["ip", "netns", "exec", lonely, sys.executable, "-c", EXHAUST],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            results = [tuple(map(int, proc.stdout.readline().split())) for _ in range(3)]
        finally:
            proc.communicate("", timeout=10)
        seen = ports_seen(tracer)
    assert sorted(results[:2]) == [(40000, 0), (40001, 0)]
    assert results[2] == (0, errno.EADDRNOTAVAIL)
    assert seen == [(proc.pid, lport, 5000) for lport, _ in results]
