"""Trace mode against the real kernel: real connects, exact rows."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import (
    HELPERS,
    cgroup_id_of,
    cgroup_path_of,
    comm_of,
    free_port,
    impatient_socket,
    listening,
    nft,
    port_hook_expected,
    refused_connect,
    row,
)

from tcpconnect.attribution import parse_cgroup_path

ME = os.getpid()


def my_comm() -> str:
    return comm_of(ME)


@pytest.mark.parametrize("family,addr", [(4, "127.0.0.1"), (6, "::1")])
def test_refused_loopback_connect_is_one_exact_row(trace, family, addr):
    port = free_port()
    t = trace("-P", str(port))
    assert t.header == "PID     COMM         IP SADDR            DADDR            DPORT "
    refused_connect(family, port)
    t.stop()
    assert t.rows == [row(ME, my_comm(), family, addr, addr, port)]
    assert t.returncode == 0
    assert t.stderr == ""


@pytest.mark.parametrize("family,addr", [(4, "127.0.0.1"), (6, "::1")])
def test_lport_matches_the_socket_for_accepted_connect(trace, family, addr):
    with listening(addr) as listener:
        port = listener.getsockname()[1]
        t = trace("-L", "-P", str(port))
        assert t.header == ("PID     COMM         IP SADDR            LPORT  DADDR"
                            "            DPORT ")
        with socket.create_connection((addr, port)) as client:
            lport = client.getsockname()[1]
        t.stop()
    assert t.rows == [row(ME, my_comm(), family, addr, addr, port, lport=lport)]


def test_lport_of_refused_connect(trace):
    port = free_port()
    t = trace("-L", "-P", str(port))
    lport = refused_connect(4, port)
    t.stop()
    assert t.rows == [row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", port, lport=lport)]


def test_ipv4_mapped_destination_is_shown_as_ipv4(trace):
    with listening("127.0.0.1") as listener:
        port = listener.getsockname()[1]
        t = trace("-L", "-P", str(port))
        with socket.socket(socket.AF_INET6) as client:
            client.connect(("::ffff:127.0.0.1", port))
            lport = client.getsockname()[1]
        t.stop()
    assert t.rows == [row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", port, lport=lport)]


def test_connect_from_a_thread_reports_the_process_id(trace):
    port = free_port()
    t = trace("-P", str(port))
    worker = threading.Thread(target=refused_connect, args=(4, port))
    worker.start()
    worker.join()
    t.stop()
    assert t.rows == [row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", port)]


def test_named_thread_shows_its_own_comm_and_process_id(trace):
    port = free_port()
    t = trace("-j", "-L", "-P", str(port))
    result = {}

    def connect_as_named_thread():
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write("conn-worker")
        result["tid"] = threading.get_native_id()
        result["lport"] = refused_connect(4, port)

    worker = threading.Thread(target=connect_as_named_thread)
    worker.start()
    worker.join()
    t.stop()
    [event] = t.json_rows()
    assert event["pid"] == ME
    assert event["tid"] == result["tid"] != ME
    assert event["comm"] == "conn-worker"
    assert event["lport"] == result["lport"]


@pytest.mark.user_space
def test_non_ascii_name_on_an_ascii_stdout(trace):
    # Any process may call itself anything; an ASCII-only stdout must not
    # make the tracer fail (or drop the rest of the batch): characters it
    # cannot encode are written as \x/\u escapes.
    port = free_port()
    t = trace("-P", str(port), env={**os.environ, "PYTHONIOENCODING": "ascii"})
    named_tids = []

    def connect_as(name: str) -> None:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name)
        named_tids.append(threading.get_native_id())
        refused_connect(4, port)

    for name in ("café-中", "plain"):
        worker = threading.Thread(target=connect_as, args=(name,))
        worker.start()
        worker.join()
    t.stop()
    assert t.returncode == 0, t.stderr
    assert [r.split()[1] for r in t.rows] == ["caf\\xe9-\\u4e2d", "plain"]


def test_nonblocking_connect(trace):
    with listening("127.0.0.1") as listener:
        port = listener.getsockname()[1]
        t = trace("-L", "-P", str(port))
        with socket.socket(socket.AF_INET) as client:
            client.setblocking(False)
            assert client.connect_ex(("127.0.0.1", port)) in (0, 115)  # EINPROGRESS
            lport = client.getsockname()[1]
        t.stop()
    assert t.rows == [row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", port, lport=lport)]


def test_connect_that_times_out(trace):
    # A listener with a full accept queue drops further SYNs, so the second
    # client's connect times out, soon (impatient_socket).
    with listening("127.0.0.1", backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            t = trace("-L", "-P", str(port))
            with impatient_socket() as client:
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", port))
                lport = client.getsockname()[1]
                client.setblocking(True)
                client.settimeout(10)
                with pytest.raises(OSError) as failure:
                    client.recv(1)
                assert failure.value.errno == 110  # ETIMEDOUT
            t.stop()
    assert t.rows == [row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", port, lport=lport)]


@pytest.mark.user_space
def test_timestamp_column_counts_from_the_first_connect(trace):
    port = free_port()
    t = trace("-t", "-P", str(port))
    assert t.header.startswith("TIME(s)  PID ")
    refused_connect(4, port)
    refused_connect(4, port)
    t.stop()
    first, second = t.rows
    assert first.startswith("0.000    ")
    assert re.fullmatch(r"0\.\d{3}    ", second[:9])
    assert first[9:] == second[9:] == row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", port)


def test_uid_column_and_uid_filter(trace, workload):
    port = free_port()
    nobody = workload(user=65534)
    root = workload()
    t = trace("-U", "-u", "65534", "-P", str(port))
    assert t.header.startswith("UID   PID ")
    nobody.connect(4, "127.0.0.1", port)
    root.connect(4, "127.0.0.1", port)
    t.stop()
    assert t.rows == [row(nobody.pid, nobody.comm, 4, "127.0.0.1", "127.0.0.1", port, uid=65534)]


@pytest.mark.user_space
def test_user_name_is_accepted_for_uid(trace, workload):
    port = free_port()
    nobody = workload(user=65534)
    t = trace("-u", "nobody", "-P", str(port))
    nobody.connect(4, "127.0.0.1", port)
    refused_connect(4, port)
    t.stop()
    assert t.rows == [row(nobody.pid, nobody.comm, 4, "127.0.0.1", "127.0.0.1", port)]


def test_pid_filter(trace, workload):
    port = free_port()
    chosen, other = workload(), workload()
    t = trace("-p", str(chosen.pid), "-L")
    lport, _ = chosen.connect(6, "::1", port)
    other.connect(6, "::1", port)
    t.stop()
    assert t.rows == [row(chosen.pid, chosen.comm, 6, "::1", "::1", port, lport=lport)]


@pytest.mark.user_space
def test_port_filter_takes_a_list(trace):
    wanted1, wanted2, unwanted = free_port(), free_port(), free_port()
    t = trace("-P", f"{wanted1},{wanted2}")
    for port in (wanted1, unwanted, wanted2):
        refused_connect(4, port)
    t.stop()
    assert t.rows == [row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", p)
                      for p in (wanted1, wanted2)]


@pytest.mark.parametrize("option,family", [("-4", 4), ("-6", 6)])
def test_family_filter(trace, option, family):
    port = free_port()
    t = trace(option, "-P", str(port))
    refused_connect(4, port)
    refused_connect(6, port)
    t.stop()
    addr = "127.0.0.1" if family == 4 else "::1"
    assert t.rows == [row(ME, my_comm(), family, addr, addr, port)]


@pytest.mark.parametrize("family", [4, 6])
def test_connects_across_network_namespaces(trace, veth, workload, family):
    host, peer = (veth.host4, veth.peer4) if family == 4 else (veth.host6, veth.peer6)
    server = veth.run(sys.executable, "-c", LISTENER, peer, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        inside = workload(netns=veth.netns)
        t = trace("-L", "-P", str(port))
        # Root namespace -> test namespace, and inside the test namespace.
        with socket.create_connection((peer, port)) as client:
            lport = client.getsockname()[1]
        inner_lport, result = inside.connect(family, peer, port)
        assert result == 0
        t.stop()
    finally:
        server.kill()
        server.wait()
    assert t.rows == [
        row(ME, my_comm(), family, host, peer, port, lport=lport),
        row(inside.pid, inside.comm, family, peer, peer, port, lport=inner_lport),
    ]


LISTENER = """
import socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
s.bind((addr, 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"""


@pytest.mark.parametrize("mode", ["plain", "async", "sqpoll"])
@pytest.mark.parametrize("family,addr", [(4, "127.0.0.1"), (6, "::1")])
def test_io_uring_connect(trace, mode, family, addr):
    port = free_port()
    t = trace("-j", "-L", "-P", str(port))
    out = subprocess.run([str(HELPERS / "uring_connect"), mode, addr, str(port)],
                         capture_output=True, text=True, check=True).stdout
    fields = dict(item.split("=") for item in out.split())
    assert fields["res"] == "-111"
    t.stop()
    [event] = t.json_rows()
    assert event["pid"] == int(fields["pid"])
    assert event["lport"] == int(fields["lport"])
    assert (event["ip"], event["saddr"], event["daddr"], event["dport"]) == (
        family, addr, addr, port)
    expected_comm = {"plain": "uring_connect", "async": f"iou-wrk-{fields['pid']}",
                     "sqpoll": f"iou-sqp-{fields['pid']}"}[mode]
    assert event["comm"] == expected_comm[:15]


@pytest.mark.parametrize("family,addr", [(4, "127.0.0.1"), (6, "::1")])
def test_tcp_fast_open_sendto(trace, family, addr):
    with listening(addr, fastopen=True) as listener:
        port = listener.getsockname()[1]
        t = trace("-L", "-P", str(port))
        with socket.socket(listener.family) as client:
            client.sendto(b"hello", socket.MSG_FASTOPEN, (addr, port))
            lport = client.getsockname()[1]
        t.stop()
    assert t.rows == [row(ME, my_comm(), family, addr, addr, port, lport=lport)]


FASTOPEN_CONNECT_CLIENT = """
import socket, sys
TCP_FASTOPEN_CONNECT = 30
listener = socket.socket()
listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
listener.bind(("127.0.0.1", 0))
listener.listen()
client = socket.socket()
client.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
sys.stdin.readline()
client.connect(listener.getsockname())  # returns before any SYN is sent
print(listener.getsockname()[1], client.getsockname()[1], flush=True)
if sys.argv[1] == "write":
    client.send(b"hello")
sys.stdin.readline()
"""


@pytest.mark.parametrize("write", [True, False])
def test_tcp_fastopen_connect_option(trace, veth, write):
    # In a namespace of our own, TFO may send data without a cookie, so the
    # connect is deferred to the first write every time.
    subprocess.run(["ip", "netns", "exec", veth.netns, "sysctl", "-qw",
                    "net.ipv4.tcp_fastopen=5"], check=True)
    client = veth.run(sys.executable, "-c", FASTOPEN_CONNECT_CLIENT,
                      "write" if write else "idle", stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, text=True)
    try:
        t = trace("-L", "-p", str(client.pid))
        client.stdin.write("go\n")
        client.stdin.flush()
        port, lport = map(int, client.stdout.readline().split())
        t.stop()
        comm = comm_of(client.pid)
    finally:
        client.kill()
        client.wait()
    # Never written, the SYN never left: the attempt is still reported. Where
    # the port hook loads, with the port connect() chose (as bcc's -L); else
    # when tracing ends, with LPORT 0, the port never having been on the wire.
    expected_lport = lport if write or port_hook_expected() else 0
    assert t.rows == [row(client.pid, comm, 4, "127.0.0.1", "127.0.0.1", port,
                          lport=expected_lport)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.user_space
def test_signals_end_with_exit_zero(trace, sig):
    t = trace("-P", str(free_port()))
    t.stop(sig)
    assert t.returncode == 0
    assert t.stderr == ""


@pytest.mark.user_space
def test_pipe_closed_by_reader_ends_quietly():
    port = free_port()
    proc = subprocess.Popen(
        f"{sys.executable} -m tcpconnect -P {port} | head -n 3",
        shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # head leaves after the banner, the header and one row; the tracer
    # notices when it next writes, so keep connecting until it is gone.
    deadline = time.monotonic() + 15
    while proc.poll() is None and time.monotonic() < deadline:
        refused_connect(4, port)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=5)
    assert out.splitlines()[0] == "Tracing connect ... Hit Ctrl-C to end"
    assert len(out.splitlines()) == 3
    assert err == ""
    assert proc.returncode == 0


@pytest.mark.user_space
def test_json_rows(trace):
    port = free_port()
    t = trace("-j", "-t", "-U", "-P", str(port))
    refused_connect(6, port)
    t.stop()
    [event] = t.json_rows()
    cgroup_id = cgroup_id_of(ME)
    # The suite's own cgroup, as /proc says it; its names are the parser's
    # (tests/test_attribution.py checks those).
    cgroup = cgroup_path_of(ME)
    names = parse_cgroup_path(cgroup)
    # Its value is checked in test_outcome.py.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event.pop("timestamp"))
    assert event == {
        "time": 0.0, "uid": 0, "pid": ME, "tid": threading.get_native_id(),
        "comm": my_comm(), "ppid": os.getppid(), "pcomm": comm_of(os.getppid()),
        "ns_pid": ME, "ns_tid": threading.get_native_id(),
        "ip": 6, "saddr": "::1", "daddr": "::1", "dport": port,
        "cgroup_id": cgroup_id, "mntns_id": os.stat("/proc/self/ns/mnt").st_ino,
        "netns": os.stat("/proc/self/ns/net").st_ino, "cgroup": cgroup, "unit": names.unit,
        "container_id": names.container_id, "container_name": None, "pod_uid": names.pod_uid,
        "pod": None, "namespace": None, "exe": os.path.realpath(sys.executable),
    }


FIREWALLED_CLIENT = """
import socket, sys
client = socket.socket()
client.setblocking(False)
sys.stdin.readline()
client.connect_ex(("127.0.0.1", int(sys.argv[1])))
print(client.getsockname()[1], flush=True)
sys.stdin.readline()
"""


def test_syn_dropped_by_firewall_is_reported_at_once(trace, veth):
    # The SYN never reaches a device, and the socket keeps retrying for
    # minutes; the row must still come now, with the port the SYN had.
    port = free_port()
    nft(veth.netns, "add table inet t",
        "add chain inet t out { type filter hook output priority 0; }",
        f"add rule inet t out tcp dport {port} drop")
    client = veth.run(sys.executable, "-c", FIREWALLED_CLIENT, str(port),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        t = trace("-L", "-p", str(client.pid))
        client.stdin.write("go\n")
        client.stdin.flush()
        lport = int(client.stdout.readline())
        line = t.next_line(timeout=3)
        comm = comm_of(client.pid)
        t.stop()
    finally:
        client.kill()
        client.wait()
    assert line == row(client.pid, comm, 4, "127.0.0.1", "127.0.0.1", port, lport=lport)
    assert t.rows == []


@pytest.mark.parametrize("option,shown", [("-4", True), ("-6", False)])
def test_ipv4_mapped_connect_counts_as_ipv4_for_family_filters(trace, option, shown):
    port = free_port()
    t = trace(option, "-P", str(port))
    refused_connect(6, port, addr="::ffff:127.0.0.1")
    t.stop()
    expected = [row(ME, my_comm(), 4, "127.0.0.1", "127.0.0.1", port)] if shown else []
    assert t.rows == expected
