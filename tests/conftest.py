"""Shared fixtures: run the real tool, make real connections whose truth we know.

Every tracing test loads the real BPF object into the running kernel; nothing
here mocks the kernel. Traffic goes only to loopback or to network
namespaces these fixtures create.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
# The helpers that are programs (uring_connect, connect_loop): the kernel
# matrix's arm64 guests point this at their cross-built ones (kernels/matrix).
HELPERS = Path(os.environ.get("TEST_HELPERS", BUILD))
TOOL = [sys.executable, "-m", "tcpconnect"]
BANNER = "Tracing connect ... Hit Ctrl-C to end"
TCP_SYNCNT = 7
TCP_USER_TIMEOUT = 18


def impatient_socket(family: int = 4) -> socket.socket:
    """A TCP socket whose connect gives up after one retransmission of its
    SYN (~1 s), for attempts that must time out without slowing the suite."""
    client = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6)
    client.setsockopt(socket.IPPROTO_TCP, TCP_SYNCNT, 1)
    client.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, 300)
    return client


def free_port(family: int = socket.AF_INET) -> int:
    """A port nothing listens on, below the ephemeral range so a connect to it
    can never be answered by the connecting socket itself."""
    while True:
        port = 20000 + uuid.uuid4().int % 12000
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            probe.close()


# Runs a command in a private mount namespace in which the kernel's BTF is
# hidden, as on a kernel built without CONFIG_DEBUG_INFO_BTF. unshare execs,
# so the command keeps the pid Popen reports.
WITHOUT_KERNEL_BTF = ("unshare", "-m", "sh", "-c",
                      'mount -t tmpfs none /sys/kernel/btf && exec "$@"', "sh")

# With TEST_WITHOUT_KERNEL_BTF=1 every traced run hides the kernel's BTF and
# passes a copy of it with --btf instead, so the suite checks the raw_tp
# programs kernels without BTF get, with the same exact rows.
WITHOUT_KERNEL_BTF_MODE = os.environ.get("TEST_WITHOUT_KERNEL_BTF") == "1"
_btf_copy: list[Path] = []


def btf_file_copy() -> Path:
    """The running kernel's BTF as a file outside /sys, made once."""
    if not _btf_copy:
        fd, path = tempfile.mkstemp(suffix=".btf")
        with os.fdopen(fd, "wb") as copy:
            copy.write(Path("/sys/kernel/btf/vmlinux").read_bytes())
        _btf_copy.append(Path(path))
    return _btf_copy[0]


@functools.cache
def ftrace_functions() -> frozenset[str]:
    """The functions ftrace may hook, as tracefs lists them (none where it
    cannot be read)."""
    try:
        text = Path("/sys/kernel/tracing/available_filter_functions").read_text()
    except OSError:
        return frozenset()
    return frozenset(line.split(" ", 1)[0] for line in text.splitlines())


def port_hook_expected() -> bool:
    """Whether -L, as the suite runs the tool, sees attempts as their port is
    chosen (an fexit program on inet_hash_connect and inet6_hash_connect):
    where ftrace may hook both (BPF trampolines attach through it), told by
    tracefs rather than by the tool's own probe, and not with the kernel's
    BTF hidden, which fexit programs need."""
    return (not WITHOUT_KERNEL_BTF_MODE
            and {"inet_hash_connect", "inet6_hash_connect"} <= ftrace_functions())


# Linux 6.12 (commit ffc83860d8c0) lets tp_btf programs make skb dynptrs.
WHOLE_PACKET_KERNEL = (6, 12)


def kernel_release() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(minor)


def kernel_allows_whole_packets() -> bool:
    """Whether this kernel lets -d read answers in page fragments. Known from
    its release, not from what the tool chose: the tool probes by loading
    (tracer.py), and a test that asked the tool would pass whatever the probe
    decided."""
    return kernel_release() >= WHOLE_PACKET_KERNEL


def dns_capture_reads_whole_packets() -> bool:
    """Whether -d, as the suite runs the tool, reads whole packets: not
    with the kernel's BTF hidden, which only tp_btf programs (and the
    whole-packet capture is one) need."""
    return kernel_allows_whole_packets() and not WITHOUT_KERNEL_BTF_MODE


SKIPPED_RUNS = re.compile(r"(Possibly lost \d+ events: the kernel skipped that many runs of "
                          r"the tracing programs|The kernel skipped \d+ runs of the tracing "
                          r"programs in total \(a program already running on that CPU\): the "
                          r"connects, packets or answers they would have seen are missing)\n")


