"""Command line: options compatible with bcc's tcpconnect, checks, main loop."""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import pwd
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from .address_filters import Prefix

PROG = "tcpconnect"
PID_MAX_LIMIT = 4194304
UID_MAX = 2**32 - 2  # (uid_t)-1 means "no uid" to the kernel
NS_INUM_MAX = 2**32 - 1  # namespace inode numbers are unsigned int in the kernel
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
CGROUP2_SUPER_MAGIC = 0x63677270
TASK_COMM_LEN = 16

EXAMPLES = """privileges:
    CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load and attach; CAP_SYS_ADMIN to mount
    tracefs if it is not; CAP_SYS_RESOURCE before Linux 5.11; CAP_DAC_READ_SEARCH for the
    cgroup paths of -j, --container and --metrics. Once attached, only CAP_BPF (or
    CAP_SYS_ADMIN) and, for those options, CAP_DAC_READ_SEARCH are kept.

examples:
    tcpconnect                  # trace every active TCP connect
    tcpconnect -t               # with a timestamp column
    tcpconnect -T               # with a wall-clock time column (HH:MM:SS)
    tcpconnect --outcome        # print each attempt when it ends, with result and latency
    tcpconnect --failed         # only attempts that failed (refused, timeout, ...)
    tcpconnect -c --outcome     # count connects per destination and result
    tcpconnect -d               # with the DNS query that likely led to each connect
    tcpconnect -p 181           # only process 181
    tcpconnect -P 80            # only connects to port 80
    tcpconnect -P 80,81         # only connects to ports 80 and 81
    tcpconnect --exclude-port 53,443  # every port but these
    tcpconnect --daddr 10.0.0.0/8 --exclude-daddr 10.9.0.0/16  # 10/8 but not 10.9/16
    tcpconnect --comm curl,python3  # only tasks named curl or python3
    tcpconnect -4               # only IPv4
    tcpconnect -6               # only IPv6
    tcpconnect -L               # with the local port
    tcpconnect -U               # with a UID column
    tcpconnect -u 1000          # only UID 1000
    tcpconnect -c               # count connects per source and destination, print on exit
    tcpconnect -c -i 10         # the same, printed and reset every 10 seconds
    tcpconnect -j               # one JSON object per connect
    tcpconnect --container      # with the container id or systemd unit of each connect
    tcpconnect --netns /run/netns/blue  # only sockets of this network namespace
    tcpconnect --metrics 127.0.0.1:19150 -q  # Prometheus metrics on :19150/metrics, no rows
    tcpconnect --metrics [::1]:19150 --metrics-labels comm,uid  # with rows, counts by comm, uid
    tcpconnect --metrics 0.0.0.0:19150 --web-config web.yml  # over TLS, with a password
    tcpconnect --cgroupmap /sys/fs/bpf/test01     # only cgroups listed in this pinned map
    tcpconnect --mntnsmap /sys/fs/bpf/mnt_ns_set  # only mount namespaces in this pinned map
    tcpconnect --cgroup /sys/fs/cgroup/unified/app  # only this cgroup v2
    tcpconnect --btf /var/lib/btf/5.10.0-32-amd64.btf  # a kernel without its own BTF"""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage dump: errors must be easy to spot in logs.
        self.exit(2, f"{PROG}: error: {one_line(message)}\n")


INTERVAL_MAX = 2**31 - 1
# A value longer than this is cut short in error messages, which stay one line.
SHOWN_MAX = 24


def shown(text: str) -> str:
    """An option value as error messages quote it."""
    if len(text) > SHOWN_MAX:
        return repr(text[:SHOWN_MAX] + "...") + f" ({len(text)} characters)"
    return repr(text)


