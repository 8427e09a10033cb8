"""--selftest: one attempt of each kind the tool can tell apart, made in
network namespaces of its own, traced by the tool itself and checked
against the result and cause it must get. How an operator checks a new host
or kernel: it needs what tracing needs, and iproute2's `ip`.

The namespaces: `client`, where every attempt is made (lo up, no default
route), joined by veth to `router`, which forwards to an `unreachable` route
(it answers with ICMP host-unreachable) and a `blackhole` one (no answer).
The tool runs as a child process (`--outcome -j --netns` of `client`), so
what is checked is the tool as installed, rows and all.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable, NamedTuple

CLONE_NEWNET = 0x40000000
# include/uapi/linux/tcp.h
TCP_SYNCNT = 7
TCP_USER_TIMEOUT = 18
# RFC 2544's benchmarking range: addresses no real network uses, inside
# namespaces no one else sees.
CLIENT, ROUTER = "198.18.0.1", "198.18.0.2"
UNREACHABLE, BLACKHOLE, NO_ROUTE = "198.18.1.1", "198.18.1.2", "198.18.2.1"
# A port nothing listens on in a fresh namespace.
CLOSED_PORT = 9
# Two ephemeral ports for the last check; the third connect finds none free.
PORT_RANGE = (40000, 40001)
# Seconds: start-up of the traced child (BPF load and attach), the
# attempts (~1 s: one retransmission, then TCP_USER_TIMEOUT), its exit.
START_TIMEOUT, ATTEMPT_TIMEOUT, EXIT_TIMEOUT = 30, 10, 10


class SelftestError(Exception):
    """Why the self-test could not run (not a failed check)."""


class Check(NamedTuple):
    name: str
    daddr: str
    dport: int
    result: str
    cause: str


class Namespaces:
    """The two namespaces, named after this process, removed on close."""

    def __init__(self) -> None:
        self.client = f"tcpconnect-selftest-{os.getpid()}-client"
        self.router = f"tcpconnect-selftest-{os.getpid()}-router"
        self._made: list[str] = []

    def __enter__(self) -> Namespaces:
        # __exit__ does not run when __enter__ fails: a step that fails
        # here must not leave the namespaces made so far behind.
        try:
            self._set_up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _set_up(self) -> None:
        for name in (self.client, self.router):
            ip("netns", "add", name)
            self._made.append(name)
        c, r = ("-n", self.client), ("-n", self.router)
        ip(*c, "link", "set", "lo", "up")
        ip(*c, "link", "add", "st0", "type", "veth", "peer", "name", "st1", "netns", self.router)
        ip(*c, "addr", "add", f"{CLIENT}/30", "dev", "st0")
        ip(*c, "link", "set", "st0", "up")
        ip(*c, "route", "add", "198.18.1.0/24", "via", ROUTER)
        ip(*r, "addr", "add", f"{ROUTER}/30", "dev", "st1")
        ip(*r, "link", "set", "st1", "up")
        ip(*r, "route", "add", "unreachable", f"{UNREACHABLE}/32")
        ip(*r, "route", "add", "blackhole", f"{BLACKHOLE}/32")
        with in_namespace(self.router):
            write_sysctl("net/ipv4/ip_forward", "1")

    def __exit__(self, *_: object) -> None:
        for name in self._made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def inode(self) -> int:
        return os.stat(f"/run/netns/{self.client}").st_ino


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode:
        raise SelftestError("ip %s: %s" % (" ".join(args), done.stderr.strip() or
                                           f"exit status {done.returncode}"))


class in_namespace:
    """Moves the calling thread (only it) into a named network namespace;
    sockets it creates there stay there."""

    _libc = ctypes.CDLL(None, use_errno=True)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._enter(f"/run/netns/{self.name}")

    def __exit__(self, *_: object) -> None:
        try:
            self._setns(self._home)
        finally:
            os.close(self._home)

    def _enter(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._setns(fd)
        finally:
            os.close(fd)

    def _setns(self, fd: int) -> None:
        if self._libc.setns(fd, CLONE_NEWNET):
            raise SelftestError("setns: " + os.strerror(ctypes.get_errno()))


def write_sysctl(name: str, value: str) -> None:
    """A sysctl of the calling thread's network namespace."""
    with open(f"/proc/sys/{name}", "w") as f:
        f.write(value)


