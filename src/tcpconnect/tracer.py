"""Configures, loads and attaches the BPF object, and delivers what it reports."""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from collections.abc import Sequence
from typing import NamedTuple

from .events import (
    DNS_EVENT_FORMAT,
    EXE_RECORD_FORMAT,
    FILTERS,
    RECORD_FORMAT,
    CountKey,
    Event,
    ExeKey,
    SlotHead,
)
from .kernel import probe_kernel, wait_for_program_runs
from .libbpf import (
    BPF_MAP_TYPE_HASH,
    BpfError,
    BpfObject,
    GlobalVariables,
    Link,
    Map,
    MappedMemory,
    cmpxchg_refusal,
    fexit_refusal,
    possible_cpus,
)
from .plan import (
    CONNECT_CALL_PROGRAMS,
    COUNT_TABLES,
    DNS_RING_BYTES,
    PORT_HOOK_FUNCTIONS,
    PRESENT,
    WAKEUP_FRACTION,
    Environment,
    LoadPlan,
    TracerConfig,
    attempts_wait,
    plan_load,
    port_hook_wanted,
)
from .records import decode_event
from .ringbuf import LibatomicError, MappedRing, RingReader, RingWaiter
from .tracefs import connect_tracepoints


# os.path, not pathlib: importing pathlib adds ~4 ms to start-up.
OBJECT_PATH = os.path.join(os.path.dirname(__file__), "tcpconnect.bpf.o")
# -d's whole-packet capture, for kernels that allow it (see dns_dynptr.bpf.c).
DNS_DYNPTR_PATH = os.path.join(os.path.dirname(__file__), "dns_dynptr.bpf.o")


