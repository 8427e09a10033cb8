"""Attribution against the real kernel: --container, the JSON attribution
fields, netns and --netns; and the cgroup path parser on its own.

Cgroups are real cgroup v2 directories with the names docker, containerd,
CRI-O, podman, systemd and the kubelet give theirs, under one unique parent
per test; a workload process is moved into each and connects.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import free_port, refused_connect, wait_for
from hypothesis import given
from hypothesis import strategies as st

from tcpconnect.attribution import (
    Attribution,
    CgroupResolver,
    PathNames,
    cgroup2_mount,
    parse_cgroup_path,
)
from tcpconnect.output import attribution_json, container_text

LOOPBACK = "127.0.0.1"
ME = os.getpid()
# Fixed ids make the expected rows readable; the unique parent keeps runs apart.
ID = "4f8a" + "0123456789abcdef" * 3 + "cafe0123abcd"
UID = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
UNDERSCORED = UID.replace("-", "_")
NO_ATTRIBUTION = {"cgroup": None, "unit": None, "container_id": None, "container_name": None,
                  "pod_uid": None, "pod": None, "namespace": None}


# --- the parser ---------------------------------------------------------------

@pytest.mark.parametrize("path,names", [
    (f"/system.slice/docker-{ID}.scope", PathNames(f"docker-{ID}.scope", ID)),
    (f"/system.slice/containerd.service/cri-containerd-{ID}.scope",
     PathNames(f"cri-containerd-{ID}.scope", ID)),
    (f"/machine.slice/libpod-{ID}.scope", PathNames(f"libpod-{ID}.scope", ID)),
    (f"/machine.slice/libpod-{ID}.scope/container", PathNames(f"libpod-{ID}.scope", ID)),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice/"
     f"crio-{ID}.scope", PathNames(f"crio-{ID}.scope", ID, UID)),
    # CRI-O's monitor process is not the container.
    (f"/kubepods.slice/kubepods-pod{UNDERSCORED}.slice/crio-conmon-{ID}.scope",
     PathNames(f"crio-conmon-{ID}.scope", None, UID)),
    (f"/kubepods/burstable/pod{UID}/{ID}", PathNames(None, ID, UID)),
    (f"/kubepods/pod{UID}/{ID}", PathNames(None, ID, UID)),
    (f"/docker/{ID}", PathNames(None, ID)),
    # podman's cgroupfs manager; a pod's id is not its containers'.
    (f"/libpod_parent/libpod-{ID}", PathNames(None, ID)),
    (f"/libpod_parent/{'e' * 64}/libpod-{ID}", PathNames(None, ID)),
    (f"/libpod_parent/{'e' * 64}", PathNames()),
    (f"/libpod_parent/conmon", PathNames()),
    # Static pods have 32 hex digits for a uid.
    ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
     "0123456789abcdef0123456789abcdef.slice",
     PathNames(None, None, "0123456789abcdef0123456789abcdef")),
    ("/system.slice/ssh.service", PathNames("ssh.service")),
    ("/user.slice/user-1000.slice/session-4.scope", PathNames("session-4.scope")),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope",
     PathNames("app-x.scope")),
    ("/system.slice/ssh.service/sub", PathNames("ssh.service")),
    # kind: a node container holding a pod's container; the inner one wins.
    (f"/system.slice/docker-{'e' * 64}.scope/kubelet.slice/kubelet-kubepods.slice/"
     f"kubelet-kubepods-pod{UNDERSCORED}.slice/cri-containerd-{ID}.scope",
     PathNames(f"cri-containerd-{ID}.scope", ID, UID)),
    # Look-alikes that are not.
    (f"/{ID}", PathNames()),
    (f"/libpod-{ID}", PathNames()),
    (f"/system.slice/libpod-{ID}", PathNames()),
    (f"/pod{UID}/{ID}", PathNames()),
    (f"/system.slice/docker-{ID[:63]}.scope", PathNames(f"docker-{ID[:63]}.scope")),
    (f"/system.slice/docker-{ID.upper()}.scope", PathNames(f"docker-{ID.upper()}.scope")),
    ("/", PathNames()),
    ("", PathNames()),
])
@pytest.mark.host_only
def test_parse_cgroup_path(path, names):
    assert parse_cgroup_path(path) == names


# Path components mixing arbitrary text with pieces of the names parsed.
HOSTILE = st.lists(st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ["\x1b[2J", "\n", "\x00", "\u202e", "\udcff", "\\x1b", "/", ".scope", ".service",
     "docker-", "cri-containerd-", ID, "kubepods", "kubepods-pod", f"pod{UID}", UNDERSCORED,
     ".slice", '"']), max_size=8).map("".join)


@given(st.lists(HOSTILE, max_size=12))
@pytest.mark.host_only
def test_parser_and_formats_survive_any_path(parts):
    path = "/".join(parts)
    names = parse_cgroup_path(path)
    assert names.container_id is None or (len(names.container_id) == 64
                                          and names.container_id in path)
    assert names.pod_uid is None or "_" not in names.pod_uid
    a = Attribution(path, names.unit, names.container_id, names.pod_uid, path[:20], path[-20:])
    column = container_text(a)
    assert column.isprintable()
    assert not any(c in column for c in "\x1b\n\x00\u202e")
    fragment = attribution_json(a)
    assert fragment.isascii() and fragment.isprintable()
    fields = json.loads("{" + fragment[2:] + "}")
    assert fields["cgroup"] == path.encode("utf-8", "surrogateescape").decode(
        "utf-8", "backslashreplace")


@pytest.mark.host_only
def test_very_long_path_is_parsed_and_shown_whole():
    unit = "x" * 5000 + ".service"
    path = "/a" * 20000 + "/" + unit
    assert parse_cgroup_path(path) == PathNames(unit)
    assert container_text(Attribution(path, unit)) == unit


@pytest.mark.host_only
def test_cgroup2_mount_unescapes_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "41 31 0:38 /sub /run/my\\040cgroup rw,relatime shared:9 - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(str(info)) == ("/run/my cgroup", "/sub")
    info.write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    assert cgroup2_mount(str(info)) is None


# --- the resolver on the real cgroup2 hierarchy ----------------------------------

def test_resolver_by_handle_and_by_walk_agree(cgroups):
    leaf = cgroups.make(f"kubepods/burstable/pod{UID}/{ID}")
    resolver = CgroupResolver()
    expected = Attribution(cgroups.relative(leaf), None, ID, UID)
    assert resolver.lookup(leaf.stat().st_ino) == expected
    assert resolver.lookup(1) == Attribution("/")
    assert resolver.path(cgroups.root.stat().st_ino) == "/"
    assert resolver._by_walk(leaf.stat().st_ino) == str(leaf)
    gone = cgroups.make("gone")
    gone_id = gone.stat().st_ino
    gone.rmdir()
    assert resolver.lookup(gone_id) == Attribution()
    assert resolver._by_walk(gone_id) is None
    resolver.close()


def test_resolver_without_cap_dac_read_search_walks_the_tree(cgroups, tmp_path):
    # open_by_handle_at needs CAP_DAC_READ_SEARCH; without it the same answers
    # must come from walks, a cgroup made after a walk included.
    leaf = cgroups.make(f"system.slice/docker-{ID}.scope")
    later = leaf.parent / "later.service"
    script = tmp_path / "lookup.py"
    script.write_text(
        "import os\nfrom tcpconnect.attribution import CgroupResolver\n"
        f"r = CgroupResolver()\nprint(r.lookup({leaf.stat().st_ino}).cgroup)\n"
        f"os.mkdir({str(later)!r})\nprint(r.lookup(os.stat({str(later)!r}).st_ino).unit)\n"
        "print(r._find.__name__)\n")
    out = subprocess.run(["capsh", "--drop=cap_dac_read_search", "--", "-c",
                          f"{sys.executable} {script}"], capture_output=True, text=True,
                         check=True).stdout
    assert out.split("\n") == [cgroups.relative(leaf), "later.service", "_by_walk", ""]


# --- tracing --------------------------------------------------------------------

def container_row(pid: int, comm: str, column: str, port: int) -> str:
    return "%-7d %-12.12s %-16s %-2d %-16s %-16s %-6d " % (
        pid, comm, column, 4, LOOPBACK, LOOPBACK, port)


def attributed_connect(trace, w, port: int, prefix: tuple[str, ...] = ()):
    """One refused connect from w, traced as text with --container and as
    JSON at once; returns (text rows, JSON objects)."""
    text = trace("--container", "-P", str(port), prefix=prefix)
    js = trace("-j", "-P", str(port), prefix=prefix)
    assert w.connect(4, LOOPBACK, port)[1] == errno.ECONNREFUSED
    text.stop()
    js.stop()
    assert (text.returncode, text.stderr, js.returncode) == (0, "", 0)
    return text.rows, js.json_rows()


def attribution_of(record: dict) -> dict:
    return {key: record[key] for key in NO_ATTRIBUTION}


SHAPES = [
    # (cgroup below the test's parent, CONTAINER column, unit, container id, pod uid)
    (f"system.slice/docker-{ID}.scope", ID[:12], f"docker-{ID}.scope", ID, None),
    (f"system.slice/containerd.service/cri-containerd-{ID}.scope", ID[:12],
     f"cri-containerd-{ID}.scope", ID, None),
    (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice/"
     f"crio-{ID}.scope", ID[:12], f"crio-{ID}.scope", ID, UID),
    (f"machine.slice/libpod-{ID}.scope", ID[:12], f"libpod-{ID}.scope", ID, None),
    (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice/"
     f"cri-containerd-{ID}.scope", ID[:12], f"cri-containerd-{ID}.scope", ID, UID),
    (f"kubepods/burstable/pod{UID}/{ID}", ID[:12], None, ID, UID),
    (f"docker/{ID}", ID[:12], None, ID, None),
    ("system.slice/nginx.service", "nginx.service", "nginx.service", None, None),
    ("user.slice/user-0.slice/session-7.scope", "session-7.scope", "session-7.scope", None,
     None),
    ("plain", "-", None, None, None),
    ("evil\x1b[2J\u202e.service", "evil\\x1b[2J\\u202e.service", "evil\x1b[2J\u202e.service",
     None, None),
]


# The kernel's part, the cgroup id, is the same for every shape: the kernel
# matrix runs the first two, the host all of them.
@pytest.mark.parametrize("relative,column,unit,container_id,pod_uid", [
    pytest.param(*shape, id=shape[0].split("/")[-1][:24],
                 marks=pytest.mark.host_only if n >= 2 else ())
    for n, shape in enumerate(SHAPES)])
def test_connect_is_attributed_to_its_cgroup(trace, workload, cgroups, relative, column, unit,
                                             container_id, pod_uid):
    w = workload()
    leaf = cgroups.make(relative)
    cgroups.move(w.pid, leaf)
    port = free_port()
    rows, records = attributed_connect(trace, w, port)
    assert rows == [container_row(w.pid, w.comm, column, port)]
    [record] = records
    assert record["cgroup_id"] == leaf.stat().st_ino
    assert attribution_of(record) == {
        "cgroup": cgroups.relative(leaf), "unit": unit, "container_id": container_id,
        "container_name": None, "pod_uid": pod_uid, "pod": None, "namespace": None}


def fake_pod_logs(*directories: str) -> tuple[str, ...]:
    """A prefix that runs the tool in a private mount namespace whose
    /var/log/pods holds these directories, as the kubelet lays it out."""
    made = " && ".join(f"mkdir -p '/var/log/pods/{d}'" for d in directories)
    return ("unshare", "-m", "sh", "-c",
            f'mount -t tmpfs none /var/log && {made} && exec "$@"', "sh")


@pytest.mark.user_space
def test_pod_and_namespace_come_from_the_kubelet_log_tree(trace, workload, cgroups):
    w = workload()
    leaf = cgroups.make(f"kubepods.slice/kubepods-besteffort.slice/"
                        f"kubepods-besteffort-pod{UNDERSCORED}.slice/cri-containerd-{ID}.scope")
    cgroups.move(w.pid, leaf)
    port = free_port()
    other = "0" * 8 + UID[8:]
    rows, records = attributed_connect(trace, w, port, prefix=fake_pod_logs(
        f"kube-system_coredns-7db6d8ff4d-x2x9q_{other}", f"shop_web-5d8c7b9f4-abcde_{UID}",
        "not-a-pod-dir"))
    assert rows == [container_row(w.pid, w.comm, ID[:12], port)]
    assert [attribution_of(r) for r in records] == [{
        "cgroup": cgroups.relative(leaf), "unit": f"cri-containerd-{ID}.scope",
        "container_id": ID, "container_name": None, "pod_uid": UID, "pod": "web-5d8c7b9f4-abcde",
        "namespace": "shop"}]


def test_cgroup_removed_before_its_row_is_printed(trace, workload, cgroups):
    """The tracer is stopped (SIGSTOP) while connects are made and their
    cgroups removed, so their rows are formatted after the cgroups are gone.
    A cgroup the tracer never saw prints as unknown; one it saw earlier
    prints with its last known path."""
    seen_first, unseen = workload(), workload()
    seen_leaf = cgroups.make(f"system.slice/docker-{ID}.scope")
    unseen_leaf = cgroups.make("system.slice/gone.service")
    cgroups.move(seen_first.pid, seen_leaf)
    cgroups.move(unseen.pid, unseen_leaf)
    port = free_port()
    ids = {w.pid: leaf.stat().st_ino for w, leaf in ((seen_first, seen_leaf),
                                                     (unseen, unseen_leaf))}
    seen_path = cgroups.relative(seen_leaf)
    text = trace("--container", "-P", str(port))
    js = trace("-j", "-P", str(port))
    assert seen_first.connect(4, LOOPBACK, port)[1] == errno.ECONNREFUSED
    # Once a tracer has printed the first row, it has looked the cgroup up.
    first = [text.next_line(timeout=5), js.next_line(timeout=5)]
    for t in (text, js):
        t.proc.send_signal(signal.SIGSTOP)
    try:
        assert seen_first.connect(4, LOOPBACK, port)[1] == errno.ECONNREFUSED
        assert unseen.connect(4, LOOPBACK, port)[1] == errno.ECONNREFUSED
        cgroups.remove(seen_leaf)
        cgroups.remove(unseen_leaf)
    finally:
        for t in (text, js):
            t.proc.send_signal(signal.SIGCONT)
    text.stop()
    js.stop()
    row = container_row(seen_first.pid, seen_first.comm, ID[:12], port)
    assert [first[0], *text.rows] == [row, row, container_row(unseen.pid, unseen.comm, "-", port)]
    records = [json.loads(first[1]), *js.json_rows()]
    assert [(r["pid"], r["cgroup_id"]) for r in records] == [
        (seen_first.pid, ids[seen_first.pid]), (seen_first.pid, ids[seen_first.pid]),
        (unseen.pid, ids[unseen.pid])]
    seen = {**NO_ATTRIBUTION, "cgroup": seen_path, "unit": f"docker-{ID}.scope",
            "container_id": ID}
    assert [attribution_of(r) for r in records] == [seen, seen, NO_ATTRIBUTION]


# --- network namespaces -----------------------------------------------------------

def netns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def test_netns_field_and_filter(trace, workload, veth):
    """The same address and port in two namespaces: the netns field tells
    them apart and --netns keeps only one."""
    inside, outside = workload(netns=veth.netns), workload()
    wait_for(lambda: os.stat(f"/proc/{inside.pid}/ns/net").st_ino == netns_inode(veth.netns),
             what="the workload's network namespace")
    port = free_port()
    host_ns = os.stat("/proc/self/ns/net").st_ino
    js = trace("-j", "-P", str(port))
    only_inside = trace("--netns", str(netns_inode(veth.netns)), "-P", str(port))
    # /proc/PID/ns/net names the same namespace.
    only_inside_by_pid = trace("--netns", f"/proc/{inside.pid}/ns/net", "-P", str(port))
    only_host = trace("-j", "--netns", str(host_ns), "-P", str(port))
    for w in (inside, outside):
        assert w.connect(4, LOOPBACK, port)[1] == errno.ECONNREFUSED
    refused_connect(4, port)
    for t in (js, only_inside, only_inside_by_pid, only_host):
        t.stop()
        assert (t.returncode, t.stderr) == (0, "")
    assert [(r["pid"], r["daddr"], r["netns"]) for r in js.json_rows()] == [
        (inside.pid, LOOPBACK, netns_inode(veth.netns)),
        (outside.pid, LOOPBACK, host_ns), (ME, LOOPBACK, host_ns)]
    assert only_inside.rows == only_inside_by_pid.rows == [
        "%-7d %-12.12s %-2d %-16s %-16s %-6d " % (inside.pid, inside.comm, 4, LOOPBACK, LOOPBACK,
                                                  port)]
    assert [r["pid"] for r in only_host.json_rows()] == [outside.pid, ME]


def test_netns_filter_applies_to_counts(trace, workload, veth):
    # The namespace named by the file `ip netns add` made.
    inside = workload(netns=veth.netns)
    port = free_port()
    t = trace("-c", "--netns", f"/run/netns/{veth.netns}", "-P", str(port))
    assert inside.connect(4, LOOPBACK, port)[1] == errno.ECONNREFUSED
    refused_connect(4, port)
    refused_connect(4, port)
    t.stop()
    assert t.rows == ["%-25s %-25s %-20s %-10s" % ("LADDR", "RADDR", "RPORT", "CONNECTS"),
                      "%-25s %-25s %-20s %-10d" % (LOOPBACK, LOOPBACK, port, 1)]