def attempt(daddr: str, port: int, expected: int, family: int = socket.AF_INET) -> None:
    """One blocking connect that must end with errno `expected` (0: it
    connects); a SYN without answer is retransmitted once, then given up."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_TCP, TCP_SYNCNT, 1)
        s.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, 300)
        got = s.connect_ex((daddr, port))
    if got != expected:
        raise SelftestError("connect to %s port %d: expected %s, got %s" % (
            daddr, port, errno.errorcode.get(expected, "success"),
            errno.errorcode.get(got, "success")))


def run_checks(ns: Namespaces) -> tuple[list[Check], list[str]]:
    """Makes every attempt in the client namespace; returns the checks and
    the problems of attempts that did not end as planned."""
    problems: list[str] = []
    checks: list[Check] = []
    with in_namespace(ns.client):
        listeners = [socket.create_server(("127.0.0.1", 0)),
                     socket.create_server(("::1", 0), family=socket.AF_INET6),
                     socket.create_server(("127.0.0.1", 0))]
    # The last one's connects are the port exhaustion's alone.
    ok4, ok6, exhausted = (s.getsockname()[1] for s in listeners)
    planned: list[tuple[Check, Callable[[], None]]] = [
        (Check("ok", "127.0.0.1", ok4, "ok", "1 SYN"),
         lambda: attempt("127.0.0.1", ok4, 0)),
        (Check("ok (IPv6)", "::1", ok6, "ok", "1 SYN"),
         lambda: attempt("::1", ok6, 0, socket.AF_INET6)),
        (Check("refused", "127.0.0.1", CLOSED_PORT, "refused", "RST from destination"),
         lambda: attempt("127.0.0.1", CLOSED_PORT, errno.ECONNREFUSED)),
        (Check("refused (IPv6)", "::1", CLOSED_PORT, "refused", "RST from destination"),
         lambda: attempt("::1", CLOSED_PORT, errno.ECONNREFUSED, socket.AF_INET6)),
        (Check("timeout", BLACKHOLE, 80, "timeout", "no answer to 2 SYNs"),
         lambda: attempt(BLACKHOLE, 80, errno.ETIMEDOUT)),
        (Check("unreachable", UNREACHABLE, 80, "unreachable",
               f"ICMP host-unreachable from {ROUTER}"),
         lambda: attempt(UNREACHABLE, 80, errno.EHOSTUNREACH)),
        (Check("no-route", NO_ROUTE, 80, "no-route", "no SYN sent"),
         lambda: attempt(NO_ROUTE, 80, errno.ENETUNREACH)),
    ]

    def make(action: Callable[[], None]) -> None:
        try:
            with in_namespace(ns.client):
                action()
        except (SelftestError, OSError) as exc:
            problems.append(str(exc))

    # At once: the slow ones (a retransmission each) then take ~1 s in all.
    threads = [threading.Thread(target=make, args=(action,)) for _, action in planned]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ATTEMPT_TIMEOUT)
    checks += [check for check, _ in planned]
    # Last and alone: the namespace's ephemeral range shrinks to two ports.
    checks.append(Check("no-local-port", "127.0.0.1", exhausted, "no-local-port",
                        "no SYN sent"))
    make(lambda: exhaust_ports(exhausted))
    for listener in listeners:
        listener.close()
    return checks, problems


def exhaust_ports(port: int) -> None:
    write_sysctl("net/ipv4/ip_local_port_range", "%d %d" % PORT_RANGE)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in PORT_RANGE]
    try:
        attempt("127.0.0.1", port, errno.EADDRNOTAVAIL)
    finally:
        for s in held:
            s.close()


class Tracer:
    """The tool as a child process, tracing the client namespace."""

    def __init__(self, netns: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcpconnect", "--outcome", "-j", "--netns", str(netns)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The banner comes once every program is attached.
        ready = threading.Event()
        self._first = ""

        def wait_banner() -> None:
            self._first = self.proc.stderr.readline()  # type: ignore[union-attr]
            ready.set()

        threading.Thread(target=wait_banner, daemon=True).start()
        if not ready.wait(START_TIMEOUT) or not self._first.startswith("Tracing"):
            self.proc.kill()
            _, rest = self.proc.communicate()
            reason = (self._first + rest).strip().splitlines()
            raise SelftestError("the tracer did not start: " +
                                (reason[-1] if reason else "no start within %d s" % START_TIMEOUT))

    def stop(self) -> list[dict]:
        self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SelftestError("the tracer did not stop within %d s" % EXIT_TIMEOUT)
        if self.proc.returncode:
            lines = err.strip().splitlines()
            raise SelftestError("the tracer failed: " + (lines[-1] if lines else
                                                         f"exit status {self.proc.returncode}"))
        rows = [json.loads(line) for line in out.splitlines()]
        # Loss records say so with a "type"; rows have none.
        return [row for row in rows if "type" not in row]


def verdicts(checks: list[Check], rows: list[dict]) -> list[tuple[bool, Check, str]]:
    """Each check with whether the tool's rows hold a row of its result and
    cause to its destination, and what was found."""
    found = []
    for check in checks:
        mine = [r for r in rows if (r.get("daddr"), r.get("dport")) == (check.daddr, check.dport)]
        got = ["%s, %s" % (r.get("result"), r.get("cause")) for r in mine]
        want = "%s, %s" % (check.result, check.cause)
        found.append((want in got, check, "; ".join(got) or "no row"))
    return found


def run(stop_requested: Callable[[], bool]) -> int:
    if not shutil.which("ip"):
        print("tcpconnect: --selftest needs iproute2's ip command", file=sys.stderr)
        return 1
    try:
        with Namespaces() as ns:
            tracer = Tracer(ns.inode())
            try:
                checks, problems = run_checks(ns)
            finally:
                rows = tracer.stop()
    except SelftestError as exc:
        print(f"tcpconnect: selftest: {exc}", file=sys.stderr)
        return 1
    if stop_requested():
        print("tcpconnect: selftest: interrupted", file=sys.stderr)
        return 1
    results = verdicts(checks, rows)
    for ok, check, got in results:
        target = f"[{check.daddr}]:{check.dport}" if ":" in check.daddr else \
            f"{check.daddr}:{check.dport}"
        line = "%-4s %-15s %-22s %s, %s" % ("ok" if ok else "FAIL", check.name, target,
                                            check.result, check.cause)
        print(line if ok else f"{line} (got: {got})")
    for problem in problems:
        print(f"FAIL attempt: {problem}")
    passed = sum(ok for ok, _, _ in results)
    print("%d of %d checks passed" % (passed, len(results)))
    return 0 if passed == len(results) and not problems else 1