class Trace:
    """A running `tcpconnect` process; stop() ends it like Ctrl-C would."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 prefix: tuple[str, ...] = (), tool: tuple[str, ...] = tuple(TOOL)) -> None:
        if WITHOUT_KERNEL_BTF_MODE:
            prefix = (*WITHOUT_KERNEL_BTF, *prefix)
            args = (*args, "--btf", str(btf_file_copy()))
        self.args = args
        self.proc = subprocess.Popen(
            [*prefix, *tool, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._errors: queue.Queue[str | None] = queue.Queue()
        # Both pipes are drained all along, so a chatty tracer never blocks.
        self._readers = [threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
                         for pipe, lines in ((self.proc.stdout, self._lines),
                                             (self.proc.stderr, self._errors))]
        for reader in self._readers:
            reader.start()
        self.stdout = ""
        self.stderr = ""
        self.returncode: int | None = None
        json_mode = "-j" in args or "--json" in args
        # With -j the banner goes to stderr, keeping stdout pure JSON Lines.
        banner = self._next(self._errors if json_mode else self._lines, timeout=20)
        self.preamble = [banner]
        if banner != BANNER:
            self.stop()
            raise AssertionError(f"tcpconnect did not start: {banner!r} {self.stderr!r}")
        rowless = {"-c", "--count", "-q", "--quiet"}.intersection(args)
        if not rowless and not json_mode:
            self.preamble.append(self.next_line(timeout=5))

    @staticmethod
    def _read(pipe: TextIO, lines: queue.Queue[str | None]) -> None:
        for line in pipe:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    @staticmethod
    def _next(lines: queue.Queue[str | None], timeout: float) -> str:
        try:
            return lines.get(timeout=timeout) or ""
        except queue.Empty:
            return ""

    def next_line(self, timeout: float) -> str:
        """The next line of output, or "" if none comes in time."""
        return self._next(self._lines, timeout)

    @property
    def header(self) -> str:
        return self.preamble[1]

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Signals the tracer, waits for it, returns the rest of its stdout.
        The kernel side hands events over in batches within milliseconds;
        the grace sleep makes sure the last connect has been read."""
        time.sleep(0.1)
        self.proc.send_signal(sig)
        self.returncode = self.proc.wait(timeout=20)
        for reader in self._readers:
            reader.join(timeout=5)
        self.stdout = self._rest(self._lines)
        stderr = self._rest(self._errors)
        # A run of a tracing program the kernel skipped (the same program
        # already running on that CPU, interrupted by a softirq that fires its
        # hook again) is reported, as it must be. It happens to the machine's
        # own traffic as much as to the test's, most under TCG: kept apart
        # here, so that a test's "no warning" means no other warning. A skip
        # that cost the test one of its connects still fails its rows.
        self.skipped_runs = [line for line in stderr.splitlines(keepends=True)
                             if SKIPPED_RUNS.match(line)]
        self.stderr = "".join(line for line in stderr.splitlines(keepends=True)
                              if not SKIPPED_RUNS.match(line))
        return self.stdout

    @staticmethod
    def _rest(lines: queue.Queue[str | None]) -> str:
        rest = []
        while (line := lines.get_nowait()) is not None:
            rest.append(line + "\n")
        return "".join(rest)

    @property
    def rows(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line]

    def json_rows(self) -> list[dict]:
        """The rows of -j's stream, without its loss records (those have a
        "type"): a run of a tracing program the kernel skipped for traffic
        of the machine's own, not the test's, is reported there too."""
        return [record for record in map(json.loads, self.rows) if "type" not in record]

    def loss_records(self) -> list[dict]:
        return [record for record in map(json.loads, self.rows) if "type" in record]


@pytest.fixture
def trace() -> Iterator[type[Trace]]:
    started: list[Trace] = []

    def start(*args: str, **kwargs: object) -> Trace:
        t = Trace(*args, **kwargs)  # type: ignore[arg-type]
        started.append(t)
        return t

    yield start  # type: ignore[misc]
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait()


def comm_of(pid: int, tid: int | None = None) -> str:
    path = f"/proc/{pid}/task/{tid}/comm" if tid else f"/proc/{pid}/comm"
    return Path(path).read_text().rstrip("\n")


def row(pid: int, comm: str, ip: int, saddr: str, daddr: str, dport: int,
        lport: int | None = None, uid: int | None = None, query: str = "") -> str:
    """The exact line bcc's layout gives for one connect (without -t): like
    bcc, a space and the QUERY column follow DPORT even when it is empty."""
    line = "%-6d" % uid if uid is not None else ""
    if lport is None:
        line += "%-7d %-12.12s %-2d %-16s %-16s %-6d" % (pid, comm, ip, saddr, daddr, dport)
    else:
        line += "%-7d %-12.12s %-2d %-16s %-6d %-16s %-6d" % (
            pid, comm, ip, saddr, lport, daddr, dport)
    return line + " " + query