def bounded_number(text: str, high: int) -> int | None:
    """The value of a plain decimal number within 0..high, else None.
    isdigit() alone accepts "²" and other non-ASCII digits; the length check
    comes before int(), which is slow on (and refuses) very long strings."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(high)) or int(digits) > high:
        return None
    return int(digits)


def parse_pid(text: str) -> int:
    pid = bounded_number(text, PID_MAX_LIMIT)
    if not pid:
        raise argparse.ArgumentTypeError(
            f"invalid PID {shown(text)}: expected 1..{PID_MAX_LIMIT}")
    return pid


def parse_ports(text: str) -> tuple[int, ...]:
    # A dict keeps the first-seen order and makes each duplicate check O(1).
    ports: dict[int, None] = {}
    for item in text.split(","):
        port = bounded_number(item, 65535)
        if not port:
            where = f" in {shown(text)}" if "," in text else ""
            why = ("out of range 1..65535" if item.isascii() and item.isdigit()
                   else "expected a comma-separated list of 1..65535")
            raise argparse.ArgumentTypeError(f"invalid port {shown(item)}{where}: {why}")
        ports[port] = None
    return tuple(ports)


def parse_uid(text: str) -> int:
    if text.isascii() and text.isdigit():
        uid = bounded_number(text, UID_MAX)
        if uid is None:
            raise argparse.ArgumentTypeError(
                f"invalid UID {shown(text)}: expected 0..{UID_MAX}")
        return uid
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid UID {shown(text)}: not a number nor a known user") from None


# linux/nsfs.h: NS_GET_NSTYPE is _IO(0xb7, 0x3); it answers with a CLONE_NEW* flag.
NS_GET_NSTYPE = 0xB703
CLONE_NEWNET = 0x40000000


def parse_netns(text: str) -> int:
    """An inode number, or a file that is a network namespace (/run/netns/NAME,
    /proc/PID/ns/net): what `ip netns` and containers hand an SRE."""
    if text.isascii() and text.isdigit():
        inum = bounded_number(text, NS_INUM_MAX)
        if not inum:
            raise argparse.ArgumentTypeError(
                f"invalid network namespace {shown(text)}: expected its inode number "
                f"1..{NS_INUM_MAX} or a path such as /run/netns/NAME or /proc/PID/ns/net")
        if not netns_in_use(inum):
            raise argparse.ArgumentTypeError(
                f"no network namespace {inum}: no process is in it and /run/netns has "
                "none (name one held otherwise by its path)")
        return inum
    import fcntl

    # O_PATH opens nothing (a FIFO cannot block it, a device is not opened);
    # the checks and the ioctl then go through that one descriptor, so the
    # path cannot be swapped for another file between them.
    try:
        found = os.open(text, os.O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) else "not a path"
        raise argparse.ArgumentTypeError(f"{shown(text)}: {reason}") from None
    try:
        if os.fstat(found).st_dev != os.stat("/proc/self/ns/net").st_dev:
            raise argparse.ArgumentTypeError(f"{shown(text)}: not a network namespace")
        # An O_PATH descriptor takes no ioctl: reopen that same file.
        with open(f"/proc/self/fd/{found}", "rb", buffering=0) as namespace:
            if fcntl.ioctl(namespace.fileno(), NS_GET_NSTYPE) != CLONE_NEWNET:
                raise argparse.ArgumentTypeError(f"{shown(text)}: not a network namespace")
        return os.fstat(found).st_ino
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{shown(text)}: {exc.strerror}") from None
    finally:
        os.close(found)


def netns_in_use(inum: int) -> bool:
    """Whether a network namespace has this inode number: one some process
    is in, or one `ip netns add` pinned under /run/netns (with no process
    needed). A namespace only a descriptor or another bind mount holds is
    not found; its path is the way to name it."""
    for pattern in ("/proc/[0-9]*/ns/net", "/run/netns/*"):
        for path in glob.iglob(pattern):
            try:
                if os.stat(path).st_ino == inum:
                    return True
            except OSError:  # the process has exited since
                continue
    return False


def parse_interval(text: str) -> int:
    interval = bounded_number(text, INTERVAL_MAX)
    if not interval:
        raise argparse.ArgumentTypeError(
            f"invalid interval {shown(text)}: expected whole seconds 1..{INTERVAL_MAX}")
    return interval


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, an IPv6 address in brackets ([::1]:19150)."""
    host, sep, port_text = text.rpartition(":")
    port = bounded_number(port_text, 65535)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""
    if not sep or not host or not port:
        raise argparse.ArgumentTypeError(
            f"invalid address {shown(text)}: expected HOST:PORT (IPv6 as [ADDRESS]:PORT), "
            "PORT 1..65535")
    return host, port


def parse_labels(text: str) -> tuple[str, ...]:
    from .metrics import LABELS

    labels: dict[str, None] = {}
    for name in text.split(","):
        if name not in LABELS:
            raise argparse.ArgumentTypeError(
                f"invalid label {shown(name)} in {shown(text)}: expected a comma-separated "
                f"list of {', '.join(LABELS)}")
        labels[name] = None
    return tuple(labels)


SERIES_MAX = 10_000_000


def parse_max_series(text: str) -> int:
    series = bounded_number(text, SERIES_MAX)
    if not series:
        raise argparse.ArgumentTypeError(
            f"invalid series count {shown(text)}: expected 1..{SERIES_MAX}")
    return series


