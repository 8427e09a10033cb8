"""Attribution against real container runtimes, Debian 12's own: podman
(runc, the cgroupfs manager a host without systemd gets), docker (a private
dockerd, cgroupfs driver) and containerd (a private instance driven by ctr,
with the cgroup paths and labels a kubelet gives). Each runs a root made from
Debian's archive with mmdebstrap (no registry) and connects to a closed
loopback port; the row must carry the id the runtime gave the container.

The root is built once (mmdebstrap, ~20 s) and cached in build/. Every
daemon, image, container, pod and cgroup a test made is removed after it."""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml
from conftest import ROOT, comm_of, free_port, refused_connect
from debian_root import base_tar
from seccomp_filter import ARCHES
from test_kernel import SECCOMP_REFUSAL

pytestmark = pytest.mark.host_only

IMAGE = "localhost/tcpconnect-test-base:12"
# What `podman pod create` builds for a pod's infra container (podman 4.3.1).
PAUSE_IMAGE = "localhost/podman-pause:4.3.1-0"
# deploy/daemonset.yaml's Localhost seccomp profile.
SECCOMP_PROFILE = ROOT / "deploy" / "seccomp-tcpconnect.json"
# podman 4.3 on these hosts: runc (crun refuses hybrid cgroup hierarchies),
# the cgroupfs manager (no systemd), and rlimits root may not raise here.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""


