"""deploy/: the DaemonSet, the systemd unit and the Containerfile say what the
tool and this checkout actually offer; the capabilities they grant suffice
to trace. (The image itself is not built here: no container registry.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from typing import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import (
    ROOT,
    cgroup_id_of,
    cgroup_path_of,
    comm_of,
    free_port,
    perf_event_paranoid,
    refused_connect,
    row,
    run_tool,
)
from test_containers import bpffs, pins  # noqa: F401  (fixtures)
from test_kernel import SECCOMP_REFUSAL

from tcpconnect.cli import parse_args
from tcpconnect.container_names import KUBELET_CONTAINER_LOGS

DEPLOY = ROOT / "deploy"
MOUNTS = ("/sys/kernel/btf", "/sys/fs/cgroup", "/sys/fs/bpf", "/sys/kernel/tracing")
# Only on a Kubernetes node: not bound in the capability test below.
KUBELET_MOUNTS = ("/var/log/pods", "/var/log/containers")
SECCOMP_PROFILE = DEPLOY / "seccomp-tcpconnect.json"
# The Kubernetes release whose API schema the manifest is checked against
# (kubernetes-validate ships them, 1.25 to 1.37 in its 1.37 release).
KUBERNETES = "1.35.0"


@pytest.fixture(scope="module")
def daemonset() -> dict:
    return yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())


def only_container(daemonset: dict) -> dict:
    [container] = daemonset["spec"]["template"]["spec"]["containers"]
    return container


def unit_settings() -> dict[str, str]:
    settings = {}
    for line in (DEPLOY / "tcpconnect.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


@pytest.mark.host_only
def test_daemonset_runs_in_the_hosts_pid_namespace_without_privilege(daemonset):
    assert (daemonset["apiVersion"], daemonset["kind"]) == ("apps/v1", "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod.get("hostNetwork", False) is False
    security = only_container(daemonset)["securityContext"]
    assert security.get("privileged", False) is False
    assert security["capabilities"] == {"drop": ["ALL"],
                                        "add": ["BPF", "PERFMON", "SYS_RESOURCE",
                                                "DAC_READ_SEARCH"]}
    selector = daemonset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= daemonset["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.host_only
def test_daemonset_mounts_the_host_paths_read_only(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: (volumes[m["name"]], m.get("readOnly"))
              for m in only_container(daemonset)["volumeMounts"]}
    assert mounts == {path: (path, True) for path in MOUNTS + KUBELET_MOUNTS}
    # The links that name containers point into the pod log tree.
    assert KUBELET_MOUNTS[1] == KUBELET_CONTAINER_LOGS


@pytest.mark.host_only
def test_daemonset_passes_the_kubernetes_api_schema_offline(daemonset):
    # Strict: a property the schema does not know fails, as a misspelt one
    # would be ignored (or refused) by the API server. No network here.
    assert kubernetes_validate.validate(daemonset, KUBERNETES, strict=True)


@pytest.mark.host_only
@pytest.mark.parametrize("break_it,fragment", [
    (lambda pod, c: c["volumeMounts"][0].update(redOnly=True), "'redOnly' was unexpected"),
    (lambda pod, c: pod.update(hostPID="true"), "'true' is not of type 'boolean'"),
    (lambda pod, c: c.pop("name"), "'name' is a required property"),
    (lambda pod, c: c["securityContext"]["capabilities"].update(add="BPF"),
     "'BPF' is not of type 'array'"),
], ids=["misspelt", "wrong-type", "missing", "wrong-shape"])
def test_the_schema_check_fails_on_a_broken_manifest(daemonset, break_it, fragment):
    broken = json.loads(json.dumps(daemonset))
    pod = broken["spec"]["template"]["spec"]
    break_it(pod, only_container(broken))
    with pytest.raises(kubernetes_validate.ValidationError) as failed:
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    assert fragment in str(failed.value)


@pytest.mark.host_only
def test_daemonset_names_the_shipped_seccomp_profile(daemonset):
    # Under the kubelet's seccomp root, /var/lib/kubelet/seccomp/.
    profile = only_container(daemonset)["securityContext"]["seccompProfile"]
    assert profile["type"] == "Localhost"
    assert Path(profile["localhostProfile"]).name == SECCOMP_PROFILE.name
    assert not Path(profile["localhostProfile"]).is_absolute()


@pytest.mark.host_only
def test_seccomp_profile_is_the_runtimes_default_resolved_plus_bpf_and_perf_events():
    # deploy/seccomp-profile makes it from Debian 12's containers-common
    # profile and the manifest's capabilities: the shipped file is its output.
    made = subprocess.run([sys.executable, str(DEPLOY / "seccomp-profile")],
                          capture_output=True, text=True, check=True).stdout
    assert made == SECCOMP_PROFILE.read_text()
    profile = json.loads(made)
    # Only what the OCI runtime spec's seccomp object holds (containerd reads
    # nothing else): no rule depends on capabilities or architectures.
    assert set(profile) == {"defaultAction", "defaultErrnoRet", "architectures", "syscalls"}
    assert all(set(rule) <= {"names", "action", "args", "errnoRet"}
               for rule in profile["syscalls"])
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    rules_of = {}
    for rule in profile["syscalls"]:
        for name in rule["names"]:
            rules_of.setdefault(name, []).append(rule)
    tracing = {"names": ["bpf", "perf_event_open"], "action": "SCMP_ACT_ALLOW"}
    assert rules_of["bpf"] == rules_of["perf_event_open"] == [tracing]
    # The manifest's DAC_READ_SEARCH keeps open_by_handle_at(); what needs
    # capabilities it lacks stays refused, with EPERM.
    assert [r["action"] for r in rules_of["open_by_handle_at"]] == ["SCMP_ACT_ALLOW"]
    for name in ("chroot", "init_module", "clock_settime", "ioperm"):
        assert [(r["action"], r.get("errnoRet")) for r in rules_of[name]] == [
            ("SCMP_ACT_ERRNO", 1)]


@pytest.mark.host_only
def test_daemonset_scrape_annotations_match_the_metrics_option(daemonset):
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    container = only_container(daemonset)
    args = parse_args(container["args"])
    host, port = args.metrics
    assert host == "0.0.0.0"  # the pod's address, where Prometheus scrapes
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                           "prometheus.io/path": "/metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert args.json and not args.quiet
    # An image with an explicit tag, not :latest.
    assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", container["image"]), container["image"]


@pytest.mark.host_only
def test_unit_runs_the_installed_tool_with_the_daemonsets_capabilities(daemonset):
    settings = unit_settings()
    command = shlex.split(settings["ExecStart"])
    # Where the Debian package installs it.
    assert command[0] == "/usr/sbin/tcpconnect"
    assert "debian/bin/tcpconnect usr/sbin\n" in (ROOT / "debian/tcpconnect.install").read_text()
    args = parse_args(command[1:])
    assert args.json and args.metrics == ("127.0.0.1", 19150)
    caps = ["CAP_" + c for c in only_container(daemonset)["securityContext"]["capabilities"]["add"]]
    assert settings["CapabilityBoundingSet"].split() == caps
    assert settings["AmbientCapabilities"].split() == caps
    assert "PrivateUsers" not in settings and "SystemCallFilter" not in settings


@pytest.mark.host_only
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # As after the package's install: its /usr/sbin/tcpconnect (laid over
    # /usr/sbin in a private mount namespace only) and its man page.
    sbin, man8 = tmp_path / "sbin", tmp_path / "man" / "man8"
    sbin.mkdir()
    man8.mkdir(parents=True)
    launcher = sbin / "tcpconnect"
    launcher.write_bytes((ROOT / "debian/bin/tcpconnect").read_bytes())
    launcher.chmod(0o755)
    (man8 / "tcpconnect.8").write_bytes((ROOT / "docs/tcpconnect.8").read_bytes())
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t overlay overlay -o lowerdir={sbin}:/usr/sbin /usr/sbin && "
         f"exec systemd-analyze verify {DEPLOY / 'tcpconnect.service'}"],
        capture_output=True, text=True, env={**os.environ, "MANPATH": str(tmp_path / "man")})
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.host_only
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    # The check above can fail: the same unit with a misspelt setting does not pass.
    broken = tmp_path / "tcpconnect.service"
    broken.write_text((DEPLOY / "tcpconnect.service").read_text().replace(
        "ProtectHome=", "ProtectHone="))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(broken)],
                          capture_output=True, text=True)
    assert "ProtectHone" in done.stderr


@pytest.mark.host_only
def test_unit_keeps_systemd_analyze_securitys_exposure_low(tmp_path):
    # 4.0 ("OK") with systemd 252: the sandboxing that leaves bpf() usable.
    # The same unit stripped of it scores above the threshold, so the check
    # can fail.
    def exposure_ok(unit: Path) -> bool:
        return subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=40",
                               "--no-pager", str(unit)],
                              capture_output=True, text=True).returncode == 0

    assert exposure_ok(DEPLOY / "tcpconnect.service")
    bare = tmp_path / "tcpconnect.service"
    bare.write_text("".join(line for line in (DEPLOY / "tcpconnect.service").read_text()
                            .splitlines(keepends=True)
                            if not line.startswith(("Protect", "Private", "Restrict"))))
    assert not exposure_ok(bare)


@pytest.fixture
def perf_events_allowed() -> Iterator[None]:
    # What the README asks of nodes whose kernel defaults to 3 (Debian,
    # Ubuntu): without CAP_SYS_ADMIN, perf_event_open() and with it the
    # connect() syscall tracepoints need kernel.perf_event_paranoid <= 2.
    with perf_event_paranoid(2):
        yield


def test_the_granted_capabilities_suffice_to_trace(trace, daemonset, perf_events_allowed):
    # The tool run with no capability beyond the DaemonSet's (setpriv drops
    # the rest from the bounding set, so exec gives root only those).
    caps = [c.lower() for c in only_container(daemonset)["securityContext"]["capabilities"]["add"]]
    port = free_port()
    t = trace("-P", str(port), "-j",
              prefix=("setpriv", "--inh-caps=-all",
                      "--bounding-set=-all," + ",".join("+" + c for c in caps), "--"))
    status = Path(f"/proc/{t.proc.pid}/status").read_text()
    effective = int(re.search(r"^CapEff:\s*(\w+)", status, re.M)[1], 16)
    refused_connect(4, port)
    t.stop()
    # Once attached the tool keeps only BPF and, for -j's attribution,
    # DAC_READ_SEARCH (tests/test_privileges.py).
    assert effective == 1 << 39 | 1 << 2, hex(effective)
    [row] = t.json_rows()
    assert (row["pid"], row["comm"], row["daddr"], row["dport"], row["cgroup"]) == (
        os.getpid(), comm_of(os.getpid()), "127.0.0.1", port, cgroup_path_of(os.getpid()))
    assert (t.returncode, t.stderr) == (0, "")


def containerfile_stages() -> list[list[str]]:
    """The Containerfile's instructions (continuations joined), by stage."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            stages.append([])
        if line and not line.startswith("#"):
            stages[-1].append(" ".join(line.split()))
    return stages