def parse_comms(text: str) -> tuple[bytes, ...]:
    """Task names as the kernel keeps them: bytes, cut at 15 (TASK_COMM_LEN)."""
    names: dict[bytes, None] = {}
    for item in text.split(","):
        name = os.fsencode(item)
        if not name or len(name) >= TASK_COMM_LEN or b"\0" in name:
            raise argparse.ArgumentTypeError(
                f"invalid task name {shown(item)} in {shown(text)}: expected 1 to "
                f"{TASK_COMM_LEN - 1} bytes (the kernel keeps no more of a name)")
        names[name] = None
    return tuple(names)


def parse_prefix_list(text: str) -> tuple[Prefix, ...]:
    """PREFIX[,PREFIX...], or @FILE for a list too long for the command line
    (argparse takes seconds over thousands of repeated options)."""
    from .address_filters import parse_prefixes, read_prefixes

    try:
        return read_prefixes(text[1:]) if text.startswith("@") else parse_prefixes(text)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text[1:]}: {exc.strerror}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Trace TCP active connections (connect()).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("-t", "--timestamp", action="store_true",
                        help="include a timestamp column (seconds since the first connect; "
                             "with --outcome, since tracing started)")
    parser.add_argument("-p", "--pid", type=parse_pid, help="trace this process ID only")
    parser.add_argument("-P", "--port", type=parse_ports, metavar="PORTS",
                        help="comma-separated list of destination ports to trace")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", action="store_true", help="trace IPv4 family only")
    family.add_argument("-6", "--ipv6", action="store_true", help="trace IPv6 family only")
    parser.add_argument("-L", "--lport", action="store_true", help="include a LPORT column")
    parser.add_argument("-U", "--print-uid", action="store_true", help="include a UID column")
    parser.add_argument("--ppid", action="store_true",
                        help="include a PPID column: the connecting process's parent")
    parser.add_argument("-X", "--exe", action="store_true",
                        help="include an EXE column: the path of the connecting process's "
                             "executable")
    parser.add_argument("--args", action="store_true",
                        help="with -j: add each process's command line (args)")
    parser.add_argument("-u", "--uid", type=parse_uid, help="trace this UID (or user) only")
    parser.add_argument("-c", "--count", action="store_true",
                        help="count connects per source IP and destination IP/port")
    parser.add_argument("-i", "--interval", type=parse_interval, metavar="SECONDS",
                        help="with -c: print and reset the counts every SECONDS")
    parser.add_argument("-d", "--dns", action="store_true",
                        help="include the most recent DNS query that resolved the destination")
    parser.add_argument("-j", "--json", action="store_true",
                        help="print one JSON object per connect instead of columns")
    parser.add_argument("-T", "--time", action="store_true",
                        help="include a wall-clock time column (HH:MM:SS, local time)")
    parser.add_argument("--outcome", action="store_true",
                        help="print each attempt when it ends, with RESULT (ok, refused, "
                             "timeout, unreachable, reset, no-route, denied, no-local-port, "
                             "aborted, pending or the errno name) and LAT(ms); with -c, "
                             "count per result")
    parser.add_argument("--failed", action="store_true",
                        help="only attempts that did not succeed (implies --outcome)")
    parser.add_argument("--selftest", action="store_true",
                        help="make one attempt of each kind in network namespaces of its "
                             "own, check each is reported with its result and cause, and "
                             "exit 0 only if all are")
    parser.add_argument("--container", action="store_true",
                        help="include a CONTAINER column: the container id, else the systemd "
                             "unit, of the connecting process")
    parser.add_argument("--netns", type=parse_netns, metavar="NETNS",
                        help="trace sockets of this network namespace only: its inode number, "
                             "or /run/netns/NAME, /proc/PID/ns/net")
    parser.add_argument("--cgroupmap", metavar="MAPPATH",
                        help="trace cgroups in this pinned BPF map only")
    parser.add_argument("--mntnsmap", metavar="MAPPATH",
                        help="trace mount namespaces in this pinned BPF map only")
    parser.add_argument("--cgroup", metavar="DIR",
                        help="trace this cgroup v2 directory only")
    # These add up when repeated: a long list may not fit one argument.
    parser.add_argument("--exclude-port", type=parse_ports, action="extend", metavar="PORTS",
                        help="do not trace these destination ports (comma-separated; with -P, "
                             "taken out of its list)")
    parser.add_argument("--comm", type=parse_comms, action="extend", metavar="NAMES",
                        help="trace these task names (COMM, at most 15 bytes each) only, "
                             "comma-separated")
    for option, role in (("--daddr", "only connects to"), ("--exclude-daddr", "no connects to"),
                         ("--saddr", "only connects from"),
                         ("--exclude-saddr", "no connects from")):
        parser.add_argument(option, type=parse_prefix_list, action="extend", metavar="PREFIXES",
                            help=f"trace {role} these addresses or prefixes (comma-separated, "
                                 "IPv4 or IPv6, e.g. 10.0.0.0/8,2001:db8::/32, or @FILE of "
                                 "them); exclusions win")
    parser.add_argument("--filter-counts", action="store_true",
                        help="at exit, say how many connects each kernel-side filter removed")
    parser.add_argument("--btf", metavar="FILE",
                        help="BTF of the running kernel, for kernels without "
                             "/sys/kernel/btf/vmlinux (e.g. from BTFHub)")
    parser.add_argument("--metrics", type=parse_listen, metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics, "
                             "counted in the kernel")
    parser.add_argument("--metrics-labels", type=parse_labels, metavar="LABELS",
                        help="labels of tcpconnect_connects_total, comma-separated, from "
                             "comm, saddr, daddr, dport, uid, container, unit, exe (the "
                             "executable's path), result (default: comm,daddr,dport)")
    parser.add_argument("--metrics-max-series", type=parse_max_series, metavar="N",
                        help="at most N label sets; connects past them count as 'other' "
                             "(default: 10000)")
    parser.add_argument("--web-config", metavar="FILE",
                        help="with --metrics: TLS and basic authentication from this file, in "
                             "the Prometheus exporter-toolkit's format (node_exporter's "
                             "--web.config.file)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="with --metrics: print no rows")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.selftest and vars(args) != {**vars(parser.parse_args([])), "selftest": True}:
        parser.error("--selftest takes no other option")
    if args.count and args.dns:
        parser.error("-d/--dns cannot be used with -c/--count")
    if args.count and args.json:
        parser.error("-j/--json cannot be used with -c/--count")
    if args.count and args.container:
        parser.error("--container cannot be used with -c/--count")
    if args.args and not args.json:
        parser.error("--args needs -j/--json")
    if args.count and args.exe:
        parser.error("-X/--exe cannot be used with -c/--count")
    if args.interval is not None and not args.count:
        parser.error("-i/--interval needs -c/--count")
    if args.count and args.time:
        parser.error("-T/--time cannot be used with -c/--count (the table has no rows "
                     "per connect)")
    args.outcome = args.outcome or args.failed
    check_metrics(parser, args)
    if args.pid is not None:
        check_process(parser, args.pid)
    for option, path in (("--cgroupmap", args.cgroupmap), ("--mntnsmap", args.mntnsmap)):
        if path == "":
            parser.error(f"{option}: empty path")
        if path is not None:
            check_exists(parser, option, path, pin=True)
    if args.cgroup is not None:
        args.cgroup_id = cgroup_id(parser, args.cgroup)
    else:
        args.cgroup_id = None
    if args.btf is not None:
        check_btf(parser, args.btf)
    return args


def check_metrics(parser: Parser, args: argparse.Namespace) -> None:
    if args.metrics is None:
        for option, value in (("--metrics-labels", args.metrics_labels),
                              ("--metrics-max-series", args.metrics_max_series),
                              ("--web-config", args.web_config),
                              ("-q/--quiet", args.quiet or None)):
            if value is not None:
                parser.error(f"{option} needs --metrics")
        return
    from .metrics import DEFAULT_LABELS, DEFAULT_MAX_SERIES

    if args.quiet:
        # Options that only shape rows would do nothing.
        for option, value in (("-c/--count", args.count), ("-d/--dns", args.dns),
                              ("-j/--json", args.json), ("-t/--timestamp", args.timestamp),
                              ("-L/--lport", args.lport), ("-U/--print-uid", args.print_uid),
                              ("-T/--time", args.time), ("--container", args.container),
                              ("-X/--exe", args.exe)):
            if value:
                parser.error(f"{option} cannot be used with -q/--quiet: there are no rows")
    if args.metrics_labels is None:
        args.metrics_labels = DEFAULT_LABELS
    if "result" in args.metrics_labels and not args.outcome:
        # Without it nothing waits for an attempt to end.
        parser.error("--metrics-labels result needs --outcome (or --failed)")
    if args.metrics_max_series is None:
        args.metrics_max_series = DEFAULT_MAX_SERIES
    if args.web_config is not None:
        from .web_config import WebConfigError, load_web_config

        try:
            args.web_config = load_web_config(args.web_config)
        except WebConfigError as exc:
            parser.error(f"--web-config {args.web_config}: {exc}")


def check_exists(parser: Parser, option: str, path: str, pin: bool = False) -> None:
    """A missing file is the same usage error whichever option names it
    (--cgroup's own check words it so too). A pin is missing, in a
    container, mostly because the host's BPF file system was not mounted."""
    if not os.path.exists(path):
        from .mounts import bpffs_not_mounted

        unmounted = bpffs_not_mounted(path) if pin else None
        hint = (f" ({unmounted} is no BPF file system: in a container, mount the host's "
                "/sys/fs/bpf)") if unmounted else ""
        parser.error(f"{option} {path}: No such file or directory{hint}")


def check_btf(parser: Parser, path: str) -> None:
    from .libbpf import BpfError, check_btf_file

    check_exists(parser, "--btf", path)
    if not os.path.isfile(path):
        parser.error(f"--btf {path}: not a regular file")
    if os.path.getsize(path) == 0:
        parser.error(f"--btf {path}: empty file")  # libbpf would say "Input/output error"
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
    if in_user_namespace():
        # Capabilities there count only for that namespace's own objects;
        # loading BPF would fail later with a misleading reason.
        return ("runs in a user namespace, where its capabilities do not reach BPF: "
                "it needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) in the host's initial "
                "user namespace")
    return None


def in_user_namespace() -> bool:
    """Only the initial user namespace maps every uid to itself."""
    try:
        with open("/proc/self/uid_map") as uid_map:
            return uid_map.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


class StopFlag:
    """Set by SIGINT/SIGTERM: the main loop finishes its batch and exits 0.
    A second signal ends the process at once, for when a blocked write
    keeps the loop from ever seeing the first."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)
        # The interpreter writes a byte here on every signal, which ends the
        # main loop's wait (a long one while idle) so the request is seen.
        self.wakeup_fd, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        # __main__ blocked them until now; one that came meanwhile arrives here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    def _request(self, signum: int, _frame: object) -> None:
        self.requested = True
        signal.signal(signum, signal.SIG_DFL)


ERROR_MAX = 300


def one_line(message: str) -> str:
    """An error as the user sees it: one line (whatever an option value or a
    path held, control characters included) and short, keeping the start and
    the reason at the end."""
    from .output import escape

    text = escape(message)
    if len(text) > ERROR_MAX:
        half = (ERROR_MAX - 5) // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return text


def report(message: str) -> None:
    print(f"{PROG}: {one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # First of all, so a signal during start-up is an orderly stop too.
    stop = StopFlag()
    if sys.stderr is None:
        # Where the errors and loss reports go: without it, events could be
        # lost unreported. Said on stdout, as a closed stdout is on stderr.
        if sys.stdout is not None:
            print(f"{PROG}: standard error is closed", file=sys.stdout)
        return 1
    if sys.stdout is None:
        report("standard output is closed")
        return 1
    try:
        return _main(argv, stop)
    except ImportError as exc:
        # libbpf.so.1 itself missing: nothing can run, say so plainly.
        report(str(exc))
        return 1
    except BrokenPipeError:
        # The reader went away (`tcpconnect | head`): that is a normal end.
        _discard_stdout()
        return 0
    except OSError as exc:
        _discard_stdout()
        report(f"cannot write output: {exc.strerror}")
        return 1


def _discard_stdout() -> None:
    """Points stdout at /dev/null so the interpreter's final flush of what
    could not be written fails silently instead of printing a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _main(argv: list[str] | None, stop: StopFlag) -> int:
    args = parse_args(argv)
    # Only looked for: dnslib itself is imported once tracing has started
    # (DnsCache.load_parser).
    if args.dns and not all(map(importlib.util.find_spec, ("cachetools", "dnslib"))):
        report("-d/--dns needs the Python packages dnslib and cachetools "
               "(pip install dnslib cachetools)")
        return 1
    if args.metrics:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            report("--metrics needs the Python package prometheus-client "
                   "(pip install prometheus-client)")
            return 1
    problem = check_environment()
    if problem:
        report(problem)
        return 1
    if args.selftest:
        from .selftest import run

        return run(lambda: stop.requested)

    from .libbpf import BpfError
    from .metrics import ExporterError
    from .session import Session

    try:
        return Session(args, sys.stdout, sys.stderr, least_privilege=True).run(stop)
    except (BpfError, ExporterError) as exc:
        report(str(exc))
        return 1
