"""What the kernel side must do for a run, decided in one place.

plan_load() is a pure function of the options (TracerConfig) and what the
machine offers (Environment): which programs of tcpconnect.bpf.o to load and
attach, every .rodata flag, the size of every map, and which rings are
read. The loader (tracer.py) carries the plan out and re-derives nothing;
the relations between modes live here and in the C code's use of the flags,
not in either's guesses about the other.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import TYPE_CHECKING, NamedTuple

from .address_filters import trie_key

if TYPE_CHECKING:
    from .address_filters import Prefix

# Wake the reader early only once a quarter of the ring is queued; below it
# the reader's poll timeout picks records up. A wakeup from the traced task
# costs it far more than the wakeup itself (the reader may be scheduled onto
# its CPU), so it is kept for bursts the timeout alone could not absorb: a
# quarter of a 1 MiB ring holds 10 ms of ~250,000 connects/s.
WAKEUP_FRACTION = 4
# The DNS ring keeps its fixed size: answers arrive far more slowly.
DNS_RING_BYTES = 1 << 20
# The events ring when it carries only executables' paths (the exe label
# of counts without rows): about 1,300 paths, each sent once per
# executable and read at least once a second.
EXE_RING_BYTES = 1 << 20
# Pinned filter maps use bcc's layouts: (key size, value size).
CGROUP_MAP_LAYOUT = (8, 8)
MNTNS_MAP_LAYOUT = (8, 4)
# Distinct (source, destination, port) keys one count table holds. Entries
# are allocated on demand, so the size costs nothing until it is used.
COUNT_CAPACITY = 65536
COUNT_TABLES = ("counts_0", "counts_1")
# Attempts waiting at once for their local port (-L) or outcome (--outcome);
# allocated on demand too.
PENDING_CAPACITY = 65536
# Slots attempts wait in before the table, where the kernel has
# compare-and-exchange (attempt_state.bpf.h): preallocated, 184 bytes each
# (736 KiB), so made only when attempts park. A power of two; a socket whose
# slot is taken waits in the table.
SLOT_COUNT = 4096
# The last ICMP error or RST received for each local port number
# (answers.bpf.h): an array, one slot per port, preallocated (48 bytes a slot,
# 3 MiB), so it is made full size only when its program runs.
ANSWER_CAPACITY = 65536
# Fields of count_key the kernel can fill, each chosen before load (its
# count_<name> flag); -c keys on the addresses and the port.
COUNT_FIELDS = ("saddr", "daddr", "dport", "uid", "comm", "cgroup", "exe")
ADDRESS_COUNT_FIELDS = frozenset(("saddr", "daddr", "dport"))
# The port numbers -P and --exclude-port choose from.
ALL_PORTS = range(65536)
# The value of every entry of a set-like map (comm_filter, the tries).
PRESENT = b"\x01"
TASK_COMM_LEN = 16
# connect() from entry to return: attempts that fail before SYN_SENT. Classic
# tracepoints, one program for kernels with and without BTF of their own.
CONNECT_CALL_PROGRAMS = ("handle_connect_enter", "handle_connect_exit")


def events_ring_bytes(cpus: int | None = None) -> int:
    """Size of the events ring: 4 MiB (about 40,000 events, a quarter second
    of one CPU connecting flat out) per CPU that could be connecting at
    once, so the reader may be kept off a CPU for as long however many of
    them are busy. A power of two, as the kernel requires; capped because
    the kernel pins the whole ring and the reader maps it."""
    cpus = cpus or os.cpu_count() or 1
    return min(4 << 20 << (cpus - 1).bit_length(), 32 << 20)


class TracerConfig(NamedTuple):
    pid: int | None = None
    uid: int | None = None
    family: int | None = None
    ports: tuple[int, ...] = ()
    count: bool = False
    count_capacity: int = COUNT_CAPACITY
    count_fields: frozenset[str] = ADDRESS_COUNT_FIELDS
    # With count: send every connect as an event too (--metrics with rows).
    events_with_counts: bool = False
    lport: bool = False
    pending_capacity: int = PENDING_CAPACITY
    # 0: attempts wait in the table alone.
    slot_count: int = SLOT_COUNT
    # The events ring's size, a power of two; None: events_ring_bytes().
    ring_bytes: int | None = None
    dns: bool = False
    cgroup_id: int | None = None
    netns: int | None = None  # network namespace inode
    cgroup_map: str | None = None
    mntns_map: str | None = None
    # BTF of the running kernel for CO-RE, for kernels that do not expose
    # their own (libbpf's btf_custom_path).
    btf_path: str | None = None
    # Event fields filled only when asked for: each costs the traced connect
    # tens of nanoseconds in the kernel. Unfilled ones are 0.
    timestamps: bool = False
    task_ids: bool = False  # cgroup_id, mntns_id and netns
    lineage: bool = False  # ppid, pcomm, ns_pid and ns_tid
    exe: bool = False  # the executable's key, and its path once (exe_path.bpf.h)
    # --outcome: each attempt reported (or counted) when it leaves SYN_SENT;
    # failed_only (--failed) drops those that succeed in the kernel.
    outcome: bool = False
    failed_only: bool = False
    # --exclude-port: taken out of ports (or of every port).
    exclude_ports: tuple[int, ...] = ()
    # --comm: task names, each at most TASK_COMM_LEN - 1 bytes.
    comms: tuple[bytes, ...] = ()
    # --daddr, --exclude-daddr, --saddr, --exclude-saddr.
    daddr_include: tuple[Prefix, ...] = ()
    daddr_exclude: tuple[Prefix, ...] = ()
    saddr_include: tuple[Prefix, ...] = ()
    saddr_exclude: tuple[Prefix, ...] = ()


class Environment(NamedTuple):
    """What the machine offers, each found by probing it (tracer.py)."""

    # The kernel's own BTF: tp_btf programs; without it raw_tp ones, relocated
    # against --btf.
    own_btf: bool
    # The connect() syscall tracepoints can be attached (tracefs, perf events).
    connect_tracepoints: bool
    # dns_dynptr.bpf.o loaded: -d reads whole packets, not the linear area.
    whole_packet_dns: bool
    cpus: int
    # fexit programs load on PORT_HOOK_FUNCTIONS (probed only when
    # port_hook_wanted): -L's attempts are seen once their port is chosen.
    port_hook: bool = False
    # The verifier accepts BPF's compare-and-exchange (Linux 5.12): attempts
    # wait in slots first.
    cmpxchg: bool = False


# Where the kernel chooses a connecting socket's local port.
PORT_HOOK_FUNCTIONS = ("inet_hash_connect", "inet6_hash_connect")
PORT_HOOK_PROGRAMS = ("handle_port_chosen", "handle_port_chosen6")


def port_hook_wanted(config: TracerConfig) -> bool:
    """Rows with -L, whose attempts otherwise wait in the kernel until their
    SYN leaves. --outcome waits for the attempt's end anyway, and reads the
    port then."""
    return config.lport and events_wanted(config) and not config.outcome


def attempts_wait(config: TracerConfig, port_hook: bool) -> bool:
    """Attempts wait in the kernel: for their local port (-L rows without
    the port hook) or for their end (--outcome)."""
    return bool(config.lport and events_wanted(config) and not port_hook) or config.outcome


def events_wanted(config: TracerConfig) -> bool:
    """Attempts are sent to user space one by one (rows), not only counted."""
    return not config.count or config.events_with_counts


class FilterMap(NamedTuple):
    """A user's pinned map that replaces one of the object's before load."""

    option: str
    path: str
    map_name: str
    layout: tuple[int, int]


class LoadPlan(NamedTuple):
    # Programs of tcpconnect.bpf.o to load, in attach order; every other one
    # is not loaded.
    programs: tuple[str, ...]
    # .rodata: (name, ctypes type, value), set before load.
    rodata: tuple[tuple[str, type, int], ...]
    # -P: ports whose bit is set in .rodata's port_bitmap.
    ports: tuple[int, ...]
    max_entries: tuple[tuple[str, int], ...]
    filter_maps: tuple[FilterMap, ...]
    # Entries (keys; every value is PRESENT) to put into maps after load and
    # before attach: the tries and the names of --comm.
    map_keys: tuple[tuple[str, tuple[bytes, ...]], ...]
    # Rings user space reads.
    events_ring: bool
    dns_ring: bool
    # Attempts wait (for a local port or an outcome): in `pending`, and
    # first in this many `slots` if not 0.
    parks: bool
    slots: int


def plan_load(config: TracerConfig, env: Environment) -> LoadPlan:
    events = events_wanted(config)
    # The executable's key, and its path sent on the events ring: for rows,
    # or for counts keyed on it (then the ring is read for the paths alone).
    exe = config.exe or (config.count and "exe" in config.count_fields)
    events_ring = events or exe
    # Counting never keys on the local port, so it never waits for one.
    lport = config.lport and events
    suffix = "" if env.own_btf else "_raw"
    port_hook = env.port_hook and port_hook_wanted(config)
    parks = attempts_wait(config, port_hook)
    slots = config.slot_count if parks and env.cmpxchg else 0
    # The hooks that park and resolve attempts, in the build that looks in
    # the slots first where there are slots (attempt_state.bpf.h).
    parking = ("_slots" if slots else "") + suffix
    # handle_exe_path first: it must run before handle_set_state (see there).
    programs = ["handle_exe_path" + suffix] if exe else []
    programs += PORT_HOOK_PROGRAMS if port_hook else ["handle_set_state" + parking]
    # With --outcome the port is read when the attempt ends instead, and a SYN
    # dropped on this host is noted on its attempt (its CAUSE).
    # The ICMP error or RST that ended a failed attempt is noted for its row
    # (counts have no place for it).
    answers = config.outcome and events
    if config.outcome:
        programs.append("handle_drop" + parking)
        if answers:
            programs.append("handle_receive_answer" + suffix)
    elif lport and not port_hook:
        programs += ["handle_xmit" + parking, "handle_drop" + parking]
    # A parked attempt whose end the kernel skipped is reported when its
    # socket is destroyed.
    if parks:
        programs.append("handle_destroy" + parking)
    if config.dns and not env.whole_packet_dns:
        programs.append("handle_receive_linear" + suffix)
    if env.connect_tracepoints:
        programs += CONNECT_CALL_PROGRAMS
    ring_bytes = ((config.ring_bytes or events_ring_bytes(env.cpus)) if events
                  else EXE_RING_BYTES if events_ring else mmap.PAGESIZE)
    ports = config.ports
    if config.exclude_ports:
        excluded = frozenset(config.exclude_ports)
        ports = tuple(port for port in (ports or ALL_PORTS) if port not in excluded)
    map_keys = (
        ("comm_filter", tuple(name.ljust(TASK_COMM_LEN, b"\0") for name in config.comms)),
        *((name, tuple(trie_key(prefix) for prefix in prefixes)) for name, prefixes in (
            ("daddr_include", config.daddr_include), ("daddr_exclude", config.daddr_exclude),
            ("saddr_include", config.saddr_include), ("saddr_exclude", config.saddr_exclude))),
    )
    flag = ctypes.c_bool
    rodata: list[tuple[str, type, int]] = [
        ("filter_pid", ctypes.c_uint32, config.pid or 0),
        ("filter_by_uid", flag, config.uid is not None),
        ("filter_uid", ctypes.c_uint32, config.uid or 0),
        ("filter_family", ctypes.c_uint16, config.family or 0),
        ("filter_by_port", flag, bool(config.ports or config.exclude_ports)),
        ("filter_by_comm", flag, bool(config.comms)),
        *(("filter_" + name, flag, bool(keys)) for name, keys in map_keys[1:]),
        ("filter_cgroup_id", ctypes.c_uint64, config.cgroup_id or 0),
        ("filter_netns", ctypes.c_uint32, config.netns or 0),
        ("filter_by_cgroup_map", flag, config.cgroup_map is not None),
        ("filter_by_mntns_map", flag, config.mntns_map is not None),
        ("count_mode", flag, config.count),
        ("want_events", flag, events),
        *(("count_" + name, flag, name in config.count_fields) for name in COUNT_FIELDS),
        ("want_lport", flag, lport),
        # One threshold for both rings of this object: a quarter of the
        # smaller one read still wakes the reader before either fills.
        ("wakeup_bytes", ctypes.c_uint64,
         min(ring_bytes if events_ring else DNS_RING_BYTES, DNS_RING_BYTES) // WAKEUP_FRACTION),
        ("want_ts", flag, config.timestamps),
        ("want_ids", flag, config.task_ids),
        ("want_lineage", flag, config.lineage),
        ("want_exe", flag, exe),
        ("want_outcome", flag, config.outcome),
        ("failed_only", flag, config.failed_only),
        ("want_answers", flag, answers),
        ("follow_connect_calls", flag, env.connect_tracepoints),
        ("slot_count", ctypes.c_uint32, slots or 1),
    ]
    max_entries = [
        *((table, config.count_capacity) for table in COUNT_TABLES),
        ("pending", config.pending_capacity),
        ("slots", slots or 1),
        ("answers", ANSWER_CAPACITY if answers else 1),
        # Exactly as large as what goes in (an empty one still needs a slot).
        *((name, max(len(keys), 1)) for name, keys in map_keys),
        # A ring nobody reads would still pin its memory in the kernel.
        ("events", ring_bytes),
        ("dns_events", DNS_RING_BYTES if config.dns else mmap.PAGESIZE),
    ]
    filter_maps = tuple(
        FilterMap(option, path, map_name, layout)
        for option, path, map_name, layout in (
            ("--cgroupmap", config.cgroup_map, "cgroup_map", CGROUP_MAP_LAYOUT),
            ("--mntnsmap", config.mntns_map, "mntns_map", MNTNS_MAP_LAYOUT),
        ) if path is not None)
    return LoadPlan(
        programs=tuple(programs),
        rodata=tuple(rodata),
        ports=tuple(ports),
        max_entries=tuple(max_entries),
        filter_maps=filter_maps,
        map_keys=tuple((name, keys) for name, keys in map_keys if keys),
        events_ring=events_ring,
        dns_ring=config.dns,
        parks=parks,
        slots=slots,
    )
