"""The loader against the real kernel: errors, loss accounting, clean release."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import (BANNER, BUILD, HELPERS, ROOT, TOOL, connect_burst, free_port,
                      kernel_release, refused_connect, wait_for)

from tcpconnect.events import COMM, DPORT, EVENT_FORMAT, FAMILY, IDENTITY_BYTES, PID, TS_NS
from tcpconnect import kernel, libbpf
from tcpconnect import tracer as tracer_module
from tcpconnect.libbpf import BpfError, BpfObject
from tcpconnect.plan import events_ring_bytes
from tcpconnect.records import identities
from tcpconnect.tracer import Tracer, TracerConfig

def test_missing_tracepoint_is_named():
    # libbpf's warning reaches the error through the print callback: its
    # va_list passed on to vsnprintf (libbpf.py), which formats the name.
    obj_path = BUILD / "missing_tracepoint.bpf.o"
    obj = BpfObject(str(obj_path))
    try:
        with pytest.raises(BpfError) as failure:
            obj.load()
    finally:
        obj.close()
    assert str(failure.value) == (f"cannot load BPF object {obj_path}: No such process "
                                  "(the kernel has no tracepoint no_such_tracepoint)")


@pytest.mark.host_only
def test_not_an_object_file(tmp_path):
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(BpfError, match=f"cannot open BPF object {junk}: "):
        BpfObject(str(junk))


# A quarter more than the events ring holds: nothing is read during the
# burst, so this many connects overflow it for certain, however slow the
# machine; more only cost time (under TCG a connect takes ~0.2 ms).
OVERFLOWING = 5 * events_ring_bytes() // (EVENT_FORMAT.size + 8) // 4


def overflowing_burst(port: int) -> int:
    made = 0
    while made < OVERFLOWING:
        made += connect_burst(port, 0.2)
    return made


def test_overflow_is_counted_not_hidden():
    # Nobody reads the ring while the burst runs, so it must overflow; every
    # connect must then be either delivered or counted as lost.
    port = free_port()
    with Tracer(TracerConfig(ports=(port,))) as tracer:
        made = overflowing_burst(port)
        received = tracer.poll(0).events
        lost = tracer.losses().events
    assert lost > 0
    assert len(received) + lost == made
    assert all(identities[e[IDENTITY_BYTES]][DPORT] == port for e in received)


def read_during_burst(config: TracerConfig, poll_ms: int) -> tuple[list[tuple], int, int, int]:
    """A one-second connect loop to config's port, read while it runs: the
    events received, the connects made, the events lost, the loop's pid."""
    received: list[tuple] = []
    with Tracer(config) as tracer:
        burst = subprocess.Popen([str(HELPERS / "connect_loop"), "-p", str(config.ports[0]),
                                  "-d", "1"], stdout=subprocess.PIPE, text=True)
        while burst.poll() is None:
            received += tracer.poll(poll_ms).events
        received += tracer.poll(0).events
        lost = tracer.losses().events
    return received, int(burst.stdout.read()), lost, burst.pid


def test_accounting_is_exact_while_reading():
    # Whether the reader keeps up depends on the machine (bench/ measures
    # that); that every connect is delivered or counted must not.
    received, made, lost, _ = read_during_burst(TracerConfig(ports=(free_port(),)), 10)
    assert len(received) + lost == made


def test_a_reader_asleep_is_woken_by_the_next_record():
    # Below the wakeup threshold the kernel side asks for no wakeup, unless
    # the reader said it sleeps (Tracer.sleep): then the connect's record
    # ends the wait, long before its minute is up.
    port = free_port()
    with Tracer(TracerConfig(ports=(port,))) as tracer:
        connecting = threading.Timer(0.5, refused_connect, (4, port))
        connecting.start()
        started = time.monotonic()
        batch = tracer.sleep(60_000)
        waited = time.monotonic() - started
        connecting.join()
        assert [identities[event[IDENTITY_BYTES]][DPORT] for event in batch.events] == [port]
        assert waited < 30


# A ring this small wraps every ~500 records, and its size is no multiple of
# a record's (8 + 112 bytes), so records keep straddling its end.
SMALL_RING = 64 << 10


