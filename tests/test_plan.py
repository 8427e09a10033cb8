"""The load plan: which programs, flags and map sizes each mode asks of the
kernel side (a pure function; the tracing tests check that what it asks
works), and that everything it names exists in the compiled object."""

from __future__ import annotations

import ctypes
import mmap

import pytest

from tcpconnect.libbpf import BpfObject
from tcpconnect.plan import (
    ANSWER_CAPACITY,
    CONNECT_CALL_PROGRAMS,
    DNS_RING_BYTES,
    EXE_RING_BYTES,
    PORT_HOOK_PROGRAMS,
    SLOT_COUNT,
    Environment,
    FilterMap,
    TracerConfig,
    attempts_wait,
    plan_load,
    port_hook_wanted,
)
from tcpconnect.tracer import OBJECT_PATH

pytestmark = pytest.mark.host_only

ENV = Environment(own_btf=True, connect_tracepoints=True, whole_packet_dns=False, cpus=2)
RING = 8 << 20


def flags(plan) -> dict[str, int]:
    return {name: value for name, _, value in plan.rodata}


def test_default_traces_connects_and_calls_into_the_events_ring():
    plan = plan_load(TracerConfig(), ENV)
    assert plan.programs == ("handle_set_state", *CONNECT_CALL_PROGRAMS)
    assert (plan.events_ring, plan.dns_ring, plan.parks) == (True, False, False)
    assert dict(plan.max_entries)["events"] == RING
    assert dict(plan.max_entries)["dns_events"] == mmap.PAGESIZE
    assert flags(plan)["wakeup_bytes"] == DNS_RING_BYTES // 4
    assert flags(plan)["follow_connect_calls"] is True


def test_count_mode_reads_no_ring_unless_rows_are_wanted_too():
    plan = plan_load(TracerConfig(count=True), ENV)
    assert not plan.events_ring and flags(plan)["want_events"] is False
    assert dict(plan.max_entries)["events"] == mmap.PAGESIZE
    with_rows = plan_load(TracerConfig(count=True, events_with_counts=True), ENV)
    assert with_rows.events_ring and flags(with_rows)["want_events"] is True


def test_counts_keyed_on_the_executable_read_the_ring_for_its_paths_alone():
    plan = plan_load(TracerConfig(count=True, count_fields=frozenset({"exe", "dport"})), ENV)
    assert plan.programs[:2] == ("handle_exe_path", "handle_set_state")
    assert (flags(plan)["want_exe"], flags(plan)["count_exe"]) == (True, True)
    # No rows: the ring carries only paths, and is sized for them.
    assert plan.events_ring and flags(plan)["want_events"] is False
    assert dict(plan.max_entries)["events"] == EXE_RING_BYTES
    assert flags(plan)["wakeup_bytes"] == DNS_RING_BYTES // 4
    # The key is the executable's only when asked.
    assert flags(plan_load(TracerConfig(count=True, exe=True), ENV))["count_exe"] is False


def test_parked_attempts_are_resolved_when_their_socket_is_destroyed():
    for config in (TracerConfig(lport=True), TracerConfig(outcome=True),
                   TracerConfig(outcome=True, count=True)):
        assert "handle_destroy" in plan_load(config, ENV).programs
    for config in (TracerConfig(), TracerConfig(lport=True, count=True)):
        assert "handle_destroy" not in plan_load(config, ENV).programs


def test_local_port_parks_until_the_syn_leaves_but_never_when_only_counting():
    plan = plan_load(TracerConfig(lport=True), ENV)
    assert plan.programs[:3] == ("handle_set_state", "handle_xmit", "handle_drop")
    assert plan.parks and flags(plan)["want_lport"] is True
    counting = plan_load(TracerConfig(lport=True, count=True), ENV)
    assert not counting.parks and flags(counting)["want_lport"] is False
    assert "handle_xmit" not in counting.programs


def test_attempts_wait_in_slots_only_where_they_wait_and_the_kernel_has_cmpxchg():
    cmpxchg = ENV._replace(cmpxchg=True)
    for config, parking in ((TracerConfig(lport=True), ("handle_set_state", "handle_xmit",
                                                         "handle_drop", "handle_destroy")),
                            (TracerConfig(outcome=True, count=True),
                             ("handle_set_state", "handle_drop", "handle_destroy"))):
        plan = plan_load(config, cmpxchg)
        assert plan.slots == SLOT_COUNT and flags(plan)["slot_count"] == SLOT_COUNT
        assert dict(plan.max_entries)["slots"] == SLOT_COUNT
        # Only the programs built with the slots hold the instruction.
        assert tuple(p for p in plan.programs if p.endswith("_slots")) == tuple(
            name + "_slots" for name in parking)
        # Elsewhere the table alone, in the programs without it.
        plan = plan_load(config, ENV)
        assert plan.parks and plan.slots == 0 and dict(plan.max_entries)["slots"] == 1
        assert set(parking) <= set(plan.programs)
        assert plan_load(config, cmpxchg._replace(own_btf=False)).programs[0] == (
            "handle_set_state_slots_raw")
    for config in (TracerConfig(), TracerConfig(lport=True, count=True)):
        plan = plan_load(config, cmpxchg)
        assert plan.slots == 0 and plan.programs[0] == "handle_set_state"
    assert plan_load(TracerConfig(lport=True), cmpxchg._replace(port_hook=True)).slots == 0
    assert plan_load(TracerConfig(outcome=True, slot_count=0), cmpxchg).slots == 0


