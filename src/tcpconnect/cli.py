"""Command line: options compatible with bcc's tcpconnect, checks, main loop."""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import sys
from typing import NoReturn

PROG = "tcpconnect"
PID_MAX_LIMIT = 4194304
UID_MAX = 2**32 - 2  # (uid_t)-1 means "no uid" to the kernel
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
CGROUP2_SUPER_MAGIC = 0x63677270

EXAMPLES = """examples:
    tcpconnect                  # trace every active TCP connect
    tcpconnect -t               # with a timestamp column
    tcpconnect -d               # with the DNS query that likely led to each connect
    tcpconnect -p 181           # only process 181
    tcpconnect -P 80            # only connects to port 80
    tcpconnect -P 80,81         # only connects to ports 80 and 81
    tcpconnect -4               # only IPv4
    tcpconnect -6               # only IPv6
    tcpconnect -L               # with the local port
    tcpconnect -U               # with a UID column
    tcpconnect -u 1000          # only UID 1000
    tcpconnect -c               # count connects per source and destination, print on exit
    tcpconnect -c -i 10         # the same, printed and reset every 10 seconds
    tcpconnect -j               # one JSON object per connect
    tcpconnect --cgroupmap /sys/fs/bpf/test01     # only cgroups listed in this pinned map
    tcpconnect --mntnsmap /sys/fs/bpf/mnt_ns_set  # only mount namespaces in this pinned map
    tcpconnect --cgroup /sys/fs/cgroup/unified/app  # only this cgroup v2
    tcpconnect --btf /var/lib/btf/5.10.0-32-amd64.btf  # a kernel without its own BTF"""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage dump: errors must be easy to spot in logs.
        self.exit(2, f"{PROG}: error: {message}\n")


def is_number(text: str) -> bool:
    # isdigit() alone accepts "²" and other non-ASCII digits.
    return text.isascii() and text.isdigit()


def parse_pid(text: str) -> int:
    if not is_number(text) or not 0 < int(text) <= PID_MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"invalid PID {text!r}: expected 1..{PID_MAX_LIMIT}")
    return int(text)


def parse_ports(text: str) -> tuple[int, ...]:
    ports: list[int] = []
    for item in text.split(","):
        if not is_number(item) or not 0 < int(item) <= 65535:
            raise argparse.ArgumentTypeError(
                f"invalid port {item!r} in {text!r}: expected a comma-separated list of 1..65535")
        if int(item) not in ports:
            ports.append(int(item))
    return tuple(ports)


def parse_uid(text: str) -> int:
    if is_number(text):
        if int(text) > UID_MAX:
            raise argparse.ArgumentTypeError(f"invalid UID {text!r}: expected 0..{UID_MAX}")
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid UID {text!r}: not a number nor a known user") from None


