#!/usr/bin/env python3
"""tcpconnect's benchmark: `make bench` (or `bench/run.py --quick`).

Prints what tracing costs a tight loopback connect() loop (build/connect_loop)
in each output mode, whether every connect was reported, start-up time, peak
memory and how long a lone connect takes to show up; runs libbpf-tools
tcpstates on the same loop as a reference, and shows why the other tcpconnect
implementations cannot run on this kernel. With --peers (make bench-peers runs
it in guests whose kernels have kprobes) it measures those instead, against
our default, -L and -c modes, and their start-up to a first row.

Traced and untraced runs alternate (untraced, traced, untraced, traced, ...,
untraced) and each traced run is compared with the mean of the untraced runs
either side of it, so that a machine getting busier or quieter during the
benchmark moves both sides of a ratio alike. The connect loop is pinned to
one CPU, so the scheduler moving it around adds no noise; the tracer is free
to run anywhere. An empty program on the same tracepoint gives the floor:
what attaching anything there costs. All traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from tcpconnect.output import BANNER, count_header  # noqa: E402

from kernel_paths import BPF_STATS, program_runs  # noqa: E402  (bench/ is sys.path[0])

BUILD = ROOT / "build"
CONNECT_LOOP = BUILD / "connect_loop"
TRACER = ROOT / ".venv" / "bin" / "tcpconnect"
NOOP_SOURCE = ROOT / "bench" / "noop.bpf.c"
WORKLOAD_CPU = 0
TRACEFS = Path("/sys/kernel/tracing")
# Where the Debian packages put the peers (not $PATH: ours is tcpconnect too).
PEER_DIRS = (Path("/usr/sbin"), Path("/usr/lib/libbpf-tools"), Path("/usr/bin"))
# bcc compiles its programs at start (and detaches them at the end): over a
# minute in a TCG guest, where even our start can take tens of seconds while
# other guests share the host.
ATTACH_TIMEOUT_S = 300
STOP_TIMEOUT_S = 300
DRAIN_CHECK_S = 0.1
# The name libbpf-tools' tcpconnect has once our Debian package is installed
# (which diverts it), then the one it has without it.
LIBBPF_TCPCONNECT = ("tcpconnect.libbpf-tools", "tcpconnect")
ERROR_LINE = re.compile(r"error|fail|unable|cannot|not found|denied", re.IGNORECASE)


@dataclass(frozen=True)
class Workload:
    name: str
    port: int
    listener: bool

    def loop_command(self, seconds: float) -> list[str]:
        command = [str(CONNECT_LOOP), "-p", str(self.port), "-d", str(seconds)]
        return command + ["-l"] if self.listener else command


# Stands for the loop's port in a peer's options.
PORT = "{port}"


@dataclass(frozen=True)
class Peer:
    """Another tool, run on the same loops as ours."""
    package: str
    names: tuple[str, ...]  # its file in PEER_DIRS, the first found
    options: tuple[str, ...]
    # How it says it lost events, on stdout or stderr (one match per report).
    lost: str
    # A row per connect, for a peer whose rows have no DPORT column.
    row: str | None = None

    def tool(self) -> Path | None:
        return next((t for t in map(find_tool, self.names) if t is not None), None)

    def command(self, port: int) -> list[str]:
        return [str(self.tool()), *(str(port) if o == PORT else o for o in self.options)]


TCPSTATES = Peer("libbpf-tools", ("tcpstates",), ("-D", PORT), r"lost (\d+) events",
                 row="CLOSE       -> SYN_SENT")
# The real peers. They need kprobes (and bcc the kernel's headers), which
# this host lacks: make bench shows how each fails, make bench-peers runs them
# in the kernel matrix's guests. Each with its port filter where it has one
# (bpftrace's script has none: its rows are counted by DPORT).
KPROBE_PEERS = (
    ("bcc tcpconnect", Peer("bpfcc-tools", ("tcpconnect-bpfcc",), ("-P", PORT),
                            r"Possibly lost (\d+) samples")),
    ("libbpf-tools tcpconnect", Peer("libbpf-tools", LIBBPF_TCPCONNECT, ("-P", PORT),
                                     r"Lost (\d+) events on CPU")),
    ("bpftrace tcpconnect.bt", Peer("bpftrace", ("tcpconnect.bt",), (),
                                    r"^Lost (\d+) events")),
)


@dataclass(frozen=True)
class Mode:
    name: str
    options: tuple[str, ...] = ()
    peer: Peer | None = None
    floor: bool = False  # bench/noop.bpf.c
    metrics: bool = False  # --metrics on a loopback port; counts read with a scrape
    # A filter that removes every connect of the loop: what an excluded
    # connect costs, against printing it. No row is the right count.
    excluded: bool = False

    def command(self, port: int, noop_object: Path | None, metrics_port: int) -> list[str]:
        if self.peer:
            return self.peer.command(port)
        if self.floor:
            return [sys.executable, __file__, "--attach-noop", str(noop_object)]
        metrics = ["--metrics", f"127.0.0.1:{metrics_port}"] if self.metrics else []
        return [str(TRACER), *self.options, *metrics, "-P", str(port)]

    @property
    def reports(self) -> bool:
        return not self.floor


MODES = (
    Mode("empty program (floor)", floor=True),
    Mode("default"),
    Mode("-t -U -L", ("-t", "-U", "-L")),
    Mode("-c", ("-c",)),
    Mode("-d", ("-d",)),
    Mode("-j", ("-j",)),
    Mode("excluded: --exclude-daddr 127.0.0.0/8", ("--exclude-daddr", "127.0.0.0/8"),
         excluded=True),
    Mode("excluded: --comm other", ("--comm", "other"), excluded=True),
    Mode("--outcome", ("--outcome",)),
    Mode("-c --outcome", ("-c", "--outcome")),
    Mode("-j --outcome", ("-j", "--outcome")),
    Mode("-T", ("-T",)),
    Mode("--container", ("--container",)),
    Mode("--metrics -q", ("-q",), metrics=True),
    Mode("--metrics -q, exe label", ("-q", "--metrics-labels", "comm,daddr,dport,exe"),
         metrics=True),
    Mode("--metrics, rows", metrics=True),
    Mode("tcpstates (libbpf-tools)", peer=TCPSTATES),
)
# make bench-peers: ours in the modes the peers have, and the peers.
PEER_MODES = (
    Mode("default"),
    Mode("-L", ("-L",)),
    Mode("-c", ("-c",)),
    *(Mode(name, peer=peer) for name, peer in KPROBE_PEERS),
)


# A mode's figures are called stable once one more round moves the median
# tracer CPU time per connect by less than this; rounds are added (up to
# twice as many) until then.
STABLE_CHANGE = 0.05


@dataclass
class Result:
    untraced: list[float] = field(default_factory=list)
    traced: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    # Per round: the tracer's CPU time per connect (cost to the host) and
    # the BPF programs' run time per connect (cost to the traced workload).
    cpu_us: list[float] = field(default_factory=list)
    bpf_ns: list[float] = field(default_factory=list)
    connects: int = 0
    events: int = 0
    lost: int = 0
    peak_rss_kb: int = 0
    failed: str = ""  # why a peer did not start (no more rounds then)

    def stable(self) -> bool:
        if len(self.cpu_us) < 3:
            return False
        before = statistics.median(self.cpu_us[:-1])
        now = statistics.median(self.cpu_us)
        return abs(now - before) <= STABLE_CHANGE * max(before, 1e-9)


def find_tool(name: str) -> Path | None:
    return next((d / name for d in PEER_DIRS if (d / name).is_file()), None)


def ports_nobody_uses(count: int) -> list[int]:
    """Loopback ports free now and below the ephemeral range, so that a
    connect to one is never answered by the connecting socket itself."""
    found: list[int] = []
    for port in range(20000 + os.getpid() % 10000, 32768):
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
            found.append(port)
        except OSError:
            continue
        finally:
            probe.close()
        if len(found) == count:
            return found
    raise SystemExit("bench: not enough free ports below 32768")


def pin_to_workload_cpu() -> None:
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {WORKLOAD_CPU})


def run_loop(workload: Workload, seconds: float) -> int:
    """Connects made by one connect_loop run."""
    done = subprocess.run(workload.loop_command(seconds), capture_output=True, text=True,
                          check=False, preexec_fn=pin_to_workload_cpu)
    if done.returncode != 0:
        raise SystemExit(f"bench: connect_loop failed: {done.stderr.strip()}")
    return int(done.stdout)


def peak_rss_kb(pid: int) -> int:
    """VmHWM: the high-water mark of the process's own memory (a child's
    ru_maxrss would also count the parent's memory it was forked with)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process's threads, in ns
    resolution (the scheduler's own account; /proc/PID/stat rounds to clock
    ticks, and /proc/PID/schedstat is the main thread's alone)."""
    total = 0
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(f"{task.path}/schedstat") as schedstat:
                total += int(schedstat.read().split()[0])
        except FileNotFoundError:  # the thread ended while we looked
            continue
    return total / 1e9


def wait_drained(pid: int, cpu_share: float = 1.0) -> float:
    """The tracer's CPU time once it has caught up with what the loop made:
    when it used under a quarter of the CPU it may have (cpu_share of one)
    over DRAIN_CHECK_S (an idle reader's polls take a few percent; one still
    reading takes all of it). A tool stopped before then would not count what
    it still had to read, and bcc's tools drop what they have not read when
    interrupted. The figure includes up to two checks' worth of idle polls."""
    last = cpu_seconds(pid)
    while True:
        time.sleep(DRAIN_CHECK_S)
        now = cpu_seconds(pid)
        if now - last < DRAIN_CHECK_S * cpu_share / 4:
            return now
        last = now


def waits_in_poll(pid: int) -> bool:
    """Whether a thread of the process sleeps in poll(), select() or
    epoll_wait(): where every tool waits for events once it is set up."""
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(f"{task.path}/wchan") as wchan:
                if any(word in wchan.read() for word in ("poll", "select")):
                    return True
        except FileNotFoundError:
            continue
    return False


def refused_connect(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            pass


class PeerFailed(Exception):
    """A peer that did not start: the bench goes on without it."""


class TracerRun:
    """One traced period: a tracer started, attached, and stopped like Ctrl-C."""

    def __init__(self, command: list[str], workdir: Path, stdout: int | None = None) -> None:
        self.out_path = workdir / "out"
        self.err_path = workdir / "err"
        self.err_path.write_bytes(b"")
        self._err = open(self.err_path, "wb")
        self._out = open(self.out_path, "wb") if stdout is None else None
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=self._err,
                                     stdout=self._out if stdout is None else stdout)
        self.peak_rss_kb = 0

    def wait_attached(self, probe_port: int | None = None) -> None:
        """Our tool (and --attach-noop) prints its banner once attached. The
        peers buffer their output when it is a file, so a peer is attached
        once its programs run for a connect to probe_port (no loop's port)
        and it waits for their events."""
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close()
                if probe_port is not None:
                    said = self.stderr() + self.out_path.read_text(errors="replace")
                    raise PeerFailed(f"exit {self.proc.returncode}: {decisive_error(said)}")
                raise SystemExit(f"bench: {self.proc.args[0]} exited: {self.stderr().strip()}")
            if probe_port is not None:
                runs = bpf_runs(self.proc.pid)
                refused_connect(probe_port)
                if bpf_runs(self.proc.pid) > runs and waits_in_poll(self.proc.pid):
                    return
                time.sleep(0.05)
            elif BANNER in self.banner_stream().read_text(errors="replace"):
                return
            time.sleep(0.005)
        self.stop()
        if probe_port is not None:
            raise PeerFailed(f"not attached after {ATTACH_TIMEOUT_S} s")
        raise SystemExit(f"bench: {self.proc.args[0]} did not attach: {self.stderr().strip()}")

    def stop(self) -> None:
        """Records the peak RSS, then stops the tracer like Ctrl-C would."""
        if self.proc.poll() is not None:
            raise SystemExit(f"bench: {self.proc.args[0]} died: {self.stderr().strip()}")
        self.peak_rss_kb = peak_rss_kb(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise SystemExit(f"bench: {self.proc.args[0]} did not stop on SIGINT") from None
        finally:
            self._close()

    def _close(self) -> None:
        self._err.close()
        if self._out is not None:
            self._out.close()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def banner_stream(self) -> Path:
        # With -j the banner goes to stderr, keeping stdout pure JSON Lines.
        return self.err_path if "-j" in self.proc.args else self.out_path


def scraped_connects(metrics_port: int, port: int) -> int:
    """tcpconnect_connects_total for dport=port, summed, from /metrics."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("tcpconnect_connects_total{")
               and f'dport="{port}"' in line)


def reported_events(mode: Mode, path: Path, port: int) -> int:
    """Connects to port that the tracer's output (in path) accounts for."""
    with open(path, errors="replace") as out:
        if mode.peer and mode.peer.row:
            return sum(1 for line in out if mode.peer.row in line)
        if "-c" in mode.options:
            # CONNECTS is the last column (--outcome adds RESULT before it).
            header = count_header("--outcome" in mode.options)
            for line in out:
                if line.rstrip("\n") == header:
                    break
            return sum(int(f[-1]) for f in map(str.split, out)
                       if len(f) >= 4 and f[2] == str(port))
        if "-j" in mode.options:
            # Loss records ({"type": "lost", ...}) are lines of the stream too.
            return sum(1 for line in out
                       if line.startswith("{") and json.loads(line).get("dport") == port)
        # Rows follow the header (after our banner, bpftrace's two lines); DPORT
        # is found by name because -L and -d move columns around.
        column = next((line.split().index("DPORT") for line in out
                       if "DPORT" in line.split()), None)
        if column is None:
            return 0
        return sum(1 for line in out if line.split()[column:column + 1] == [str(port)])


def lost_events(mode: Mode, tracer: TracerRun) -> int:
    """Events the tracer says it lost. Ours reports on stderr; bpftrace on
    stdout, among its rows."""
    if mode.peer is None:
        return sum(int(n) for n in re.findall(r"Possibly lost (\d+) events", tracer.stderr()))
    said = tracer.stderr() + tracer.out_path.read_text(errors="replace")
    return sum(int(n) for n in re.findall(mode.peer.lost, said, re.MULTILINE))


def bpf_run_ns(pid: int) -> int:
    """Run time of all the BPF programs a process holds, so far (kprobe
    programs included: the kernel counts every program it runs)."""
    return sum(ns for _, ns in program_runs(pid).values())


def bpf_runs(pid: int) -> int:
    return sum(runs for runs, _ in program_runs(pid).values())


def measure_overhead(workload: Workload, modes: list[Mode], rounds: int, max_rounds: int,
                     seconds: float, workdir: Path, noop_object: Path | None,
                     metrics_port: int, probe_port: int) -> dict[str, Result]:
    results = {mode.name: Result() for mode in modes}
    run_loop(workload, 0.5)  # warm-up: page cache, first socket allocations
    before = run_loop(workload, seconds)
    done = 0
    # Rounds go on, up to max_rounds, while a mode's figures still move.
    while done < rounds or (done < max_rounds
                            and not all(r.stable() for r in results.values() if r.cpu_us)):
        done += 1
        for mode in modes:
            result = results[mode.name]
            if result.failed:
                continue
            print(f"# {workload.name} loop, round {done} (at least {rounds}): {mode.name}",
                  file=sys.stderr, flush=True)
            tracer = TracerRun(mode.command(workload.port, noop_object, metrics_port), workdir)
            try:
                tracer.wait_attached(probe_port if mode.peer else None)
            except PeerFailed as failed:
                result.failed = str(failed)
                print(f"bench: {mode.name} did not start: {failed}", file=sys.stderr)
                continue
            scraped = None
            try:
                started = cpu_seconds(tracer.proc.pid)
                bpf_started = bpf_run_ns(tracer.proc.pid)
                traced = run_loop(workload, seconds)
                cpu_s = wait_drained(tracer.proc.pid) - started
                bpf_ns = bpf_run_ns(tracer.proc.pid) - bpf_started
                if mode.metrics:
                    scraped = scraped_connects(metrics_port, workload.port)
            finally:
                tracer.stop()
            if mode.reports:
                result.cpu_us.append(cpu_s / traced * 1e6)
            result.bpf_ns.append(bpf_ns / traced)
            after = run_loop(workload, seconds)
            untraced = (before + after) / 2
            before = after
            result.untraced.append(untraced / seconds)
            result.traced.append(traced / seconds)
            result.ratios.append(traced / untraced)
            result.connects += traced
            if mode.reports:
                # With rows beside the metrics, the rows are what is checked
                # (the scrape must agree); with -q, the scrape.
                if scraped is not None and scraped != traced:
                    print(f"bench: {mode.name}: /metrics counted {scraped:,} of {traced:,} "
                          "connects", file=sys.stderr)
                result.events += (scraped if scraped is not None and "-q" in mode.options
                                  else reported_events(mode, tracer.out_path, workload.port))
                result.lost += lost_events(mode, tracer)
                result.peak_rss_kb = max(result.peak_rss_kb, tracer.peak_rss_kb)
    return results


def measure_startup(options: tuple[str, ...], port: int, launches: int) -> tuple[list[float], int]:
    """Milliseconds from launch to the banner on a pipe, and the peak RSS (kB)
    of an idle tracer."""
    times, rss = [], 0
    for _ in range(launches):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            tracer = TracerRun([str(TRACER), *options, "-P", str(port)], Path(tmp),
                               stdout=subprocess.PIPE)
            assert tracer.proc.stdout is not None
            first = tracer.proc.stdout.readline().decode().rstrip("\n")
            times.append((time.perf_counter() - start) * 1000)
            tracer.stop()
            if first != BANNER:
                raise SystemExit(f"bench: tracer did not start: {tracer.stderr().strip()}")
            rss = max(rss, tracer.peak_rss_kb)
    return times, rss


def measure_idle(options: tuple[str, ...], port: int, seconds: float) -> float:
    """Percent of a CPU a started tracer uses while nothing it traces
    happens (its reader's polls and sleeps)."""
    with tempfile.TemporaryDirectory() as tmp:
        tracer = TracerRun([str(TRACER), *options, "-P", str(port)], Path(tmp))
        tracer.wait_attached()
        # Past start-up's last work and the reader's first 200 ms of polls.
        time.sleep(1)
        before = cpu_seconds(tracer.proc.pid)
        time.sleep(seconds)
        used = cpu_seconds(tracer.proc.pid) - before
        tracer.stop()
    return 100 * used / seconds


def measure_latency(options: tuple[str, ...], port: int, connects: int,
                    spacing_s: float) -> list[float]:
    """Milliseconds from connect() returning to its row arriving on the
    tracer's stdout, for connects far apart (the tracer is mostly idle)."""
    arrivals: list[float] = []

    def read(stream: IO[bytes]) -> None:
        for line in stream:
            if line.split()[-1:] == [str(port).encode()] or b'"dport": %d' % port in line:
                arrivals.append(time.monotonic())

    with tempfile.TemporaryDirectory() as tmp:
        tracer = TracerRun([str(TRACER), *options, "-P", str(port)], Path(tmp),
                           stdout=subprocess.PIPE)
        assert tracer.proc.stdout is not None
        if tracer.banner_stream() == tracer.err_path:
            tracer.wait_attached()
        elif tracer.proc.stdout.readline().decode().rstrip("\n") != BANNER:
            tracer.stop()
            raise SystemExit(f"bench: tracer did not start: {tracer.stderr().strip()}")
        reader = threading.Thread(target=read, args=(tracer.proc.stdout,), daemon=True)
        reader.start()
        returned = []
        for _ in range(connects):
            with socket.socket() as sock:
                try:
                    sock.connect(("127.0.0.1", port))
                except ConnectionRefusedError:
                    pass
                returned.append(time.monotonic())
            time.sleep(spacing_s)
        time.sleep(0.2)
        tracer.stop()
        reader.join(timeout=5)
    if len(arrivals) != connects:
        raise SystemExit(f"bench: {connects} connects but {len(arrivals)} rows in the latency run")
    return [(shown - made) * 1000 for made, shown in zip(returned, arrivals)]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def failing_peer(peer: Peer) -> str:
    """How a peer fails to start here."""
    tool = peer.tool()
    if tool is None:
        return f"not installed (apt-get install {peer.package})"
    try:
        done = subprocess.run([str(tool)], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return "still running after 60 s: it attached"
    return f"exit {done.returncode}: {decisive_error(done.stderr + done.stdout)}"


def decisive_error(output: str) -> str:
    """The last line of a tool's output naming an error (earlier ones tend to
    be warnings; bcc prints its reason on stdout, after the traceback on
    stderr)."""
    lines = output.splitlines()
    errors = [line.strip() for line in lines
              if ERROR_LINE.search(line) and not line.startswith(" ")]
    return (errors or lines or ["(no output)"])[-1]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in [header, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def machine() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                      if line.startswith("model name")), platform.machine())
    return (f"{model}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
            f"Python {platform.python_version()}")


def build_noop(workdir: Path) -> Path | None:
    """Compiles bench/noop.bpf.c against the vmlinux.h `make install` made."""
    target = workdir / "noop.bpf.o"
    try:
        done = subprocess.run(["clang", "-g", "-O2", "-target", "bpf", f"-I{BUILD}", "-c",
                               str(NOOP_SOURCE), "-o", str(target)],
                              capture_output=True, text=True, check=False)
        problem = done.stderr.strip() if done.returncode else ""
    except OSError as exc:
        problem = str(exc)
    if problem:
        print(f"bench: cannot build {NOOP_SOURCE.name}, no floor row: "
              f"{problem.splitlines()[-1]}", file=sys.stderr)
        return None
    return target


def attach_noop(path: str) -> int:
    """--attach-noop: holds the empty program attached until SIGINT."""
    from tcpconnect.libbpf import BpfError, BpfObject

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        obj = BpfObject(path)
        try:
            obj.load()
            link = obj.program("noop").attach()
            print(BANNER, flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
            link.close()
        finally:
            obj.close()
    except BpfError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


class OtherLoad:
    """User-space CPU time that processes other than this benchmark's used
    while it ran, and time the hypervisor took (steal): both make figures
    noisy. (System time is left out: it includes the loop's own softirq work
    done by kernel threads.)"""

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as stat:
            user, nice, _system, _idle, _iowait, _irq, _softirq, steal = (
                int(v) for v in stat.readline().split()[1:9])
        hz = os.sysconf("SC_CLK_TCK")
        own = os.times()
        return (user + nice) / hz, own.user + own.children_user, steal / hz

    def report(self) -> str:
        user, own, steal = (end - start for end, start in zip(self._sample(), self._start))
        return (f"Other processes' user CPU time while measuring: {max(0.0, user - own):.1f} s; "
                f"hypervisor steal: {steal:.1f} s")


def ensure_tracefs() -> bool:
    """tcpstates attaches a classic tracepoint, which needs tracefs; mounts it
    if missing and says whether it did (so it can be unmounted again)."""
    if os.path.ismount(TRACEFS):
        return False
    subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one short round per mode: under a minute, rough figures")
    parser.add_argument("--rounds", type=int, help="traced/untraced pairs per mode (default 5)")
    parser.add_argument("--seconds", type=float, help="length of each run (default 1.5)")
    parser.add_argument("--mode", action="append",
                        choices=list(dict.fromkeys(m.name for m in MODES + PEER_MODES)),
                        help="measure only this mode (repeatable; default: all)")
    parser.add_argument("--peers", action="store_true",
                        help="ours (default, -L, -c) against bcc, libbpf-tools and bpftrace "
                        "tcpconnect, which need kprobes: what make bench-peers runs in a guest")
    parser.add_argument("--launches", type=int, default=3,
                        help="--peers: launches per tool for its start-up (default 3)")
    parser.add_argument("--attach-noop", metavar="OBJECT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attach_noop:
        return attach_noop(args.attach_noop)
    rounds = args.rounds or (1 if args.quick else 5)
    seconds = args.seconds or (1.0 if args.quick else 1.5)
    if rounds < 1 or seconds <= 0 or args.launches < 1:
        parser.error("--rounds, --seconds and --launches must be positive")
    for needed in (CONNECT_LOOP, TRACER):
        if not needed.exists():
            print(f"bench: {needed} is missing: run `make bench`", file=sys.stderr)
            return 1

    modes = [m for m in (PEER_MODES if args.peers else MODES)
             if not args.mode or m.name in args.mode]
    for mode in [m for m in modes if m.peer and m.peer.tool() is None]:
        print(f"bench: {mode.name} is not installed (apt-get install {mode.peer.package}): "
              "no row", file=sys.stderr)
        modes.remove(mode)
    mounted = ensure_tracefs()
    stats_before = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1\n")
    try:
        if args.peers:
            # A peer's start costs tens of seconds in a TCG guest (bcc compiles
            # its programs): no rounds beyond those asked for.
            return run_peers(modes, rounds, seconds, args.launches)
        return run(modes, rounds, seconds)
    finally:
        BPF_STATS.write_text(stats_before + "\n")
        if mounted:
            subprocess.run(["umount", str(TRACEFS)], check=False)


def overhead_table(modes: list[Mode], rounds: int, max_rounds: int, seconds: float,
                   ports: tuple[int, int, int],
                   metrics_port: int) -> dict[tuple[str, str], Result]:
    """Measures each mode on both loops and prints the table."""
    refused, listener, probe = ports
    workloads = [Workload("refused", refused, listener=False),
                 Workload("listener", listener, listener=True)]
    results: dict[tuple[str, str], Result] = {}
    rows = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tcpconnect-bench-") as tmp:
        noop_object = build_noop(Path(tmp)) if any(m.floor for m in modes) else None
        if noop_object is None:
            modes = [m for m in modes if not m.floor]
        load = OtherLoad()
        for workload in workloads:
            measured = measure_overhead(workload, modes, rounds, max_rounds, seconds, Path(tmp),
                                        noop_object, metrics_port, probe)
            for mode in modes:
                r = results[workload.name, mode.name] = measured[mode.name]
                if r.failed:
                    failures.append(f"{workload.name} loop, {mode.name}: did not start "
                                    f"({r.failed}), {len(r.traced)} round(s) measured")
                if not r.traced:
                    continue
                wanted = 0 if mode.excluded else r.connects
                reported = [f"{r.events:,}", "yes" if r.events == wanted else "NO",
                            f"{r.lost:,}", f"{r.peak_rss_kb / 1024:.1f}",
                            spread(r.cpu_us, ".2f"), "yes" if r.stable() else "NO"]
                rows.append([
                    workload.name, mode.name,
                    f"{statistics.median(r.untraced):,.0f}", f"{statistics.median(r.traced):,.0f}",
                    spread(r.ratios, ".3f"), spread(r.bpf_ns, ".0f"), f"{r.connects:,}",
                    *(reported if mode.reports else ["-"] * len(reported)),
                ])
    print("Connect rate, traced vs untraced (connects/s; output to a file; -P to the loop's "
          "port). Each figure: median (min-max) over rounds.")
    print("CPU figures do not depend on how busy the host is; the ratio does.")
    print(table(["workload", "mode", "untraced/s", "traced/s", "ratio", "BPF ns/connect",
                 "connects", "reported", "all?", "lost", "peak RSS MB",
                 "tracer CPU us/connect", "stable?"], rows))
    for failure in failures:
        print(failure)
    print(load.report() + "\n")
    return results


def run(modes: list[Mode], rounds: int, seconds: float) -> int:
    print(f"machine: {machine()}")
    print(f"{rounds} round(s) or more of {seconds:g} s per mode and workload; connect loop pinned to "
          f"CPU {WORKLOAD_CPU}; ratio = median over rounds of traced / mean of the untraced "
          "runs either side\n", flush=True)
    refused, listener, other, metrics_port = ports_nobody_uses(4)
    results = overhead_table(modes, rounds, 2 * rounds, seconds, (refused, listener, other),
                             metrics_port)
    print("tcpstates reports the CLOSE -> SYN_SENT transitions it printed.")
    startups = {options: measure_startup(options, other, launches=5)
                for options in ((), ("-d",))}
    print("Start-up: launch to banner (attached), 5 launches")
    print(table(["command", "median ms", "max ms", "peak RSS MB"],
                [[command_line(options), f"{statistics.median(times):.0f}",
                  f"{max(times):.0f}", f"{rss / 1024:.1f}"]
                 for options, (times, rss) in startups.items()]) + "\n")

    latencies = {options: measure_latency(options, other, connects=50, spacing_s=0.02)
                 for options in ((), ("-L",), ("-j",))}
    print("Display latency: connect() returned -> row read from the tracer's stdout "
          "(50 connects, 20 ms apart)")
    print(table(["command", "p50 ms", "p99 ms", "max ms"],
                [[command_line(options), f"{percentile(values, 50):.1f}",
                  f"{percentile(values, 99):.1f}", f"{max(values):.1f}"]
                 for options, values in latencies.items()]) + "\n")

    idle = measure_idle((), other, seconds=10)
    spaced = measure_latency((), other, connects=10, spacing_s=0.5)
    print("Idle: a tracer's CPU over 10 s with nothing to trace; display latency of connects "
          "0.5 s apart (each finds the reader asleep)")
    print(table(["CPU %", "p50 ms", "max ms"],
                [[f"{idle:.2f}", f"{percentile(spaced, 50):.1f}", f"{max(spaced):.1f}"]]) + "\n")

    print("Peers that cannot start on this kernel (no kprobes, no kernel headers):")
    print(table(["tool", "result"],
                [[name, failing_peer(peer)] for name, peer in KPROBE_PEERS]) + "\n")

    print("Issue 6 and 11 targets (goals, not pass/fail of the tool)")
    print(table(["target", "measured", "met?"], targets(results, startups, latencies)))
    return 0


def run_peers(modes: list[Mode], rounds: int, seconds: float, launches: int) -> int:
    print(f"machine: {machine()}")
    print(f"{rounds} round(s) of {seconds:g} s per tool and workload; connect loop pinned to "
          f"CPU {WORKLOAD_CPU}; ratio = median over rounds of traced / mean of the untraced "
          "runs either side\n", flush=True)
    refused, listener, other = ports_nobody_uses(3)
    # Start-up first, each tool in its row mode: a peer that cannot start
    # here is known in minutes, not after the rounds.
    starts = []
    for mode in modes:
        if "-c" in mode.options:
            continue
        print(f"# start-up: {mode.name}", file=sys.stderr, flush=True)
        try:
            starts.append([mode.name, *first_row(mode.command(other, None, 0), other, launches)])
        except PeerFailed as failed:
            starts.append([mode.name, f"did not start: {failed}", "", ""])
    print(f"Start-up: launch to the first row of a connect on a terminal, {launches} launches "
          "(a connect every 20 ms from launch on)")
    print(table(["tool", "median ms", "max ms", "peak RSS MB"], starts) + "\n", flush=True)
    overhead_table(modes, rounds, rounds, seconds, (refused, listener, other), metrics_port=0)
    return 0


def first_row(command: list[str], port: int, launches: int) -> list[str]:
    """Milliseconds from launch to the first row for a connect to port, the
    tracer writing to a terminal (where every tool writes each row as it
    comes): median and max, and the peak RSS (MB) of the tracer just after."""
    times, rss = [], 0
    for _ in range(launches):
        shown = threading.Event()
        primary, secondary = pty.openpty()

        def read() -> None:
            # To the end: a tracer writing to a terminal nobody reads blocks.
            pending = b""
            while True:
                try:
                    pending += os.read(primary, 65536)
                except OSError:  # EIO: the tracer closed the terminal
                    return
                *lines, pending = pending.split(b"\n")
                if any(line.split()[-1:] == [str(port).encode()] for line in lines):
                    shown.set()

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            tracer = TracerRun(command, Path(tmp), stdout=secondary)
            os.close(secondary)
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            deadline = start + ATTACH_TIMEOUT_S
            while not shown.wait(0.02) and time.perf_counter() < deadline:
                if tracer.proc.poll() is not None:
                    break
                refused_connect(port)
            elapsed = (time.perf_counter() - start) * 1000
            exited = tracer.proc.poll()
            if exited is None:
                tracer.stop()
            os.close(primary)
            reader.join(timeout=5)
            if not shown.is_set():
                raise PeerFailed(f"no row in {elapsed / 1000:.0f} s (exit {exited}): "
                                 f"{decisive_error(tracer.stderr())}")
            times.append(elapsed)
            rss = max(rss, tracer.peak_rss_kb)
    return [f"{statistics.median(times):,.0f}", f"{max(times):,.0f}", f"{rss / 1024:.1f}"]


def spread(values: list[float], fmt: str) -> str:
    return (f"{statistics.median(values):{fmt}} "
            f"({min(values):{fmt}}-{max(values):{fmt}})") if values else "-"


def command_line(options: tuple[str, ...]) -> str:
    return " ".join(("tcpconnect", *options))


def targets(results: dict[tuple[str, str], Result],
            startups: dict[tuple[str, ...], tuple[list[float], int]],
            latencies: dict[tuple[str, ...], list[float]]) -> list[list[str]]:
    def ratio(mode: str) -> tuple[str, float]:
        medians = {workload: statistics.median(r.ratios)
                   for (workload, name), r in results.items() if name == mode}
        text = ", ".join(f"{workload} {value:.3f}" for workload, value in medians.items())
        return text, min(medians.values(), default=0.0)

    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    def cpu(mode: str, limit: float) -> list[str]:
        medians = {workload: statistics.median(r.cpu_us)
                   for (workload, name), r in results.items() if name == mode and r.cpu_us}
        text = ", ".join(f"{workload} {value:.2f} us" for workload, value in medians.items())
        return [f"tracer CPU <= {limit:g} us/connect, {mode}", text,
                verdict(bool(medians) and max(medians.values()) <= limit)]

    ours = [r for (_, name), r in results.items()
            if any(m.name == name and m.reports and not m.peer for m in MODES)]
    default, default_worst = ratio("default")
    count, count_worst = ratio("-c")
    floor, _ = ratio("empty program (floor)")
    lost = sum(r.lost for r in ours)
    startup = max(statistics.median(times) for times, _ in startups.values())
    rss = max([r.peak_rss_kb for r in ours] + [kb for _, kb in startups.values()]) / 1024
    p99 = max(percentile(values, 99) for values in latencies.values())
    return [
        ["traced/untraced >= 0.97, default mode", default, verdict(default_worst >= 0.97)],
        ["traced/untraced >= 0.99, -c", count, verdict(count_worst >= 0.99)],
        ["  (floor: empty program, same tracepoint)", floor, ""],
        ["no lost events at saturation", f"{lost} lost, all modes", verdict(lost == 0)],
        cpu("default", 1.5), cpu("-t -U -L", 1.5), cpu("-j", 2), cpu("-d", 2.5),
        ["start-up <= 150 ms", f"{startup:.0f} ms (slowest median)", verdict(startup <= 150)],
        ["peak RSS <= 40 MB", f"{rss:.1f} MB (largest)", verdict(rss <= 40)],
        ["display latency p99 <= 50 ms", f"{p99:.1f} ms (worst mode)", verdict(p99 <= 50)],
    ]


if __name__ == "__main__":
    sys.exit(main())
