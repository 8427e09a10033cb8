"""Who connected, beyond PID and COMM: the parent (ppid, pcomm) and the
ids the task's own PID namespace gives it (ns_pid, ns_tid), against the
real kernel with processes of known lineage."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

from conftest import comm_of, free_port, row

ME = os.getpid()


def test_json_names_the_parent(trace, workload):
    port = free_port()
    w = workload(name="sshd")
    t = trace("-j", "-P", str(port))
    assert w.connect(4, "127.0.0.1", port)[1] == errno.ECONNREFUSED
    t.stop()
    [event] = t.json_rows()
    # The workload is this test's child: its parent is this process.
    assert {name: event[name] for name in ("pid", "comm", "ppid", "pcomm", "ns_pid", "ns_tid")} == {
        "pid": w.pid, "comm": "sshd", "ppid": ME, "pcomm": comm_of(ME), "ns_pid": w.pid,
        "ns_tid": w.pid}


CONNECT = ("import socket\n"
           "try:\n"
           "    socket.create_connection(('127.0.0.1', {port}))\n"
           "except OSError:\n"
           "    pass\n")


def test_ids_in_a_pid_namespace_are_the_ones_ps_shows_there(trace):
    # unshare forks (-f) into a new PID namespace: the python it runs is
    # PID 1 there, and its parent, unshare, is outside it.
    port = free_port()
    t = trace("-j", "-P", str(port))
    subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                    CONNECT.format(port=port)], check=True, timeout=30)
    t.stop()
    [event] = t.json_rows()
    assert (event["ns_pid"], event["ns_tid"], event["pcomm"]) == (1, 1, "unshare")
    assert event["pid"] != 1 and event["ppid"] != os.getpid()


def test_ppid_column(trace, workload):
    port = free_port()
    w = workload()
    t = trace("--ppid", "-P", str(port))
    assert t.header == ("PID     COMM         PPID    IP SADDR            DADDR            "
                        "DPORT  QUERY").replace("  QUERY", " ")
    w.connect(4, "127.0.0.1", port)
    t.stop()
    base = row(w.pid, w.comm, 4, "127.0.0.1", "127.0.0.1", port)
    # PPID follows COMM, as wide as PID.
    assert t.rows == [base[:21] + "%-7d " % ME + base[21:]]