# A long-lived process that performs connects on request, so a test can know
# its PID (for -p) before tracing starts, and run it as another user.
WORKLOAD = textwrap.dedent("""
    import ctypes, os, socket, sys
    # A COMM of the test's choosing (prctl PR_SET_NAME).
    if os.environ.get("WORKLOAD_NAME"):
        ctypes.CDLL(None).prctl(15, os.environ["WORKLOAD_NAME"].encode(), 0, 0, 0)
    # Drop to the wanted user only now: the interpreter lives under /root.
    if len(sys.argv) > 1:
        os.setgroups([])
        os.setgid(int(sys.argv[1]))
        os.setuid(int(sys.argv[1]))
    for line in sys.stdin:
        family, addr, port = line.split()
        af = socket.AF_INET6 if family == "6" else socket.AF_INET
        s = socket.socket(af, socket.SOCK_STREAM)
        try:
            s.connect((addr, int(port)))
            result = 0
        except OSError as exc:
            result = exc.errno
        print(s.getsockname()[1], result, flush=True)
        s.close()
""")


class Workload:
    def __init__(self, user: int | None = None, netns: str | None = None,
                 mount_ns: bool = False, name: str | None = None) -> None:
        cmd = [sys.executable, "-c", WORKLOAD]
        if user is not None:
            cmd.append(str(user))
        if mount_ns:
            # unshare execs the workload, so the pid stays the one we know.
            cmd = ["unshare", "--mount", "--", *cmd]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        env = {**os.environ, "WORKLOAD_NAME": name} if name else None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd="/", env=env)
        self.pid = self.proc.pid

    @property
    def comm(self) -> str:
        return comm_of(self.pid)

    def connect(self, family: int, addr: str, port: int) -> tuple[int, int]:
        """Returns (local port, errno or 0)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{family} {addr} {port}\n")
        self.proc.stdin.flush()
        lport, result = self.proc.stdout.readline().split()
        return int(lport), int(result)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=10)


@pytest.fixture
def workload() -> Iterator[type[Workload]]:
    made: list[Workload] = []

    def make(**kwargs: object) -> Workload:
        w = Workload(**kwargs)  # type: ignore[arg-type]
        made.append(w)
        return w

    yield make  # type: ignore[misc]
    for w in made:
        w.close()


def refused_connect(family: int, port: int, addr: str | None = None) -> int:
    """Connects from this process to a closed loopback port (of 127.0.0.1 or
    ::1 unless addr is given; family 6 with ::ffff:127.x.y.z makes a
    v4-mapped connect); returns the local port."""
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    s = socket.socket(af, socket.SOCK_STREAM)
    try:
        with pytest.raises(ConnectionRefusedError):
            s.connect((addr or ("::1" if family == 6 else "127.0.0.1"), port))
        return s.getsockname()[1]
    finally:
        s.close()


def connect_burst(port: int, seconds: float) -> int:
    """Refused loopback connects as fast as one core can for `seconds`
    (build/connect_loop); returns how many were made."""
    out = subprocess.run([str(HELPERS / "connect_loop"), "-p", str(port), "-d", str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


def listening(addr: str, backlog: int = 64, fastopen: bool = False) -> socket.socket:
    """A loopback listener on a free port (use as a context manager)."""
    listener = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    if fastopen:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    listener.bind((addr, 0))
    listener.listen(backlog)
    return listener


def cgroup2_root() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _source, mountpoint, fstype, *_ = line.split()
        if fstype == "cgroup2":
            return Path(mountpoint)
    pytest.fail("no cgroup v2 hierarchy is mounted")


def cgroup_path_of(pid: int) -> str:
    # The v2 line of /proc/PID/cgroup is "0::/path".
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    pytest.fail(f"process {pid} is in no cgroup v2")


def cgroup_id_of(pid: int) -> int:
    # The id is the directory's inode.
    return (cgroup2_root() / cgroup_path_of(pid).lstrip("/")).stat().st_ino


class Cgroups:
    """Cgroup directories under one unique parent; emptied and removed after."""

    def __init__(self) -> None:
        self.root = cgroup2_root()
        self.parent = self.root / f"tcpconnect-test-{uuid.uuid4().hex[:12]}"
        self.parent.mkdir()

    def make(self, relative: str) -> Path:
        path = self.parent / relative
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))

    def move(self, pid: int, path: Path) -> None:
        (path / "cgroup.procs").write_text(str(pid))

    def remove(self, path: Path) -> None:
        # A cgroup with members cannot be removed: hand them to the root.
        for pid in (path / "cgroup.procs").read_text().split():
            (self.root / "cgroup.procs").write_text(pid)
        path.rmdir()

    def remove_all(self) -> None:
        for path in sorted((p for p in self.parent.rglob("*") if p.is_dir()),
                           key=lambda p: -len(p.parts)) + [self.parent]:
            self.remove(path)


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    made = Cgroups()
    try:
        yield made
    finally:
        made.remove_all()


@contextmanager
def perf_event_paranoid(level: int) -> Iterator[None]:
    """kernel.perf_event_paranoid set to `level` for a while (Debian's and
    Ubuntu's kernels default to 3: no perf_event_open(2) without
    CAP_SYS_ADMIN; others to 2)."""
    path = Path("/proc/sys/kernel/perf_event_paranoid")
    before = path.read_text()
    path.write_text(str(level))
    try:
        yield
    finally:
        path.write_text(before)


# The names -j adds to every row from the connecting task's cgroup path.
ATTRIBUTION_FIELDS = ("cgroup", "unit", "container_id", "container_name", "pod_uid", "pod",
                      "namespace")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def attach_connect_programs(kind: str, cgroup: Path, scratch: Path) -> None:
    """Attaches KIND_connect4 and KIND_connect6 of build/KIND_connect.bpf.o
    (tests/helpers) to the cgroup, where they stay until it is removed.
    bpftool attaches pinned programs: they are pinned, while it does, in a
    BPF file system of their own mounted under `scratch`."""
    pins = scratch / f"bpffs-{kind}"
    pins.mkdir()
    sh("mount", "-t", "bpf", "bpf", str(pins))
    try:
        sh("bpftool", "prog", "loadall", str(BUILD / f"{kind}_connect.bpf.o"), str(pins / kind))
        for hook in ("connect4", "connect6"):
            sh("bpftool", "cgroup", "attach", str(cgroup), hook, "pinned",
               str(pins / kind / f"{kind}_{hook}"))
    finally:
        sh("umount", str(pins))


def nft(netns: str, *commands: str) -> None:
    """nft's commands inside a test namespace, as one script (one process)."""
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"],
                   input="\n".join(commands) + "\n", text=True, check=True,
                   capture_output=True)


