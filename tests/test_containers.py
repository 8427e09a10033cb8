"""Container filters against the real kernel: --cgroupmap, --mntnsmap, --cgroup.

Maps are made and filled with bpftool, the way the README tells users to;
cgroups are real cgroup v2 children and mount namespaces come from unshare.
"""

from __future__ import annotations

import errno
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from conftest import (
    BUILD,
    Workload,
    cgroup2_root,
    cgroup_id_of,
    free_port,
    refused_connect,
    row,
    run_tool,
    sh,
    wait_for,
)

from tcpconnect.libbpf import BPF_FS_MAGIC, filesystem_magic
from tcpconnect.output import COUNT_HEADER

ME = os.getpid()
BPFFS = Path("/sys/fs/bpf")
LOOPBACK = "127.0.0.1"


def mntns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def in_own_mount_ns(workload: type[Workload]) -> Workload:
    w = workload(mount_ns=True)
    wait_for(lambda: mntns_of(w.pid) != mntns_of(ME), what="the workload's mount namespace")
    return w


def refused(w: Workload, port: int) -> None:
    assert w.connect(4, LOOPBACK, port)[1] == errno.ECONNREFUSED


def row_of(w: Workload, port: int) -> str:
    return row(w.pid, w.comm, 4, LOOPBACK, LOOPBACK, port)


def distinct_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def hex_bytes(value: int, size: int) -> list[str]:
    """bpftool's `hex` argument form of an integer in the kernel's byte order."""
    return value.to_bytes(size, sys.byteorder).hex(" ").split()


@dataclass
class PinnedMap:
    path: Path
    value_size: int

    def add(self, key: int) -> None:
        sh("bpftool", "map", "update", "pinned", str(self.path), "key", "hex", *hex_bytes(key, 8),
           "value", "hex", *hex_bytes(1, self.value_size))

    def remove(self, key: int) -> None:
        sh("bpftool", "map", "delete", "pinned", str(self.path), "key", "hex", *hex_bytes(key, 8))


