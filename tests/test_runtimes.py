"""Attribution against a real container runtime: Debian's podman (runc, the
cgroupfs manager a host without systemd gets), running an image made from
Debian's archive with mmdebstrap (no registry). Each container connects to a
closed loopback port of the host's network; its row must carry the id podman
gave it.

The base image is built once (mmdebstrap, ~20 s) and cached in build/; it is
imported for the session and removed after, with every container and pod the
tests made. See shared notes on runtimes in docs/containers.md."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from conftest import BUILD, free_port

pytestmark = pytest.mark.host_only

IMAGE = "localhost/tcpconnect-test-base:12"
# What `podman pod create` builds for a pod's infra container (podman 4.3.1).
PAUSE_IMAGE = "localhost/podman-pause:4.3.1-0"
BASE_TAR = BUILD / "podman-base-bookworm.tar"
# podman 4.3 on these hosts: runc (crun refuses hybrid cgroup hierarchies),
# the cgroupfs manager (no systemd), and rlimits root may not raise here.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""


def debian_mirror() -> str:
    for line in Path("/etc/apt/sources.list.d/debian.sources").read_text().splitlines():
        if line.startswith("URIs:"):
            return line.split()[1]
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> Iterator[list[str]]:
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    os.environ["CONTAINERS_CONF"] = str(conf)
    if not BASE_TAR.exists():
        BUILD.mkdir(exist_ok=True)
        partial = BASE_TAR.with_suffix(".partial.tar")
        subprocess.run(["mmdebstrap", "--variant=minbase", "--quiet", "bookworm", str(partial),
                        debian_mirror()], check=True, capture_output=True, timeout=600)
        partial.rename(BASE_TAR)
    subprocess.run(["podman", "import", "-q", str(BASE_TAR), IMAGE], check=True,
                   capture_output=True, timeout=120)
    try:
        yield ["podman"]
    finally:
        subprocess.run(["podman", "rmi", "-f", IMAGE, PAUSE_IMAGE], capture_output=True,
                       timeout=120)
        del os.environ["CONTAINERS_CONF"]


def connect_from_container(podman: list[str], port: int, tmp_path: Path,
                           *options: str) -> str:
    """Runs a container that connects to 127.0.0.1:port (refused) and is
    removed; returns its id as podman gave it. `options` default to the
    host's network."""
    cidfile = tmp_path / f"cid-{uuid.uuid4().hex}"
    done = subprocess.run(
        [*podman, "run", "--rm", "--cidfile", str(cidfile), *(options or ("--network", "host")),
         IMAGE, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
        capture_output=True, text=True, timeout=120)
    assert "Connection refused" in done.stderr, done
    return cidfile.read_text().strip()


def test_a_podman_container_is_attributed_to_its_id(trace, podman, tmp_path):
    port = free_port()
    t = trace("-j", "-P", str(port))
    container = connect_from_container(podman, port, tmp_path)
    t.stop()
    [row] = t.json_rows()
    assert (row["container_id"], row["cgroup"]) == (container, f"/libpod_parent/libpod-{container}")
    assert (row["dport"], row["pod_uid"], row["unit"]) == (port, None, None)
    assert (t.returncode, t.stderr) == (0, "")


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
        container = connect_from_container(podman, port, tmp_path, "--pod", pod)
        t.stop()
    finally:
        subprocess.run([*podman, "pod", "rm", "-f", pod], capture_output=True, timeout=120)
    [row] = t.json_rows()
    assert row["cgroup"] == f"/libpod_parent/{pod}/libpod-{container}"
    assert row["container_id"] == container != pod
    assert (t.returncode, t.stderr) == (0, "")
