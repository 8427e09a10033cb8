"""Who connected, beyond PID and COMM: the parent (ppid, pcomm) and the
ids the task's own PID namespace gives it (ns_pid, ns_tid), against the
real kernel with processes of known lineage."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import comm_of, free_port, row

from tcpconnect.cmdline import ARGS_MAX, args_json, user_dev

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


# The executable's path (-j's "exe", -X). bash connects through /dev/tcp;
# copies of it stand for executables at paths of each test's choosing.
BASH = os.path.realpath(shutil.which("bash"))
DEV_TCP_CONNECT = "(: >/dev/tcp/127.0.0.1/{port}) 2>/dev/null"


def bash_at(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(BASH, path)
    return os.path.realpath(path)


def exe_of(t) -> list:
    return [event["exe"] for event in t.json_rows()]


def test_exe_is_the_file_not_the_name(trace, workload):
    # COMM is whatever the process calls itself (prctl PR_SET_NAME): the
    # python workload names itself sshd; EXE is the file it runs.
    port = free_port()
    w = workload(name="sshd")
    t = trace("-j", "-P", str(port))
    w.connect(4, "127.0.0.1", port)
    t.stop()
    [event] = t.json_rows()
    assert (event["comm"], event["exe"]) == ("sshd", os.path.realpath(f"/proc/{w.pid}/exe"))
    assert event["exe"] == os.path.realpath(sys.executable)


def test_exe_of_a_copy_at_a_chosen_path_is_sent_once(trace, tmp_path):
    port = free_port()
    exe = bash_at(tmp_path / "bin dir" / "sshd")
    t = trace("-j", "-P", str(port))
    for _ in range(3):
        subprocess.run([exe, "-c", DEV_TCP_CONNECT.format(port=port)], timeout=30)
    t.stop()
    # Three processes of one executable: every row names it, from the one
    # path record the kernel sent (a lost one would show null and a warning).
    assert exe_of(t) == [exe] * 3
    assert [event["comm"] for event in t.json_rows()] == ["sshd"] * 3
    assert t.stderr == ""


def test_exe_deleted_after_start(trace, tmp_path):
    port = free_port()
    exe = bash_at(tmp_path / "gone")
    t = trace("-j", "-P", str(port))
    # Connects, waits for a line, connects again.
    script = f"{DEV_TCP_CONNECT}; read -r _; {DEV_TCP_CONNECT}".format(port=port)
    proc = subprocess.Popen([exe, "-c", script], stdin=subprocess.PIPE, text=True)
    first = json.loads(t.next_line(timeout=10))
    os.unlink(exe)
    proc.communicate("\n", timeout=30)
    t.stop()
    # The path is sent again once the file is unlinked, and says so as
    # /proc/PID/exe does.
    assert [first["exe"], *exe_of(t)] == [exe, exe + " (deleted)"]


def test_exe_under_another_mount(trace, tmp_path):
    # The walk crosses from the tmpfs's root to where it is mounted.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tcpconnect-test", str(mnt)], check=True)
    try:
        exe = bash_at(mnt / "sub" / "curl")
        port = free_port()
        t = trace("-j", "-P", str(port))
        subprocess.run([exe, "-c", DEV_TCP_CONNECT.format(port=port)], timeout=30)
        t.stop()
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)
    assert exe_of(t) == [exe]


def test_exe_in_a_pid_namespace(trace, tmp_path):
    port = free_port()
    exe = bash_at(tmp_path / "ns" / "agent")
    t = trace("-j", "-P", str(port))
    subprocess.run(["unshare", "--pid", "--fork", exe, "-c",
                    DEV_TCP_CONNECT.format(port=port)], timeout=30)
    t.stop()
    [event] = t.json_rows()
    # bash forks the subshell that connects: PID 2 of the new namespace.
    assert (event["exe"], event["ns_pid"]) == (exe, 2)


def test_exe_path_past_the_bounds_is_cut_at_the_root_end(trace, tmp_path):
    # 512 bytes of names (each written whole once begun) and 24 components
    # at most: the names kept are the last ones, after "...".
    long_names = ["%s%s" % (c, "x" * 199) for c in "abc"]
    deep = ["d"] * 30
    long_exe = bash_at(tmp_path.joinpath(*long_names, "sshd"))
    deep_exe = bash_at(tmp_path.joinpath(*deep, "sshd"))
    port = free_port()
    t = trace("-j", "-P", str(port))
    for exe in (long_exe, deep_exe):
        subprocess.run([exe, "-c", DEV_TCP_CONNECT.format(port=port)], timeout=30)
    t.stop()
    assert exe_of(t) == [".../" + "/".join(long_names) + "/sshd",
                         ".../" + "d/" * 23 + "sshd"]


# The column's text is user space's; the path under it is the kernel's, which the
# other exe tests check on every kernel.
@pytest.mark.host_only
def test_exe_column(trace, tmp_path):
    port = free_port()
    exe = bash_at(tmp_path / "x\x1b[31m" / "sshd")
    t = trace("-X", "-P", str(port))
    assert t.header == ("PID     COMM         EXE                      IP SADDR            "
                        "DADDR            DPORT  QUERY").replace("  QUERY", " ")
    proc = subprocess.Popen([exe, "-c", DEV_TCP_CONNECT.format(port=port)])
    proc.wait(timeout=30)
    t.stop()
    # Escaped like COMM (the terminal sees no escape sequence), padded to
    # 24 columns, never cut; the rest of the row as without -X.
    shown = exe.replace("\x1b", "\\x1b")
    [line] = t.rows
    assert line.startswith("%-7d %-12s %-24s " % (
        line_pid := int(line.split()[0]), "sshd", shown))
    assert line[21 + max(24, len(shown)) + 1:] == row(line_pid, "sshd", 4, "127.0.0.1",
                                                      "127.0.0.1", port)[21:]


# A connect from bash's own process (no subshell), which then waits for a
# line: alive while its row is read.
CONNECT_AND_WAIT = "{{ : >/dev/tcp/127.0.0.1/{port}; }} 2>/dev/null; read -r _"


# --args is read from /proc in user space: the same on every kernel.
@pytest.mark.host_only
def test_args_are_the_command_line_as_given(trace, tmp_path):
    port = free_port()
    exe = bash_at(tmp_path / "sshd")
    script = CONNECT_AND_WAIT.format(port=port)
    argv = [exe, "-c", script, "name", "with space", "tab\tand\x1b[2J", "", "ünï"]
    t = trace("-j", "--args", "-P", str(port))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, text=True,
                            errors="surrogateescape")
    first = json.loads(t.next_line(timeout=10))
    proc.communicate("\n", timeout=30)
    t.stop()
    # NUL-separated in the kernel, a JSON list here: spaces, control
    # characters and an empty argument survive as they were.
    assert first["args"] == argv
    assert (first["pid"], t.stderr) == (proc.pid, "")


@pytest.mark.host_only
def test_args_of_a_process_gone_before_its_row_is_null_and_counted(trace, tmp_path):
    port = free_port()
    exe = bash_at(tmp_path / "brief")
    t = trace("-j", "--args", "-P", str(port))
    # The tracer is held still until the process has exited.
    t.proc.send_signal(signal.SIGSTOP)
    try:
        subprocess.run([exe, "-c", CONNECT_AND_WAIT.format(port=port)], input="\n", text=True,
                       timeout=30)
    finally:
        t.proc.send_signal(signal.SIGCONT)
    t.stop()
    [event] = t.json_rows()
    assert (event["exe"], event["args"]) == (exe, None)
    assert t.stderr == ("1 rows show args null: the process had exited, or run another "
                        "executable, by the time its row was read\n")


# Pure: the same on every kernel.
@pytest.mark.host_only
def test_args_json_from_cmdline_bytes():
    assert json.loads(args_json(b"curl\0-H\0a: b\0\0")) == ["curl", "-H", "a: b", ""]
    assert args_json(b"") == "[]"
    # Not UTF-8: \xNN text, as comm and exe show it.
    assert json.loads(args_json(b"\xff\x1b\0")) == ["\\xff\x1b"]
    # Past ARGS_MAX: the list ends with null, where no argument can be.
    assert json.loads(args_json(b"x" * (ARGS_MAX + 1))) == ["x" * ARGS_MAX, None]
    assert user_dev(254 << 20 | 300) == os.makedev(254, 300)


def test_args_of_an_executable_on_an_overlay_of_two_file_systems(trace, tmp_path):
    # Layers on different file systems: stat() gives the layer file's inode,
    # the kernel's key is the overlay's, so the check goes by path.
    lower, rw, merged = (tmp_path / name for name in ("lower", "rw", "merged"))
    mounted = []
    try:
        for directory in (lower, rw):
            directory.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "tcpconnect-test", str(directory)], check=True)
            mounted.insert(0, directory)
        shutil.copy(BASH, lower / "agent")
        (rw / "upper").mkdir()
        (rw / "work").mkdir()
        merged.mkdir()
        subprocess.run(["mount", "-t", "overlay", "tcpconnect-test", "-o",
                        f"lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work", str(merged)],
                       check=True)
        mounted.insert(0, merged)
        exe = os.path.realpath(merged / "agent")
        port = free_port()
        t = trace("-j", "--args", "-P", str(port))
        proc = subprocess.Popen([exe, "-c", CONNECT_AND_WAIT.format(port=port), "x y"],
                                stdin=subprocess.PIPE, text=True)
        first = json.loads(t.next_line(timeout=10))
        proc.communicate("\n", timeout=30)
        t.stop()
    finally:
        for directory in mounted:
            subprocess.run(["umount", "--lazy", str(directory)], check=True)
    assert (first["exe"], first["args"]) == (exe, [exe, "-c", CONNECT_AND_WAIT.format(port=port),
                                                   "x y"])