def test_records_that_wrap_around_the_ring_are_read_whole():
    port = free_port()
    received, made, lost, pid = read_during_burst(
        TracerConfig(ports=(port,), timestamps=True, ring_bytes=SMALL_RING), 1)
    assert len(received) + lost == made
    assert len(received) > 2 * SMALL_RING // (EVENT_FORMAT.size + 8)
    # One thread connecting: its connects arrive in order, each whole.
    assert [e[TS_NS] for e in received] == sorted({e[TS_NS] for e in received})
    assert {(identity[PID], identity[COMM].rstrip(b"\0"), identity[DPORT], identity[FAMILY])
            for identity in (identities[e[IDENTITY_BYTES]] for e in received)} == {
        (pid, b"connect_loop", port, 4)}


def bpf_ids(pid: int) -> set[str]:
    """The BPF programs and links a process holds, from its fd table."""
    ids = set()
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fdinfo.read_text()
        except OSError:
            continue
        ids.update(line.replace("\t", " ") for line in text.splitlines()
                   if line.startswith(("prog_id:", "link_id:")))
    return ids


def kernel_has(entry: str) -> bool:
    kind, number = entry.split(":")
    kind = "prog" if kind == "prog_id" else "link"
    return subprocess.run(["bpftool", kind, "show", "id", number.strip()],
                          capture_output=True).returncode == 0


def test_everything_is_released_on_close():
    with Tracer(TracerConfig(lport=True)):
        held = bpf_ids(os.getpid())
        assert len(held) >= 4  # two programs, two links
        assert all(kernel_has(entry) for entry in held)
    assert_released(held)


def test_nothing_arrives_after_the_tracer_stopped(monkeypatch):
    # A connect loop runs while tracing stops: closing a link does not wait
    # for runs in flight on the other CPU, so finish() waits a grace period
    # (membarrier) once every link is closed, before its last read and
    # sweep, and nothing is left behind them in the ring or the parking
    # places. The fixed wait for where membarrier(2) is refused must not be
    # the one taken here. (The window is microseconds: the order is what
    # can be checked, so the wait is watched as it runs.)
    waited, open_links = [], []

    def wait_after_links_closed() -> None:
        open_links.append(sum(link._ptr is not None for link in tracer._links))
        kernel.wait_for_program_runs()

    monkeypatch.setattr(kernel, "time", SimpleNamespace(sleep=waited.append))
    monkeypatch.setattr(tracer_module, "wait_for_program_runs", wait_after_links_closed)
    port = free_port()
    with Tracer(TracerConfig(ports=(port,), outcome=True)) as tracer:
        loop = subprocess.Popen([str(HELPERS / "connect_loop"), "-p", str(port), "-d", "3"],
                                stdout=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: tracer.poll(10).events, what="the loop's first attempt")
            tracer.finish()
            late = tracer.poll(0).events + tracer.take_pending()
        finally:
            loop.kill()
            loop.wait()
    assert (late, waited, open_links) == ([], [], [0])


def assert_released(held: set[str]) -> None:
    # The kernel frees programs after an RCU grace period, not at close().
    wait_for(lambda: not any(kernel_has(entry) for entry in held), timeout=10,
             what=f"release of {sorted(held)}")


def test_everything_is_released_on_sigterm(trace):
    t = trace("-L", "-P", str(free_port()))
    held = bpf_ids(t.proc.pid)
    assert len(held) >= 4 and all(kernel_has(entry) for entry in held)
    t.stop(signal.SIGTERM)
    assert t.returncode == 0
    assert_released(held)