@pytest.mark.host_only
def test_containerfile_builds_with_this_checkouts_targets_and_paths():
    build, runtime = containerfile_stages()
    makefile = (ROOT / "Makefile").read_text()
    assert build[0] == "FROM debian:12 AS build" and runtime[0] == "FROM debian:12-slim"
    # The build stage runs a real make target, whose wheel lands where the
    # runtime stage copies it from.
    [make] = [i for i in build if i.startswith("RUN make ")]
    target = make.split()[2]
    assert re.search(rf"^{target}:", makefile, re.M)
    assert "--wheel-dir dist ." in makefile and "WORKDIR /src" in build
    assert "COPY --from=build /src/dist/ /tmp/dist/" in runtime
    # The runtime stage's apt packages are the Makefile's for running, less
    # the man pages the image does not ship.
    run_packages = re.search(r"^RUN_PACKAGES := (.*)$", makefile, re.M)[1].split()
    [apt] = [i for i in runtime if "apt-get install" in i]
    assert all(p in apt.split() for p in run_packages if p != "man-db")
    # The extras it installs exist, and the entry point is the package's script.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "[dns,metrics]" in " ".join(runtime)
    assert {"dns", "metrics"} <= extras["optional-dependencies"].keys()
    assert "tcpconnect" in extras["scripts"]
    assert runtime[-1] == 'ENTRYPOINT ["/opt/tcpconnect/bin/tcpconnect"]'
    assert any(i.startswith("RUN python3 -m venv /opt/tcpconnect ") for i in runtime)
    # The build context keeps what `make wheel` needs.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"src", "Makefile", "pyproject.toml"} & set(ignored)