def run_tool(*args: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess:
    """Runs the CLI to completion (for options that make it refuse to start)."""
    return subprocess.run([*prefix, *TOOL, *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, cwd=ROOT, env=env)


@dataclass
class VethPair:
    """A network namespace of this test joined to the root one by veth."""

    netns: str
    host4: str
    peer4: str
    host6: str
    peer6: str

    def run(self, *cmd: str, **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.netns, *cmd],
                                **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def veth() -> Iterator[VethPair]:
    tag = uuid.uuid4().hex[:6]
    netns, host_if, peer_if = f"tct{tag}", f"th{tag}", f"tp{tag}"
    # A random /30 of 10.213.0.0/16 (16384 of them) and a random /64 of a
    # ULA prefix, so concurrent runs do not collide.
    block = int(tag, 16) % 16384
    net4 = f"10.213.{block // 64}"
    first = block % 64 * 4
    net6 = ipaddress.IPv6Address(f"fd00:213:{tag[:4]}:{tag[4:]}::")
    pair = VethPair(netns, f"{net4}.{first + 1}", f"{net4}.{first + 2}",
                    str(net6 + 1), str(net6 + 2))  # str(): the text inet_ntop gives
    # One ip process per side (-batch): under TCG a process start costs
    # 0.1-0.5 s, and 40 tests of each guest make a pair.
    try:
        ip_batch(f"netns add {netns}",
                 f"link add {host_if} type veth peer name {peer_if} netns {netns}",
                 f"addr add {pair.host4}/30 dev {host_if}",
                 f"addr add {pair.host6}/64 dev {host_if} nodad",
                 f"link set {host_if} up")
        ip_batch(f"addr add {pair.peer4}/30 dev {peer_if}",
                 f"addr add {pair.peer6}/64 dev {peer_if} nodad",
                 f"link set {peer_if} up",
                 "link set lo up", netns=netns)
        yield pair
    finally:
        # The link first: deleting the namespace removes its end only later.
        subprocess.run(["ip", "-force", "-batch", "-"], input=f"link del {host_if}\n"
                       f"netns del {netns}\n", text=True, capture_output=True)


def ip_batch(*commands: str, netns: str | None = None) -> None:
    """ip's commands in one process, in netns if given; raises on the first
    that fails, with ip's message."""
    where = ("-n", netns) if netns else ()
    done = subprocess.run(["ip", *where, "-batch", "-"], input="\n".join(commands) + "\n",
                          text=True, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(where)} -batch: {done.stderr.strip()}")


def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(autouse=True, scope="session")
def _root_and_built() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.exit("the test suite loads BPF programs and must run as root", returncode=2)
    if not (ROOT / "src/tcpconnect/tcpconnect.bpf.o").exists():
        pytest.exit("BPF object not built: run `make test`", returncode=2)
    # tracefs as systemd mounts it at boot, for the tests that run the tool
    # with too few capabilities to mount it itself (test_deploy); whether
    # the tool mounts it is tested in test_failures.
    if not Path("/sys/kernel/tracing/events").is_dir():
        sh("mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing")
    yield
    for copy in _btf_copy:
        copy.unlink()
