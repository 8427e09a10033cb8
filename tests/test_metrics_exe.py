"""--metrics-labels exe: connects counted in the kernel by executable, each
labelled with its path, against the real kernel. The executables are copies
of Python at paths of each test's choosing; the processes running them name
themselves something else (prctl PR_SET_NAME), which COMM shows and the
label must not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import comm_of, free_port, refused_connect
from test_metrics import HTTP, connects_by, scrape

from tcpconnect import exe_label
from tcpconnect.events import CountKey
from tcpconnect.exe import path_of
from tcpconnect.exe_label import ExeLabel
from tcpconnect.metrics import Exporter, count_fields
from tcpconnect.tracer import Tracer, TracerConfig

PYTHON = os.path.realpath(sys.executable)
# Renames itself, then makes `times` refused connects to 127.0.0.1:port.
CONNECTS = ("import ctypes, socket, sys\n"
            "ctypes.CDLL(None).prctl(15, b'sshd', 0, 0, 0)\n"
            "for _ in range(int(sys.argv[2])):\n"
            "    socket.socket().connect_ex(('127.0.0.1', int(sys.argv[1])))\n")


def python_at(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(PYTHON, path)
    return str(path)


def connect_from(exe: str, port: int, times: int) -> None:
    subprocess.run([exe, "-c", CONNECTS, str(port), str(times)], check=True, timeout=30)


@pytest.mark.user_space
def test_series_carry_the_path_of_the_renamed_process_executable(trace, tmp_path):
    port, metrics = free_port(), free_port()
    agent = python_at(tmp_path / "bin dir" / "agent")
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "-P", str(port),
              "--metrics-labels", "exe,comm,daddr,dport")
    connect_from(agent, port, 3)
    refused_connect(4, port)
    samples = scrape(metrics)
    assert connects_by(samples, "exe", "comm", "daddr", "dport") == {
        (agent, "sshd", "127.0.0.1", str(port)): 3,
        (PYTHON, comm_of(os.getpid()), "127.0.0.1", str(port)): 1,
    }
    assert samples["tcpconnect_exe_unknown_connects_total"] == {(): 0}
    # Later connects of a known executable: its path is not sent again.
    connect_from(agent, port, 2)
    assert connects_by(scrape(metrics), "exe")[(agent,)] == 5
    t.stop()
    assert (t.returncode, t.stdout, t.stderr) == (0, "", "")


@pytest.mark.host_only
def test_quote_newline_and_backslash_in_the_path_are_escaped(trace, tmp_path):
    port, metrics = free_port(), free_port()
    agent = python_at(tmp_path / 'a"b\nc\\d' / "agent")
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-q", "-P", str(port),
              "--metrics-labels", "exe")
    connect_from(agent, port, 2)
    text = HTTP.open(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    t.stop()
    # The newline as \n and the backslash doubled, as in the rows; then
    # Prometheus' text format escapes the quote and every backslash again.
    assert f'tcpconnect_connects_total{{exe="{tmp_path}/a\\"b\\\\nc\\\\\\\\d/agent"}} 2.0' \
        in text.splitlines(), text
    assert (t.returncode, t.stderr) == (0, "")


@pytest.mark.parametrize("options,labels,series", [
    (["--outcome"], "exe,result", ("refused",)),
    (["--failed"], "exe,dport,result", ("{port}", "refused")),
    (["-c"], "exe,dport", ("{port}",)),
])
@pytest.mark.user_space
def test_exe_with_outcome_and_count_tables(trace, tmp_path, options, labels, series):
    port, metrics = free_port(), free_port()
    agent = python_at(tmp_path / "agent")
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-P", str(port), "--metrics-labels", labels,
              *options)
    connect_from(agent, port, 2)
    # With rows, their reader hands the paths on, and a scrape that came
    # first would hold the counts back for them (exe_label.py): once the
    # rows are out, the paths are known. -c's drain reads the ring itself.
    rows = [t.next_line(timeout=10) for _ in range(2 if "-c" not in options else 0)]
    names = labels.split(",")
    values = tuple(value.format(port=port) for value in series)
    assert connects_by(scrape(metrics), *names) == {(agent, *values): 2}
    t.stop()
    assert all(rows)
    assert (t.returncode, t.stderr) == (0, "")


@pytest.mark.parametrize("options", [["-L"], ["-j"], ["-L", "--outcome", "-j"]])
@pytest.mark.user_space
def test_exe_beside_rows(trace, tmp_path, options):
    # The rows' reader takes the paths from the ring and hands them on.
    port, metrics = free_port(), free_port()
    agent = python_at(tmp_path / "agent")
    t = trace("--metrics", f"127.0.0.1:{metrics}", "-P", str(port), "--metrics-labels",
              "exe,comm", *options)
    connect_from(agent, port, 2)
    # Once the rows are out, their paths are known.
    rows = [t.next_line(timeout=10) for _ in range(2)]
    samples = scrape(metrics)
    assert connects_by(samples, "exe", "comm") == {(agent, "sshd"): 2}
    assert samples["tcpconnect_exe_unknown_connects_total"] == {(): 0}
    t.stop()
    assert all(rows) and t.rows == []
    assert (t.returncode, t.stderr) == (0, "")


EVERY_FIELD = frozenset(("saddr", "daddr", "dport", "uid", "comm", "cgroup", "exe"))


@pytest.mark.parametrize("config", [
    dict(),
    dict(outcome=True),
    dict(outcome=True, failed_only=True),
    dict(events_with_counts=True, lport=True),
    dict(events_with_counts=True, lport=True, outcome=True, exe=True, timestamps=True,
         task_ids=True, lineage=True),
    dict(count_fields=EVERY_FIELD, events_with_counts=True, lport=True, outcome=True),
], ids=["count", "outcome", "failed", "rows -L", "rows -j -L --outcome", "every field"])
def test_every_counting_mode_loads_and_keys_on_the_executable(tmp_path, config):
    # The count key is built in a scratch map: on the stack, beside the
    # event or parked attempt, it took the object past the 512 bytes of BPF
    # stack. Each kernel's verifier must take every mode.
    port = free_port()
    agent = python_at(tmp_path / "agent")
    config = {"count_fields": frozenset({"exe", "dport"}), **config}
    with Tracer(TracerConfig(count=True, ports=(port,), **config)) as tracer:
        connect_from(agent, port, 2)
        counts = tracer.take_counts()
    assert [(key.exe_ino, key.dport, n) for key, n in counts] == [
        (os.stat(agent).st_ino, port, 2)]


def test_a_path_never_read_is_counted_as_unknown_and_sent_again(tmp_path, monkeypatch):
    # An exporter told that rows hand it the paths, and no rows read: the
    # path stays unknown, as if its record had been lost.
    monkeypatch.setattr(exe_label, "WAIT_SECONDS", 0.2)
    port, metrics = free_port(), free_port()
    agent = python_at(tmp_path / "agent")
    labels = ("exe",)
    exporter = Exporter("127.0.0.1", metrics, labels, max_series=10, reads_ring=False)
    try:
        with Tracer(TracerConfig(count=True, ports=(port,),
                                 count_fields=count_fields(labels, table=False))) as tracer, \
                exporter.watching(tracer, None):
            connect_from(agent, port, 2)
            # The first drain holds the counts back, waiting for the path.
            first = scrape(metrics)
            time.sleep(0.2)
            second = scrape(metrics)
            # The kernel was told to forget the key: the next connect sends
            # the path again.
            connect_from(agent, port, 1)
            sent = tracer.take_exe_paths()
    finally:
        exporter.close()
    assert "tcpconnect_connects_total" not in first  # a family without samples
    assert connects_by(second, "exe") == {(exe_label.UNKNOWN,): 2}
    assert second["tcpconnect_exe_unknown_connects_total"] == {(): 2}
    # The first record, never read, and the one sent again.
    assert [path_of(record) for record in sent] == [agent, agent]


@pytest.mark.host_only
def test_counts_wait_for_a_path_the_rows_reader_has_not_handed_on(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(exe_label.time, "monotonic", lambda: clock[0])
    forgotten = []
    label = ExeLabel(lambda dev, ino: forgotten.append((dev, ino)))
    key, kernel_thread = CountKey(exe_dev=8, exe_ino=12), CountKey(dport=1)
    assert label.settle([(key, 3), (kernel_thread, 1)]) == [(kernel_thread, 1)]
    assert forgotten == [(8, 12)]
    # The path arrives before the wait is over: labelled with it.
    label.note([(12, 8, 0, 2, 0, 10, b"agent\0bin\0")])
    clock[0] += 0.1
    assert [(k.exe_ino, n) for k, n in label.settle([])] == [(12, 3)]
    assert (label.value(key), label.value(kernel_thread), label.unknown) == ("/bin/agent", "", 0)
    # One that never arrives is labelled unknown once the wait is over.
    other = CountKey(exe_dev=8, exe_ino=13)
    assert label.settle([(other, 2)]) == []
    clock[0] += exe_label.WAIT_SECONDS
    assert label.settle([]) == [(other, 2)]
    assert (label.value(other), label.unknown) == (exe_label.UNKNOWN, 2)