def test_the_tracer_asks_about_cmpxchg_exactly_when_its_plan_parks():
    # Tracer._open probes compare-and-exchange only when attempts_wait says
    # so: the same answer plan_load's `parks` gives, for every mode.
    for config in (TracerConfig(), TracerConfig(lport=True), TracerConfig(outcome=True),
                   TracerConfig(lport=True, count=True), TracerConfig(outcome=True, count=True),
                   TracerConfig(lport=True, count=True, events_with_counts=True),
                   TracerConfig(lport=True, outcome=True)):
        for hook in (False, True):
            port_hook = hook and port_hook_wanted(config)
            assert attempts_wait(config, port_hook) == plan_load(
                config, ENV._replace(port_hook=hook)).parks, (config, hook)


def test_local_port_from_the_port_hook_parks_nothing():
    hook = ENV._replace(port_hook=True)
    plan = plan_load(TracerConfig(lport=True), hook)
    assert plan.programs == (*PORT_HOOK_PROGRAMS, *CONNECT_CALL_PROGRAMS)
    assert not plan.parks and flags(plan)["want_lport"] is True
    # With -j the path is still sent from the state change, before the row.
    assert plan_load(TracerConfig(lport=True, exe=True), hook).programs[:3] == (
        "handle_exe_path", *PORT_HOOK_PROGRAMS)
    # --outcome reads the port as the attempt ends; counts keep none.
    for config in (TracerConfig(lport=True, outcome=True), TracerConfig(lport=True, count=True)):
        assert not port_hook_wanted(config)
        assert not set(PORT_HOOK_PROGRAMS) & set(plan_load(config, hook).programs)
    assert port_hook_wanted(TracerConfig(lport=True, count=True, events_with_counts=True))


def test_outcome_parks_and_watches_drops_and_answers_not_transmits():
    plan = plan_load(TracerConfig(outcome=True, lport=True), ENV)
    assert plan.programs[:3] == ("handle_set_state", "handle_drop", "handle_receive_answer")
    assert "handle_xmit" not in plan.programs
    assert plan.parks and flags(plan)["want_outcome"] is True
    assert flags(plan)["want_answers"] is True
    assert dict(plan.max_entries)["answers"] == ANSWER_CAPACITY


def test_counted_outcomes_keep_no_answers():
    # A count table has no place for who answered: the program that notes
    # answers stays unloaded and its table at one entry.
    plan = plan_load(TracerConfig(outcome=True, count=True), ENV)
    assert "handle_receive_answer" not in plan.programs
    assert flags(plan)["want_answers"] is False
    assert dict(plan.max_entries)["answers"] == 1


def test_kernels_without_btf_get_the_raw_programs():
    env = ENV._replace(own_btf=False)
    plan = plan_load(TracerConfig(lport=True, dns=True), env)
    assert plan.programs == ("handle_set_state_raw", "handle_xmit_raw", "handle_drop_raw",
                             "handle_destroy_raw", "handle_receive_linear_raw",
                             *CONNECT_CALL_PROGRAMS)


def test_dns_linear_capture_only_where_whole_packets_cannot_be_read():
    assert "handle_receive_linear" in plan_load(TracerConfig(dns=True), ENV).programs
    whole = plan_load(TracerConfig(dns=True), ENV._replace(whole_packet_dns=True))
    assert "handle_receive_linear" not in whole.programs and whole.dns_ring


def test_without_connect_tracepoints_calls_are_not_followed():
    plan = plan_load(TracerConfig(), ENV._replace(connect_tracepoints=False))
    assert plan.programs == ("handle_set_state",)
    assert flags(plan)["follow_connect_calls"] is False


def test_ring_grows_with_cpus_and_filters_are_carried():
    plan = plan_load(TracerConfig(ports=(80, 443), uid=0, cgroup_map="/sys/fs/bpf/x"),
                     ENV._replace(cpus=64))
    assert dict(plan.max_entries)["events"] == 32 << 20
    assert plan.ports == (80, 443)
    assert flags(plan)["filter_by_port"] is True
    assert (flags(plan)["filter_by_uid"], flags(plan)["filter_uid"]) == (True, 0)
    assert plan.filter_maps == (FilterMap("--cgroupmap", "/sys/fs/bpf/x", "cgroup_map", (8, 8)),)
    assert flags(plan)["filter_by_cgroup_map"] is True


@pytest.mark.parametrize("config,env", [
    (TracerConfig(), ENV),
    (TracerConfig(lport=True, dns=True, outcome=True, count=True, events_with_counts=True),
     ENV._replace(own_btf=False)),
    (TracerConfig(lport=True, dns=True), ENV),
    (TracerConfig(lport=True), ENV._replace(cmpxchg=True)),
    (TracerConfig(outcome=True), ENV._replace(cmpxchg=True, own_btf=False)),
])
def test_everything_a_plan_names_is_in_the_object(config, env):
    plan = plan_load(config, env)
    obj = BpfObject(OBJECT_PATH)
    try:
        names = obj.program_names()
        assert set(plan.programs) <= set(names)
        rodata = obj.initial_variables(".rodata")
        for name, ctype, value in plan.rodata:
            rodata.set(name, ctype, value)
            assert rodata.get(name, ctype) == value
        for name, entries in plan.max_entries:
            obj.set_max_entries(name, entries)
        rodata.view("port_bitmap", ctypes.c_uint64 * 1024)
    finally:
        obj.close()