class Pins:
    """Unique paths on the BPF filesystem for one test; removed afterwards."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def path(self) -> Path:
        path = BPFFS / f"tcpconnect_test_{uuid.uuid4().hex[:12]}"
        self.paths.append(path)
        return path

    def map(self, key: int = 8, value: int = 8, kind: str = "hash") -> PinnedMap:
        path = self.path()
        sh("bpftool", "map", "create", str(path), "type", kind, "key", str(key),
           "value", str(value), "entries", "128", "name", "tcpconnect_test")
        return PinnedMap(path, value)

    def program(self) -> Path:
        # Any program will do: the failure tests' cgroup program, which
        # every kernel loads (ours has fexit programs some refuse). `prog
        # load` pins it and attaches nothing.
        path = self.path()
        sh("bpftool", "prog", "load", str(BUILD / "deny_connect.bpf.o"), str(path))
        return path

    def directory(self) -> Path:
        path = self.path()
        path.mkdir()
        return path

    def remove_all(self) -> None:
        for path in self.paths:
            if path.is_dir():
                path.rmdir()
            elif path.exists():
                path.unlink()


@pytest.fixture(scope="module")
def bpffs() -> Path:
    # A fresh machine has no BPF filesystem mounted; pinning needs one.
    if filesystem_magic(str(BPFFS)) != BPF_FS_MAGIC:
        sh("mount", "-t", "bpf", "bpf", str(BPFFS))
    return BPFFS


@pytest.fixture
def pins(bpffs: Path) -> Iterator[Pins]:
    made = Pins()
    yield made
    made.remove_all()


@dataclass
class Cgroup:
    path: Path

    @property
    def id(self) -> int:
        return self.path.stat().st_ino

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))


@pytest.fixture
def child_cgroup() -> Iterator[Cgroup]:
    path = cgroup2_root() / f"tcpconnect-test-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield Cgroup(path)
    finally:
        # A cgroup with members cannot be removed: hand any back to the parent.
        for pid in (path / "cgroup.procs").read_text().split():
            (path.parent / "cgroup.procs").write_text(pid)
        path.rmdir()


def assert_only_inside_reported(trace, inside: Workload, outside: Workload,
                                *filter_args: str) -> None:
    """Traces with the filter; of connects from inside, outside and this
    process, only the one from inside may show."""
    port = free_port()
    t = trace(*filter_args, "-P", str(port))
    refused(inside, port)
    refused(outside, port)
    refused_connect(4, port)
    t.stop()
    assert t.rows == [row_of(inside, port)]
    assert (t.returncode, t.stderr) == (0, "")


def test_cgroupmap_reports_only_cgroups_in_the_map(trace, workload, pins, child_cgroup):
    cgroups = pins.map(value=8)
    cgroups.add(child_cgroup.id)
    inside, outside = workload(), workload()
    child_cgroup.add(inside.pid)
    assert_only_inside_reported(trace, inside, outside, "--cgroupmap", str(cgroups.path))


def test_mntnsmap_reports_only_mount_namespaces_in_the_map(trace, workload, pins):
    namespaces = pins.map(value=4)
    inside, outside = in_own_mount_ns(workload), workload()
    namespaces.add(mntns_of(inside.pid))
    assert_only_inside_reported(trace, inside, outside, "--mntnsmap", str(namespaces.path))


def test_both_maps_given_both_must_match(trace, workload, pins, child_cgroup):
    cgroups, namespaces = pins.map(value=8), pins.map(value=4)
    both = in_own_mount_ns(workload)
    cgroup_only = workload()
    mntns_only = in_own_mount_ns(workload)
    child_cgroup.add(both.pid)
    child_cgroup.add(cgroup_only.pid)
    cgroups.add(child_cgroup.id)
    namespaces.add(mntns_of(both.pid))
    namespaces.add(mntns_of(mntns_only.pid))
    port = free_port()
    t = trace("--cgroupmap", str(cgroups.path), "--mntnsmap", str(namespaces.path),
              "-P", str(port))
    for w in (both, cgroup_only, mntns_only):
        refused(w, port)
    t.stop()
    assert t.rows == [row_of(both, port)]


@pytest.mark.parametrize("option", ["--cgroupmap", "--mntnsmap"])
def test_map_updated_while_tracing_takes_effect_at_once(trace, workload, pins, child_cgroup,
                                                        option):
    if option == "--cgroupmap":
        filter_map, w = pins.map(value=8), workload()
        child_cgroup.add(w.pid)
        key = child_cgroup.id
    else:
        filter_map, w = pins.map(value=4), in_own_mount_ns(workload)
        key = mntns_of(w.pid)
    before, listed, removed = distinct_ports(3)
    t = trace(option, str(filter_map.path), "-P", f"{before},{listed},{removed}")
    refused(w, before)
    filter_map.add(key)
    refused(w, listed)
    filter_map.remove(key)
    refused(w, removed)
    t.stop()
    assert t.rows == [row_of(w, listed)]


def test_cgroup_path_reports_only_that_cgroup(trace, workload, child_cgroup):
    inside, outside = workload(), workload()
    child_cgroup.add(inside.pid)
    assert_only_inside_reported(trace, inside, outside, "--cgroup", str(child_cgroup.path))


def test_json_carries_cgroup_and_mount_namespace_ids(trace, workload, child_cgroup):
    contained = in_own_mount_ns(workload)
    child_cgroup.add(contained.pid)
    port = free_port()
    t = trace("-j", "-P", str(port))
    refused(contained, port)
    refused_connect(4, port)
    t.stop()
    ids = [(event["pid"], event["cgroup_id"], event["mntns_id"]) for event in t.json_rows()]
    assert ids == [(contained.pid, child_cgroup.id, mntns_of(contained.pid)),
                   (ME, cgroup_id_of(ME), mntns_of(ME))]
    assert child_cgroup.id != cgroup_id_of(ME) and mntns_of(contained.pid) != mntns_of(ME)


def expect_refusal(args: list[str], message: str, code: int) -> None:
    result = run_tool(*args)
    assert (result.returncode, result.stdout, result.stderr) == (
        code, "", f"tcpconnect: {message}\n")


@pytest.mark.host_only
@pytest.mark.parametrize("option", ["--cgroupmap", "--mntnsmap"])
def test_missing_or_foreign_pin_paths_are_refused(pins, tmp_path, option):
    missing = pins.path()
    # A usage error, as --cgroup's missing directory is.
    expect_refusal([option, str(missing)], f"error: {option} {missing}: No such file or directory",
                   2)
    regular = tmp_path / "not-a-pin"
    regular.write_text("")
    expect_refusal([option, str(regular)],
                   f"{option}: {regular} is not on a BPF filesystem (mount -t bpf bpf /sys/fs/bpf)",
                   1)
    directory = pins.directory()
    expect_refusal([option, str(directory)],
                   f"{option}: {directory} is a directory, not a pinned map", 1)
    program = pins.program()
    expect_refusal([option, str(program)],
                   f"{option}: {program} is a pinned BPF program, not a map", 1)


# Option errors, found by user space before any program loads: the same on
# every kernel (host_only, as the two tests around).
@pytest.mark.host_only
@pytest.mark.parametrize("option,kind,key,value,found", [
    ("--cgroupmap", "array", 4, 8, "array map, 4-byte keys, 8-byte values"),
    ("--cgroupmap", "lru_hash", 8, 8, "lru_hash map, 8-byte keys, 8-byte values"),
    ("--cgroupmap", "hash", 4, 8, "hash map, 4-byte keys, 8-byte values"),
    ("--cgroupmap", "hash", 8, 4, "hash map, 8-byte keys, 4-byte values"),
    ("--mntnsmap", "array", 4, 4, "array map, 4-byte keys, 4-byte values"),
    ("--mntnsmap", "hash", 4, 4, "hash map, 4-byte keys, 4-byte values"),
    ("--mntnsmap", "hash", 8, 8, "hash map, 8-byte keys, 8-byte values"),
])
def test_map_of_wrong_type_or_layout_is_refused(pins, option, kind, key, value, found):
    wrong = pins.map(key=key, value=value, kind=kind)
    wanted = "8-byte values" if option == "--cgroupmap" else "4-byte values"
    expect_refusal([option, str(wrong.path)],
                   f"{option}: {wrong.path} must be a hash map with 8-byte keys and {wanted} "
                   f"(found: {found})", 1)


@pytest.mark.host_only
def test_cgroup_path_that_is_not_a_cgroup_v2_directory_is_refused(tmp_path, child_cgroup):
    missing = tmp_path / "missing"
    expect_refusal(["--cgroup", str(missing)],
                   f"error: --cgroup {missing}: No such file or directory", 2)
    expect_refusal(["--cgroup", str(tmp_path)],
                   f"error: --cgroup {tmp_path}: not a cgroup v2 directory", 2)
    member_file = child_cgroup.path / "cgroup.procs"
    expect_refusal(["--cgroup", str(member_file)],
                   f"error: --cgroup {member_file}: not a cgroup v2 directory", 2)


def test_count_mode_counts_only_the_filtered_cgroup(trace, workload, child_cgroup):
    inside, outside = workload(), workload()
    child_cgroup.add(inside.pid)
    port = free_port()
    t = trace("-c", "--cgroup", str(child_cgroup.path), "-P", str(port))
    for _ in range(2):
        refused(inside, port)
    for _ in range(3):
        refused(outside, port)
    refused_connect(4, port)
    t.stop()
    assert t.stdout == "\n".join(["", COUNT_HEADER, "%-25s %-25s %-20s %-10d" % (
        LOOPBACK, LOOPBACK, port, 2)]) + "\n"