def test_the_daemonsets_read_only_mounts_and_capabilities_suffice(trace, daemonset, pins,
                                                                   perf_events_allowed):
    # As in the pod: the host paths the manifest mounts are read-only (each
    # bound onto itself, then remounted so, in a private mount namespace),
    # and the tool has only the manifest's capabilities. --cgroupmap opens a
    # map pinned on the read-only BPF filesystem.
    caps = [c.lower() for c in only_container(daemonset)["securityContext"]["capabilities"]["add"]]
    cgroups = pins.map()
    cgroups.add(cgroup_id_of(os.getpid()))
    read_only = " && ".join(f"mount --bind {p} {p} && mount -o bind,remount,ro {p} {p}"
                            for p in MOUNTS)
    port = free_port()
    t = trace("--cgroupmap", str(cgroups.path), "-P", str(port), "-j",
              prefix=("unshare", "-m", "sh", "-c", read_only + ' && exec "$@"', "sh",
                      "setpriv", "--inh-caps=-all",
                      "--bounding-set=-all," + ",".join("+" + c for c in caps), "--"))
    mounts = Path(f"/proc/{t.proc.pid}/mounts").read_text().splitlines()
    refused_connect(4, port)
    t.stop()
    for path in MOUNTS:
        [options] = [line.split()[3] for line in mounts if line.split()[1] == path][-1:]
        assert options.split(",")[0] == "ro", (path, options)
    [row] = t.json_rows()
    assert (row["pid"], row["dport"]) == (os.getpid(), port)
    assert (t.returncode, t.stderr) == (0, "")