def parse_interval(text: str) -> int:
    if not is_number(text) or int(text) == 0:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: expected whole seconds >= 1")
    return int(text)


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Trace TCP active connections (connect()).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("-t", "--timestamp", action="store_true",
                        help="include a timestamp column (seconds since the first connect)")
    parser.add_argument("-p", "--pid", type=parse_pid, help="trace this process ID only")
    parser.add_argument("-P", "--port", type=parse_ports, metavar="PORTS",
                        help="comma-separated list of destination ports to trace")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", action="store_true", help="trace IPv4 family only")
    family.add_argument("-6", "--ipv6", action="store_true", help="trace IPv6 family only")
    parser.add_argument("-L", "--lport", action="store_true", help="include a LPORT column")
    parser.add_argument("-U", "--print-uid", action="store_true", help="include a UID column")
    parser.add_argument("-u", "--uid", type=parse_uid, help="trace this UID (or user) only")
    parser.add_argument("-c", "--count", action="store_true",
                        help="count connects per source IP and destination IP/port")
    parser.add_argument("-i", "--interval", type=parse_interval, metavar="SECONDS",
                        help="with -c: print and reset the counts every SECONDS")
    parser.add_argument("-d", "--dns", action="store_true",
                        help="include the most recent DNS query that resolved the destination")
    parser.add_argument("-j", "--json", action="store_true",
                        help="print one JSON object per connect instead of columns")
    parser.add_argument("--cgroupmap", metavar="MAPPATH",
                        help="trace cgroups in this pinned BPF map only")
    parser.add_argument("--mntnsmap", metavar="MAPPATH",
                        help="trace mount namespaces in this pinned BPF map only")
    parser.add_argument("--cgroup", metavar="DIR",
                        help="trace this cgroup v2 directory only")
    parser.add_argument("--btf", metavar="FILE",
                        help="BTF of the running kernel, for kernels without "
                             "/sys/kernel/btf/vmlinux (e.g. from BTFHub)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count and args.dns:
        parser.error("-d/--dns cannot be used with -c/--count")
    if args.count and args.json:
        parser.error("-j/--json cannot be used with -c/--count")
    if args.interval is not None and not args.count:
        parser.error("-i/--interval needs -c/--count")
    if args.pid is not None:
        check_process(parser, args.pid)
    for option, path in (("--cgroupmap", args.cgroupmap), ("--mntnsmap", args.mntnsmap)):
        if path == "":
            parser.error(f"{option}: empty path")
    if args.cgroup is not None:
        args.cgroup_id = cgroup_id(parser, args.cgroup)
    else:
        args.cgroup_id = None
    if args.btf is not None:
        check_btf(parser, args.btf)
    return args


def check_btf(parser: Parser, path: str) -> None:
    from .libbpf import BpfError, check_btf_file

    if not os.path.isfile(path):
        parser.error(f"--btf {path}: no such file")
    try:
        check_btf_file(path)
    except BpfError as exc:
        parser.error(f"--btf {exc}")


def check_process(parser: Parser, pid: int) -> None:
    """-p filters on the process id; a thread id would silently match nothing."""
    try:
        with open(f"/proc/{pid}/status") as status:
            tgid = next(int(line.split()[1]) for line in status if line.startswith("Tgid:"))
    except (OSError, StopIteration):
        parser.error(f"-p {pid}: no such process")
    if tgid != pid:
        parser.error(f"-p {pid}: is a thread of process {tgid}; give the process id")


def cgroup_id(parser: Parser, path: str) -> int:
    """A cgroup v2 directory's id is its inode number on cgroup2fs."""
    from .libbpf import BpfError, filesystem_magic

    try:
        magic = filesystem_magic(path)
    except BpfError as exc:
        parser.error(f"--cgroup {exc}")
    if magic != CGROUP2_SUPER_MAGIC or not os.path.isdir(path):
        parser.error(f"--cgroup {path}: not a cgroup v2 directory")
    return os.stat(path).st_ino


def check_environment() -> str | None:
    """Why tracing cannot start here, or None."""
    try:
        with open("/proc/self/status") as status:
            caps = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = 0

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    if not (has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))):
        return "must run as root (needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)"
    return None


class StopFlag:
    """Set by SIGINT/SIGTERM: the main loop finishes its batch and exits 0.
    A second signal ends the process at once, for when a blocked write
    keeps the loop from ever seeing the first."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum: int, _frame: object) -> None:
        self.requested = True
        signal.signal(signum, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    # First of all, so a signal during start-up is an orderly stop too.
    stop = StopFlag()
    if sys.stdout is None:
        print(f"{PROG}: standard output is closed", file=sys.stderr)
        return 1
    try:
        return _main(argv, stop)
    except ImportError as exc:
        # libbpf.so.1 itself missing: nothing can run, say so plainly.
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`tcpconnect | head`): that is a normal end.
        _discard_stdout()
        return 0
    except OSError as exc:
        _discard_stdout()
        print(f"{PROG}: cannot write output: {exc.strerror}", file=sys.stderr)
        return 1


def _discard_stdout() -> None:
    """Points stdout at /dev/null so the interpreter's final flush of what
    could not be written fails silently instead of printing a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _main(argv: list[str] | None, stop: StopFlag) -> int:
    args = parse_args(argv)
    if args.dns:
        try:
            import cachetools  # noqa: F401
            import dnslib  # noqa: F401
        except ImportError:
            print(f"{PROG}: -d/--dns needs the Python packages dnslib and cachetools "
                  "(pip install dnslib cachetools)", file=sys.stderr)
            return 1
    problem = check_environment()
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 1

    from .libbpf import BpfError
    from .session import Session

    try:
        return Session(args, sys.stdout, sys.stderr).run(stop)
    except BpfError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


def run_console_script() -> NoReturn:
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Ctrl-C before main() could take over SIGINT.
        sys.exit(0)