# The kernel's side of both is test_overflow_is_counted_not_hidden's, which
# the guests run; the reports are user space's alone, and formatting the
# burst's rows took 20-60 s per guest under TCG.
@pytest.mark.host_only
@pytest.mark.parametrize("json_rows", [False, True], ids=["text", "json"])
def test_cli_reports_lost_events(trace, json_rows):
    # A stopped reader lets the ring overflow; every connect must then be
    # either a row or part of the reported loss. With -j the stream says
    # so too, after the rows read before the loss was noticed.
    port = free_port()
    t = trace("-P", str(port), *(["-j"] if json_rows else []))
    t.proc.send_signal(signal.SIGSTOP)
    try:
        made = overflowing_burst(port)
    finally:
        t.proc.send_signal(signal.SIGCONT)
    t.stop()
    live = [int(n) for n in re.findall(r"^Possibly lost (\d+) events$", t.stderr, re.M)]
    [total] = [int(n) for n in re.findall(r"^Lost (\d+) events in total$", t.stderr, re.M)]
    assert total > 0
    assert sum(live) == total
    rows = t.rows
    if json_rows:
        records = [json.loads(line) for line in rows]
        lost = [r for r in records if r.get("type") == "lost"]
        rows = [r for r in records if "type" not in r]
        assert [set(r) for r in lost] == [{"type", "timestamp", "ring", "events"}] * len(live)
        assert [r["events"] for r in lost] == live
        assert all(r["ring"] == "events" for r in lost)
        assert all(r["dport"] == port for r in rows)
        # Each record follows the rows read before it: the last one comes
        # after the first row at least, as the reader read rows first.
        assert records.index(lost[0]) > 0
    assert len(rows) + total == made


# Rows a pipe holds (64 KiB, rows of 65 characters and a newline).
PIPE_ROWS = 64 * 1024 // 66


def test_no_row_is_lost_to_a_signal_during_a_blocked_write():
    # With PYTHONUNBUFFERED (common in container images) a write that Ctrl-C
    # cut short once dropped the rest of its batch without a word. The
    # tracer is stopped during the burst, so it then writes all of it at once
    # into a pipe nobody reads until the tracer is told to stop: the signal
    # finds it blocked halfway through that write.
    port = free_port()
    proc = subprocess.Popen([*TOOL, "-P", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == BANNER + "\n"
        proc.send_signal(signal.SIGSTOP)
        try:
            made = 0
            while made < 4 * PIPE_ROWS:  # a slow guest makes fewer a second
                made += connect_burst(port, 0.2)
        finally:
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        # Read through the same buffered file as the banner, which may
        # hold the lines after it too (communicate() would skip them).
        out = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    rows = out.splitlines()[1:]  # after the header
    lost = sum(int(n) for n in re.findall(r"^Lost (\d+) events in total$", err, re.M))
    assert proc.returncode == 0
    assert all(row.split()[-1] == str(port) for row in rows)
    assert len(rows) + lost == made


def test_skipped_runs_are_read_from_the_kernels_program_info():
    # recursion_misses is read at a fixed offset of struct bpf_prog_info;
    # with run statistics on, the fields beside it (run_time_ns, run_cnt)
    # are not 0, so a wrong offset shows as a mismatch with bpftool's.
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = stats.read_text()
    stats.write_text("1")
    try:
        with Tracer(TracerConfig(ports=(free_port(),))) as tracer:
            connect_burst(free_port(), 0.2)
            program = tracer._obj.program("handle_set_state")  # type: ignore[union-attr]
            ours = program.recursion_misses()
            fd = libbpf._lib.bpf_program__fd(program._ptr)
            with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
                [prog_id] = [line.split()[1] for line in fdinfo if line.startswith("prog_id:")]
            shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", prog_id],
                                              capture_output=True, text=True, check=True).stdout)
            assert shown["run_cnt"] > 0
            # bpftool shows the field only when it is not 0.
            assert (ours or 0) == shown.get("recursion_misses", 0)
            # Counted from Linux 5.12 on.
            assert (ours is None) == (tuple(map(int, re.findall(r"\d+", os.uname().release)[:2]))
                                      < (5, 12))
            # The losses add up every attached program's.
            assert tracer.losses().skipped_runs >= (ours or 0)
    finally:
        stats.write_text(before)


def test_the_cmpxchg_probe_follows_the_kernel(monkeypatch):
    # BPF's compare-and-exchange came with Linux 5.12 (attempts then wait in
    # slots). The same instruction with an immediate no kernel defines is
    # refused everywhere, which shows the probe can say no.
    assert (libbpf.cmpxchg_refusal() is None) == (kernel_release() >= (5, 12))
    broken = (ctypes.c_uint64 * len(libbpf._CMPXCHG))(*libbpf._CMPXCHG)
    broken[3] ^= 0x02 << 32
    monkeypatch.setattr(libbpf, "_CMPXCHG", broken)
    assert libbpf.cmpxchg_refusal() == ("a program using compare-and-exchange was refused: "
                                        "Invalid argument")