# --- A container without the host's mounts, or with a runtime's seccomp filter ----------
# Each condition is made for real: an empty tmpfs over the path in a private
# mount namespace, a seccomp filter installed in the tool's process.

def hidden(*paths: str) -> tuple[str, ...]:
    mounts = " && ".join(f"mount -t tmpfs none {p}" for p in paths)
    return ("unshare", "-m", "sh", "-c", mounts + ' && exec "$@"', "sh")


# The two below stop before anything reaches the kernel: the same on every kernel.
@pytest.mark.host_only
def test_btf_not_mounted_in_a_container_is_named_not_the_kernel():
    done = run_tool("-P", "80", prefix=hidden("/sys/kernel/btf"))
    assert (done.returncode, done.stdout, done.stderr) == (1, "", (
        "tcpconnect: /sys/kernel/btf/vmlinux is missing and /sys/kernel/btf is not the "
        "kernel's sysfs, so this kernel may well have BTF: in a container, mount the host's "
        "/sys/kernel/btf (read-only), or give this kernel's BTF with --btf FILE\n"))


@pytest.mark.host_only
@pytest.mark.parametrize("option", ["--cgroupmap", "--mntnsmap"])
def test_bpffs_not_mounted_in_a_container_is_named_with_the_missing_pin(option):
    done = run_tool(option, "/sys/fs/bpf/tcpconnect-test", prefix=hidden("/sys/fs/bpf"))
    assert (done.returncode, done.stdout, done.stderr) == (2, "", (
        f"tcpconnect: error: {option} /sys/fs/bpf/tcpconnect-test: No such file or directory "
        "(/sys/fs/bpf is no BPF file system: in a container, mount the host's /sys/fs/bpf)\n"))


def daemonset_capabilities() -> tuple[str, ...]:
    """A prefix that leaves the tool only deploy/daemonset.yaml's capabilities."""
    daemonset = yaml.safe_load((DEPLOY / "daemonset.yaml").read_text())
    caps = [c.lower() for c in only_container(daemonset)["securityContext"]["capabilities"]["add"]]
    return ("setpriv", "--inh-caps=-all",
            "--bounding-set=-all," + ",".join("+" + c for c in caps), "--")


UNTRACED_CALLS = ("tcpconnect: connect() calls that fail before a SYN is sent (no route, "
                  "refused by a cgroup BPF program or an LSM) are not traced: ")


def test_tracefs_not_mounted_in_a_container_is_named_and_the_rest_traced(trace):
    # Without CAP_SYS_ADMIN the tool cannot mount tracefs itself. Only the
    # connect() syscall tracepoints need it: the rest traces.
    port = free_port()
    t = trace("-P", str(port), prefix=(*hidden("/sys/kernel/tracing", "/sys/kernel/debug"),
                                       *daemonset_capabilities()))
    refused_connect(4, port)
    t.stop()
    assert t.rows == [row(os.getpid(), comm_of(os.getpid()), 4, "127.0.0.1", "127.0.0.1", port)]
    assert (t.returncode, t.stderr) == (0, UNTRACED_CALLS + (
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed: Operation not "
        "permitted (in a container, mount the host's /sys/kernel/tracing)\n"))


@pytest.mark.parametrize("err", ["EPERM", "ENOSYS"])
def test_a_seccomp_filter_refusing_perf_event_open_is_named(trace, err):
    # perf_event_open() attaches the connect() syscall tracepoints only: the
    # tool says the filter refused it, and traces the rest.
    port = free_port()
    t = trace("-P", str(port), prefix=(sys.executable, str(ROOT / "tests/seccomp_filter.py"),
                                       "perf_event_open", err))
    refused_connect(4, port)
    t.stop()
    assert t.rows == [row(os.getpid(), comm_of(os.getpid()), 4, "127.0.0.1", "127.0.0.1", port)]
    refusal = SECCOMP_REFUSAL.format(err).replace("tcpconnect: bpf()", "perf_event_open()")
    assert (t.returncode, t.stderr) == (0, UNTRACED_CALLS + refusal)