DNS_DYNPTR_PROGRAM = "handle_receive"
# One bit per destination port, for -P.
PORT_BITMAP = ctypes.c_uint64 * (65536 // 64)


class Batch(NamedTuple):
    """What one read of the rings returned, each list oldest first: events
    decoded as RECORD_FORMAT tuples (see events.py), DNS answers as
    DNS_EVENT_FORMAT tuples. The events ring is read before the answers
    ring, so every answer the kernel received before a connect of this
    batch is in this batch or an earlier one."""

    events: list[tuple]
    answers: list[tuple]
    # The paths of executables (EXE_RECORD_FORMAT tuples), each in the ring
    # before the first event that carries its key.
    exe_paths: Sequence[tuple] = ()


class LossCounters(NamedTuple):
    events: int
    dns_events: int
    count_failures: int
    pending_failures: int
    # connect() calls that could not be followed (their table was full).
    connect_call_failures: int = 0
    # Runs of the attached programs the kernel skipped (a program already
    # running on that CPU: counted by Linux 5.12+, 0 before).
    skipped_runs: int = 0
    # -d with the linear-area capture: answers whose payload, and packets
    # whose headers, lay in page fragments it cannot read.
    dns_unreadable: int = 0
    dns_uncheckable: int = 0
    # Paths of executables the events ring had no room for.
    exe_records: int = 0


def open_filter_map(path: str, option: str, layout: tuple[int, int]) -> Map:
    """Opens a user's pinned filter map and checks it has bcc's layout."""
    try:
        pinned = Map.from_pin(path)
    except BpfError as exc:
        raise BpfError(f"{option}: {exc}") from None
    try:
        info = pinned.info()
    except BpfError:
        pinned.close()
        raise
    key_size, value_size = layout
    if (info.type, info.key_size, info.value_size) != (BPF_MAP_TYPE_HASH, key_size, value_size):
        pinned.close()
        raise BpfError(
            f"{option}: {path} must be a hash map with {key_size}-byte keys and "
            f"{value_size}-byte values (found: {info.type_name} map, "
            f"{info.key_size}-byte keys, {info.value_size}-byte values)")
    return pinned


class Tracer:
    """The loaded, attached tracer. Use as a context manager: everything it
    attached or opened is released on exit, and nothing is pinned."""

    def __init__(self, config: TracerConfig) -> None:
        self.config = config
        self._obj: BpfObject | None = None
        self._dns_obj: BpfObject | None = None
        self._links: list[Link] = []
        self._pinned: list[Map] = []
        self._events: RingReader | None = None
        self._answers: RingReader | None = None
        self._waiter: RingWaiter | None = None
        self._bss: GlobalVariables | None = None
        self._dns_bss: GlobalVariables | None = None
        # The programs attached, in attach order: which variant of each hook
        # this kernel got.
        self.programs: list[str] = []
        # Index in COUNT_TABLES of the table the kernel is counting into.
        self._live_table = 0
        # Why connect() calls that fail before SYN_SENT are not seen, if
        # they are not (no tracefs, no syscall tracepoints).
        self.connect_calls_unseen: str | None = None
        # Why -d reads only packets' linear area, if it does: the kernel's
        # refusal of the whole-packet capture.
        self.dns_dynptr_refused: str | None = None
        # Why -L's attempts wait for their SYN (handle_xmit) rather than
        # being seen as their port is chosen (handle_port_chosen), if -L is
        # asked and they do.
        self.port_hook_refused: str | None = None
        self.plan: LoadPlan | None = None

    def __enter__(self) -> Tracer:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self) -> None:
        """Probe, plan, then the phases in order: open, configure, load,
        attach, and the rings mapped for reading."""
        for path in (OBJECT_PATH, DNS_DYNPTR_PATH):
            if not os.path.exists(path):
                raise BpfError(f"BPF object {path} is missing: build it with `make install`")
        config = self.config
        support = probe_kernel(config.btf_path)
        if config.dns and support.own_btf:
            self._dns_obj = self._load_dns_dynptr()
        self.connect_calls_unseen = connect_tracepoints()
        port_hook = port_hook_wanted(config)
        if port_hook:
            self.port_hook_refused = (fexit_refusal(PORT_HOOK_FUNCTIONS) if support.own_btf
                                      else "the kernel has no BTF of its own")
        port_hook = port_hook and self.port_hook_refused is None
        self.plan = plan = plan_load(config, Environment(
            own_btf=support.own_btf,
            connect_tracepoints=self.connect_calls_unseen is None,
            whole_packet_dns=self._dns_obj is not None,
            cpus=os.cpu_count() or 1,
            port_hook=port_hook,
            # Probed only where attempts will wait.
            cmpxchg=attempts_wait(config, port_hook) and cmpxchg_refusal() is None))
        self._obj = obj = BpfObject(OBJECT_PATH, config.btf_path)
        self._configure(obj, plan)
        obj.load()
        self._fill(obj, plan)
        self._attach(obj, plan)
        self._bss = obj.live_variables(".bss")
        if self._dns_obj is not None:
            self._dns_bss = self._dns_obj.live_variables(".bss")
        rings = []
        if plan.events_ring:
            self._events = self._reader(obj.map("events"), RECORD_FORMAT, EXE_RECORD_FORMAT)
            rings.append(self._events)
        if plan.dns_ring:
            self._answers = self._reader(obj.map("dns_events"), DNS_EVENT_FORMAT)
            rings.append(self._answers)
        self._waiter = RingWaiter(rings)

    def _configure(self, obj: BpfObject, plan: LoadPlan) -> None:
        for name in obj.program_names():
            obj.program(name).set_autoload(name in plan.programs)
        rodata = obj.initial_variables(".rodata")
        for name, ctype, value in plan.rodata:
            rodata.set(name, ctype, value)
        port_bitmap = rodata.view("port_bitmap", PORT_BITMAP)
        for port in plan.ports:
            port_bitmap[port // 64] |= 1 << port % 64
        for name, entries in plan.max_entries:
            obj.set_max_entries(name, entries)
        for filter_map in plan.filter_maps:
            pinned = open_filter_map(filter_map.path, filter_map.option, filter_map.layout)
            self._pinned.append(pinned)
            obj.reuse_map(filter_map.map_name, pinned)
        if self._dns_obj is not None:
            obj.reuse_map("dns_events", self._dns_obj.map("dns_events"))

    @staticmethod
    def _fill(obj: BpfObject, plan: LoadPlan) -> None:
        """The filters' maps, filled before any program runs."""
        present = ctypes.c_uint8(PRESENT[0])
        for name, keys in plan.map_keys:
            target = obj.map(name)
            for key in keys:
                target.update((ctypes.c_uint8 * len(key)).from_buffer_copy(key), present)

    def _attach(self, obj: BpfObject, plan: LoadPlan) -> None:
        for name in plan.programs:
            if name not in CONNECT_CALL_PROGRAMS:
                self._links.append(obj.program(name).attach())
                self.programs.append(name)
        if CONNECT_CALL_PROGRAMS[0] in plan.programs:
            self._attach_connect_calls(obj)
        if self._dns_obj is not None:
            self._links.append(self._dns_obj.program(DNS_DYNPTR_PROGRAM).attach())
            self.programs.append(DNS_DYNPTR_PROGRAM)

    @staticmethod
    def _reader(ring: Map, *records: struct.Struct) -> RingReader:
        memory = MappedRing(ring)
        try:
            return RingReader(memory, records)
        except LibatomicError as exc:
            memory.close()
            raise BpfError(str(exc)) from None

    def _attach_connect_calls(self, obj: BpfObject) -> None:
        """Both or neither: an entry program without the exit one would
        only fill its table."""
        links = []
        try:
            for name in CONNECT_CALL_PROGRAMS:
                links.append(obj.program(name).attach())
        except BpfError as exc:
            for link in links:
                link.close()
            self.connect_calls_unseen = str(exc)
            return
        self._links.extend(links)
        self.programs.extend(CONNECT_CALL_PROGRAMS)

    def _load_dns_dynptr(self) -> BpfObject | None:
        """The whole-packet DNS capture, or None where the kernel refuses it
        (tracing programs may not use skb dynptrs before Linux 6.12); the
        linear-area capture of the main object then stands in."""
        obj = BpfObject(DNS_DYNPTR_PATH, self.config.btf_path)
        try:
            obj.initial_variables(".rodata").set("wakeup_bytes", ctypes.c_uint64,
                                                 DNS_RING_BYTES // WAKEUP_FRACTION)
            obj.load()
        except BpfError as exc:
            obj.close()
            self.dns_dynptr_refused = str(exc)
            return None
        return obj

    def poll(self, timeout_ms: int) -> Batch:
        """What arrived, waiting up to timeout_ms for it."""
        assert self._waiter is not None
        self._waiter.wait(timeout_ms)
        return self._read()

    def sleep(self, timeout_ms: int) -> Batch:
        """poll() for a reader that found nothing for a while: the kernel
        side wakes it at the next record, so timeout_ms may be long (see
        RingWaiter.wait_asleep for the one case the timeout ends)."""
        assert self._waiter is not None
        self._waiter.wait_asleep(timeout_ms, self._set_asleep)
        return self._read()

    def wake_on(self, fd: int) -> None:
        """Ends poll() and sleep() at once while fd is readable."""
        assert self._waiter is not None
        self._waiter.wake_on(fd)

    def _set_asleep(self, asleep: bool) -> None:
        for bss in (self._bss, self._dns_bss):
            if bss is not None:
                bss.set("reader_asleep", ctypes.c_uint32, int(asleep))

    def _read(self) -> Batch:
        # Events first: see Batch.
        events, exe_paths = self._events.read() if self._events is not None else ([], [])
        return Batch(events, self._answers.read()[0] if self._answers is not None else [],
                     exe_paths)

    def take_exe_paths(self) -> list[tuple]:
        """The executables' paths queued on the events ring, for counts
        keyed on the executable when no rows are read (the ring then
        carries nothing else)."""
        return self._events.read()[1] if self._events is not None else []

    def finish(self) -> Batch:
        """Stops tracing and returns everything still in the kernel, including,
        without a local port, the attempts still waiting for one (a
        TCP_FASTOPEN_CONNECT socket never written, a SYN still retrying;
        with --outcome, every attempt not yet ended): they happened, so they
        are reported when tracing ends. Detaching first means nothing can be
        submitted after the last read."""
        self.stop()
        batch = self._read()
        if self._events is not None:
            batch.events.extend(self.take_pending())
        return batch

    def stop(self) -> None:
        """Detaches every program: from here nothing is submitted, counted
        or parked."""
        self._detach()

    def take_pending(self) -> list[tuple]:
        """Empties the table of parked attempts, which the kernel never
        reports; after stop() only, as attempts would go on arriving. With
        --outcome their outcome is still SYN_SENT."""
        assert self._obj is not None and self.plan is not None
        if self._links:
            raise RuntimeError("take_pending() while the programs are attached: stop() first")
        taken: list[tuple] = []
        if self.plan.slots:
            taken += self._take_slots()
        if self.plan.parks:
            pending = self._obj.map("pending")
            # A parked attempt (struct attempt) begins with its event; what
            # follows is the kernel side's own.
            attempt = (ctypes.c_uint8 * pending.info().value_size)()
            for key in pending.keys(ctypes.c_uint64):
                if pending.take(key, attempt):
                    taken.append(decode_event(Event.from_buffer(attempt)))
        return taken

    def _take_slots(self) -> list[tuple]:
        """The attempts still in their slots, read through one mapping of
        the array: with nothing attached, nothing frees a slot meanwhile."""
        assert self._obj is not None and self.plan is not None
        slots = self._obj.map("slots")
        # The array's elements are 8-byte aligned.
        size = -(-slots.info().value_size // 8) * 8
        memory = MappedMemory(slots.fd, self.plan.slots * size, "map slots")
        try:
            taken = []
            for address in range(memory.address, memory.address + memory.size, size):
                if SlotHead.from_address(address).owner:
                    event = Event.from_address(address + ctypes.sizeof(SlotHead))
                    taken.append(decode_event(event))
            return taken
        finally:
            memory.close()

    def losses(self) -> LossCounters:
        assert self._bss is not None
        read = self._bss.get
        lost_dns = int(read("lost_dns_events", ctypes.c_uint64))
        if self._dns_bss is not None:
            lost_dns += int(self._dns_bss.get("lost_dns_events", ctypes.c_uint64))
        return LossCounters(
            events=int(read("lost_events", ctypes.c_uint64)),
            dns_events=lost_dns,
            count_failures=int(read("count_failures", ctypes.c_uint64)),
            pending_failures=int(read("pending_failures", ctypes.c_uint64)),
            connect_call_failures=int(read("connect_call_failures", ctypes.c_uint64)),
            skipped_runs=self._skipped_runs(),
            dns_unreadable=int(read("dns_unreadable", ctypes.c_uint64)),
            dns_uncheckable=int(read("dns_uncheckable", ctypes.c_uint64)),
            exe_records=int(read("lost_exe_records", ctypes.c_uint64)),
        )

    def filtered(self) -> dict[str, int]:
        """Attempts each kernel-side filter removed so far, by filter
        (events.FILTERS), summed over the CPUs."""
        assert self._obj is not None
        counts = self._obj.map("filtered")
        per_cpu = (ctypes.c_uint64 * possible_cpus())()
        found = {}
        for index, name in enumerate(FILTERS, start=1):
            counts.lookup(ctypes.c_uint32(index), per_cpu)
            found[name] = sum(per_cpu)
        return found

    def forget_exe(self, dev: int, ino: int) -> None:
        """Makes the kernel send this executable's path again at its next
        connect (user space lost it)."""
        assert self._obj is not None
        self._obj.map("exe_seen").take(ExeKey(ino=ino, dev=dev), ctypes.c_uint8())

    def _skipped_runs(self) -> int:
        assert self._obj is not None
        skipped = 0
        for name in self.programs:
            obj = self._dns_obj if name == DNS_DYNPTR_PROGRAM else self._obj
            skipped += (obj.program(name).recursion_misses() or 0) if obj is not None else 0
        return skipped

    def take_counts(self) -> list[tuple[CountKey, int]]:
        """Reads and resets the in-kernel counters: the kernel
        switches to the other (empty) table, then the old one is drained."""
        assert self._obj is not None
        spare = 1 - self._live_table
        old = self._obj.map(COUNT_TABLES[self._live_table])
        # Replacing an entry of a map-of-maps waits for every BPF program
        # already running, so none is still adding to `old` after this.
        self._obj.map("counts").update(
            ctypes.c_uint32(0), ctypes.c_uint32(self._obj.map(COUNT_TABLES[spare]).fd))
        self._live_table = spare
        taken = []
        for key in old.keys(CountKey):
            value = ctypes.c_uint64()
            if old.take(key, value):
                taken.append((key, value.value))
        return taken

    def _detach(self) -> None:
        # Closing a syscall tracepoint's link waits for the kernel's RCU
        # grace periods (~70 ms each on this 6.18 host); the
        # waits overlap when the links close on threads of their own (ctypes
        # lets go of the GIL in the call). Every link is closed on return,
        # and every program run that had begun has ended.
        closing = [threading.Thread(target=link.close, name=f"detach {link.program}")
                   for link in self._links]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()
        if self._links:
            wait_for_program_runs()
        self._links.clear()

    def close(self) -> None:
        self._detach()
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        for ring in (self._events, self._answers):
            if ring is not None:
                ring.close()
        self._events = self._answers = None
        for bss in (self._bss, self._dns_bss):
            if bss is not None:
                bss.close()
        self._bss = self._dns_bss = None
        for obj in (self._obj, self._dns_obj):
            if obj is not None:
                obj.close()
        self._obj = self._dns_obj = None
        for pinned in self._pinned:
            pinned.close()
        self._pinned.clear()