def connects_refused(port: int) -> list[str]:
    """A container's command: one refused connect, then it waits to be
    stopped. It must outlive the row: a cgroup that is gone when the tool
    first looks its id up is attributed to nothing (by design, see
    attribution.py), and runtimes remove a container's cgroup as it exits."""
    return ["/usr/bin/bash", "-c",
            f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; exec sleep 120"]


def traced_row(t, run: list[str], stop: Callable[[], list[str]]) -> dict:
    """Starts a container with `run`, waits for its connect's row, then
    stops it with the command `stop()` gives."""
    container = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
    try:
        # Loss records (with a "type") may come first: not the row.
        record: dict = {"type": None}
        while "type" in record and (line := t.next_line(timeout=60)):
            record = json.loads(line)
    finally:
        subprocess.run(stop(), capture_output=True, timeout=120)
        _, err = container.communicate(timeout=120)
    assert "type" not in record, err
    return record


def wait_for_socket(path: Path, daemon: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.is_socket():
        assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)


def stop_daemon(daemon: subprocess.Popen, state: Path) -> None:
    """Stops a daemon and removes its state, mounts it left included."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
    with open("/proc/self/mounts") as mounts:
        left = [line.split()[1] for line in mounts if line.split()[1].startswith(str(state))]
    for mount_point in reversed(left):
        subprocess.run(["umount", "-l", mount_point], capture_output=True)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> Iterator[list[str]]:
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    os.environ["CONTAINERS_CONF"] = str(conf)
    subprocess.run(["podman", "import", "-q", str(base_tar()), IMAGE], check=True,
                   capture_output=True, timeout=120)
    try:
        yield ["podman"]
    finally:
        subprocess.run(["podman", "rmi", "-f", IMAGE, PAUSE_IMAGE], capture_output=True,
                       timeout=120)
        # Where podman puts its monitors (conmon), then the parent itself.
        remove_cgroup_tree("/libpod_parent/conmon")
        del os.environ["CONTAINERS_CONF"]


def connect_from_container(t, podman: list[str], port: int, tmp_path: Path,
                           *options: str) -> tuple[dict, str]:
    """The row of a container's refused connect to 127.0.0.1:port, and the
    container's id as podman gave it. `options` default to the host's
    network."""
    cidfile = tmp_path / f"cid-{uuid.uuid4().hex}"
    row = traced_row(t, [*podman, "run", "--rm", "--cidfile", str(cidfile), "--name",
                         cidfile.name, *(options or ("--network", "host")), IMAGE,
                         *connects_refused(port)],
                     lambda: [*podman, "rm", "-f", "-t", "0", cidfile.read_text().strip()])
    return row, cidfile.read_text().strip()


def test_a_podman_container_is_attributed_to_its_id(trace, podman, tmp_path):
    port = free_port()
    t = trace("-j", "-P", str(port))
    row, container = connect_from_container(t, podman, port, tmp_path)
    t.stop()
    assert (row["container_id"], row["cgroup"]) == (container, f"/libpod_parent/libpod-{container}")
    # The name podman keeps in containers-storage's list (--name cid-...).
    assert row["container_name"].startswith("cid-")
    assert (row["dport"], row["pod_uid"], row["unit"]) == (port, None, None)
    assert (t.json_rows(), t.returncode, t.stderr) == ([], 0, "")


def test_a_podman_pods_container_is_not_taken_for_its_pod(trace, podman, tmp_path):
    # With its infra container (podman builds its pause image locally, from
    # catatonit): only then are the pod's containers in the pod's cgroup. They
    # share its network namespace, where 127.0.0.1:port is closed too.
    pod = subprocess.run([*podman, "pod", "create",
                          f"--name=tcpconnect-test-{uuid.uuid4().hex[:8]}"],
                         capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    try:
        port = free_port()
        t = trace("-j", "-P", str(port))
        row, container = connect_from_container(t, podman, port, tmp_path, "--pod", pod)
        t.stop()
    finally:
        subprocess.run([*podman, "pod", "rm", "-f", pod], capture_output=True, timeout=120)
        remove_cgroup_tree(f"/libpod_parent/{pod}")
    assert row["cgroup"] == f"/libpod_parent/{pod}/libpod-{container}"
    assert row["container_id"] == container != pod
    assert row["container_name"].startswith("cid-")
    assert (t.json_rows(), t.returncode, t.stderr) == ([], 0, "")


@pytest.fixture(scope="module")
def docker(tmp_path_factory) -> Iterator[tuple[list[str], Path]]:
    """A private dockerd: its own data root, exec root and socket; no
    iptables, no bridge (containers use the host's network)."""
    state = Path(tmp_path_factory.mktemp("docker"))
    sock = state / "docker.sock"
    log = state / "dockerd.log"
    daemon = subprocess.Popen(
        ["/usr/sbin/dockerd", "--data-root", str(state / "data"), "--exec-root",
         str(state / "exec"), "-H", f"unix://{sock}", "--pidfile", str(state / "pid"),
         "--exec-opt", "native.cgroupdriver=cgroupfs", "--iptables=false", "--ip-masq=false",
         "--bridge=none"], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        wait_for_socket(sock, daemon, log)
        cli = ["/usr/bin/docker", "-H", f"unix://{sock}"]
        subprocess.run([*cli, "import", str(base_tar()), "tcpconnect-test-base:12"],
                       check=True, capture_output=True, timeout=120)
        yield cli, state / "data"
    finally:
        stop_daemon(daemon, state)
        remove_cgroup_tree("/docker")


def test_a_docker_container_is_attributed_to_its_id_and_name(trace, docker, tmp_path):
    # The tool reads names from /var/lib/docker: there, in its own mount
    # namespace, is this private dockerd's data root.
    cli, data_root = docker
    port = free_port()
    cidfile = tmp_path / "cid"
    name = f"tcpconnect-test-{uuid.uuid4().hex[:8]}"
    t = trace("-j", "-P", str(port), prefix=(
        "unshare", "-m", "sh", "-c", "mount -t tmpfs none /var/lib && mkdir /var/lib/docker && "
        f"mount --bind {data_root} /var/lib/docker && exec \"$@\"", "sh"))
    row = traced_row(t, [*cli, "run", "--rm", "--network", "host", "--cidfile", str(cidfile),
                         "--name", name, "tcpconnect-test-base:12", *connects_refused(port)],
                     lambda: [*cli, "rm", "-f", cidfile.read_text().strip()])
    t.stop()
    container = cidfile.read_text().strip()
    assert (row["container_id"], row["cgroup"]) == (container, f"/docker/{container}")
    assert row["container_name"] == name
    assert (t.json_rows(), t.returncode, t.stderr) == ([], 0, "")


@pytest.fixture(scope="module")
def containerd(tmp_path_factory) -> Iterator[tuple[list[str], Path]]:
    """A private containerd (its own root, state and socket, no CRI plugin)
    and ctr for it; and a root file system for `ctr run --rootfs`."""
    state = Path(tmp_path_factory.mktemp("containerd"))
    sock = state / "containerd.sock"
    log = state / "containerd.log"
    (state / "config.toml").write_text(
        f'version = 2\nroot = "{state}/root"\nstate = "{state}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n')
    rootfs = state / "rootfs"
    rootfs.mkdir()
    subprocess.run(["tar", "-xf", str(base_tar()), "-C", str(rootfs)], check=True,
                   capture_output=True, timeout=120)
    daemon = subprocess.Popen(["containerd", "--config", str(state / "config.toml")],
                              stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        wait_for_socket(sock, daemon, log)
        yield ["ctr", "-a", str(sock)], rootfs
    finally:
        stop_daemon(daemon, state)


@pytest.mark.parametrize("profile,caps,answers", [
    (SECCOMP_PROFILE, ("CAP_BPF", "CAP_PERFMON"), (errno.EINVAL, errno.EFAULT, errno.EPERM)),
    (None, ("CAP_BPF", "CAP_PERFMON"), (errno.EINVAL, errno.EFAULT, 0)),
    (None, ("CAP_BPF",), (errno.EINVAL, errno.EPERM, 0)),
], ids=["daemonsets-profile", "runtime-default", "runtime-default-without-perfmon"])
def test_containerd_lets_bpf_and_perf_events_through(containerd, profile, caps, answers):
    # containerd reads a Localhost profile as the OCI runtime spec's seccomp
    # object (ctr's --seccomp-profile goes the same way as the CRI plugin's).
    # In a container with CAP_BPF and CAP_PERFMON but not CAP_SYS_ADMIN,
    # bpf() and perf_event_open() reach the kernel, which refuses their empty
    # arguments (EINVAL, EFAULT), under the DaemonSet's profile and under
    # containerd's own default alike. chroot(), which ctr's capabilities
    # allow, tells the filters apart: the DaemonSet's profile refuses it
    # (made for capabilities without CAP_SYS_CHROOT), so it is in force;
    # containerd's default is in force too, refusing perf_event_open()
    # without CAP_PERFMON.
    ctr, rootfs = containerd
    _, numbers = ARCHES[platform.machine()]
    # Each argument a call, "number,arg,...": its errno (0 for success).
    probe = ("for my $call (@ARGV) { $! = 0; "
             "my ($n, @a) = map { /^-?\\d+$/ ? $_ + 0 : $_ } split /,/, $call; "
             "syscall($n, @a); print $! + 0, \"\\n\" }")
    seccomp = ["--seccomp", *(["--seccomp-profile", str(profile)] if profile else [])]
    done = subprocess.run(
        [*ctr, "run", "--rm", *seccomp, *(f"--cap-add={c}" for c in caps), "--rootfs",
         str(rootfs), f"tcpconnect-test-{uuid.uuid4().hex[:8]}", "/usr/bin/perl", "-e", probe,
         f"{numbers['bpf']},0,0,0", f"{numbers['perf_event_open']},0,0,-1,-1,0",
         f"{numbers['chroot']},/"],
        capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.split() == [str(a) for a in answers]


def remove_cgroup_tree(relative: str) -> None:
    """rmdir of a cgroup path and its parents, deepest first, in every
    hierarchy runc made it in (v1 controllers and cgroup2); a directory
    something else still uses stays."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        parts = Path(relative.strip("/")).parts
        for depth in range(len(parts), 0, -1):
            try:
                (hierarchy / Path(*parts[:depth])).rmdir()
            except OSError:
                pass
    try:
        Path("/sys/fs/cgroup", relative.strip("/")).rmdir()
    except OSError:
        pass


@pytest.mark.parametrize("layout", ["cgroupfs", "systemd"])
def test_a_kubernetes_container_under_containerd_is_attributed_to_its_pod(
        trace, containerd, layout):
    # The cgroup paths a kubelet gives containerd with either driver, and the
    # kubelet's pod log tree (in a private mount namespace): container id,
    # pod uid, pod and namespace.
    ctr, rootfs = containerd
    pod_uid = str(uuid.uuid4())
    container = uuid.uuid4().hex + uuid.uuid4().hex
    if layout == "cgroupfs":
        cgroup = f"/kubepods/besteffort/pod{pod_uid}/{container}"
    else:
        pod_slice = f"kubepods-besteffort-pod{pod_uid.replace('-', '_')}.slice"
        cgroup = (f"/kubepods.slice/kubepods-besteffort.slice/{pod_slice}/"
                  f"cri-containerd-{container}.scope")
    port = free_port()
    # The kubelet's log tree: the pod's directory, and the container's link
    # <pod>_<namespace>_<container name>-<id>.log.
    pod_dir = f"/var/log/pods/shop_web-5d8c7b9f4-abcde_{pod_uid}"
    link = f"/var/log/containers/web-5d8c7b9f4-abcde_shop_app-{container}.log"
    t = trace("-j", "-P", str(port), prefix=(
        "unshare", "-m", "sh", "-c", f"mount -t tmpfs none /var/log && mkdir -p {pod_dir} "
        f"/var/log/containers && ln -s {pod_dir}/app/0.log {link} && exec \"$@\"", "sh"))
    try:
        row = traced_row(t, [*ctr, "run", "--rm", "--net-host", "--cgroup", cgroup,
                             "--label", "io.kubernetes.pod.name=web-5d8c7b9f4-abcde",
                             "--label", "io.kubernetes.pod.namespace=shop",
                             "--rootfs", str(rootfs), container, *connects_refused(port)],
                         lambda: [*ctr, "task", "kill", "-s", "SIGKILL", container])
        t.stop()
    finally:
        remove_cgroup_tree(cgroup)
    assert {k: row[k] for k in ("cgroup", "container_id", "container_name", "pod_uid", "pod",
                                "namespace")} == {
        "cgroup": cgroup, "container_id": container, "container_name": "app", "pod_uid": pod_uid,
        "pod": "web-5d8c7b9f4-abcde", "namespace": "shop"}
    assert (t.json_rows(), t.returncode, t.stderr) == ([], 0, "")


# --- The image, run as the DaemonSet says ---------------------------------------------

DEPLOY_IMAGE = "localhost/tcpconnect-test:image"
DEBIAN_TAGS = ("docker.io/library/debian:12", "docker.io/library/debian:12-slim")
# Root on these hosts lacks CAP_SYS_RESOURCE in its bounding set, so no runtime
# can grant it here; kernels from 5.11 on do not need it (maps are not charged
# to RLIMIT_MEMLOCK).
NOT_GRANTABLE_HERE = {"SYS_RESOURCE"}


@pytest.fixture(scope="module")
def image(podman) -> Iterator[list[str]]:
    """deploy/Containerfile built with podman (~100 s), FROM the local
    Debian root tagged as debian:12 and debian:12-slim (no registry)."""
    for tag in DEBIAN_TAGS:
        subprocess.run([*podman, "tag", IMAGE, tag], check=True, capture_output=True)
    before = set(podman_images(podman))
    try:
        built = subprocess.run(
            [*podman, "build", "--pull=never", "--network", "host", "-f",
             str(ROOT / "deploy" / "Containerfile"), "-t", DEPLOY_IMAGE, str(ROOT)],
            capture_output=True, text=True, timeout=900)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        yield podman
    finally:
        # The tags, the image and the build stage's image: what the build made.
        subprocess.run([*podman, "rmi", "-f", DEPLOY_IMAGE, *DEBIAN_TAGS], capture_output=True,
                       timeout=120)
        made = [image for image in podman_images(podman) if image not in before]
        if made:
            subprocess.run([*podman, "rmi", "-f", *made], capture_output=True, timeout=120)


def podman_images(podman: list[str]) -> list[str]:
    return subprocess.run([*podman, "images", "--all", "--quiet", "--no-trunc"],
                          capture_output=True, text=True, check=True).stdout.split()


def as_the_daemonset_says(tmp_path: Path, seccomp: str | None) -> list[str]:
    """podman run options for deploy/daemonset.yaml's pod: the host's PID
    namespace, its own network namespace, every capability dropped but the
    manifest's, its host paths mounted read-only where it says, and the
    runtime's default seccomp filter unless one is named."""
    daemonset = yaml.safe_load((ROOT / "deploy" / "daemonset.yaml").read_text())
    pod = daemonset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["hostPID"] and not pod["hostNetwork"]
    caps = [c for c in container["securityContext"]["capabilities"]["add"]
            if c not in NOT_GRANTABLE_HERE]
    hosts = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    options = ["--pid", "host", "--network", "none", "--cap-drop", "ALL",
               "--cap-add", ",".join(caps)]
    for mount in container["volumeMounts"]:
        source = Path(hosts[mount["name"]])
        if not source.exists():  # the kubelet's /var/log/pods and /var/log/containers
            source = tmp_path / mount["name"]
            source.mkdir()
        options += ["-v", f"{source}:{mount['mountPath']}" + (":ro" if mount["readOnly"] else "")]
    if seccomp:
        options += ["--security-opt", f"seccomp={seccomp}"]
    return options


def test_the_runtimes_default_seccomp_filter_is_named_as_the_cause(image, tmp_path):
    # podman's default filter (containers-common's, also CRI-O's) allows bpf()
    # only with CAP_SYS_ADMIN, which the DaemonSet does not grant.
    done = subprocess.run([*image, "run", "--rm", *as_the_daemonset_says(tmp_path, None),
                           DEPLOY_IMAGE, "-j"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (1, ""), done
    assert done.stderr == SECCOMP_REFUSAL.format("EPERM")


def test_the_image_traces_the_host_as_the_daemonset_runs_it(image, tmp_path):
    # With the seccomp profile the manifest names (deploy/seccomp-tcpconnect.json,
    # which podman reads as CRI-O would) and otherwise its exact settings and
    # arguments, a connect this test makes on the host is a row with the
    # host's PID, and nothing is refused: no warning.
    daemonset = yaml.safe_load((ROOT / "deploy" / "daemonset.yaml").read_text())
    [container] = daemonset["spec"]["template"]["spec"]["containers"]
    port = free_port()
    name = f"tcpconnect-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [*image, "run", "--rm", "--name", name,
         *as_the_daemonset_says(tmp_path, str(SECCOMP_PROFILE)),
         DEPLOY_IMAGE, *container["args"], "-P", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner == "Tracing connect ... Hit Ctrl-C to end\n", banner
        refused_connect(4, port)
        row = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        pid = subprocess.run([*image, "inspect", "--format", "{{.State.Pid}}", name],
                             capture_output=True, text=True, check=True).stdout.strip()
        status = Path(f"/proc/{pid}/status").read_text()
    finally:
        subprocess.run([*image, "stop", "-t", "10", name], capture_output=True, timeout=120)
        out, err = proc.communicate(timeout=120)
    assert (row["pid"], row["comm"], row["daddr"], row["dport"]) == (
        os.getpid(), comm_of(os.getpid()), "127.0.0.1", port)
    # The profile is a filter in force (mode 2), not the absence of one.
    assert re.search(r"^Seccomp:\s+2$", status, re.M), status
    # SIGTERM from the runtime: an orderly stop, nothing more on stdout.
    assert (proc.returncode, out, err) == (0, "", "")
