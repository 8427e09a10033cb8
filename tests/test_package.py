"""The Debian package as a user installs it: `make deb`'s .deb, put with
`apt install` into a fresh Debian 12 minbase root (base_tar, cached in
build/), run from there, then purged. Nothing of the checkout, the venv or
the build (clang, bpftool) is in the root: only the package and what apt
brings for it from Debian's archive, whose python3-dnslib (0.9.23) and
python3-prometheus-client (0.16) serve -d and --metrics here.

Each command runs chrooted in a mount namespace of its own, in which the
host's /proc and /sys (tracefs and bpffs included) are bound into the root
(mmdebstrap made its /dev): the namespace, and every mount with it, ends with the command, so a
failing test leaves nothing mounted. The packages apt downloads are kept in
build/package-test-archives across runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BUILD, ROOT, Trace, free_port, row
from debian_root import base_tar

pytestmark = pytest.mark.host_only

ARCHIVES = BUILD / "package-test-archives"
# libbpf-tools' program of the same name, and where the package moves it.
LIBBPF_TOOLS = "/usr/sbin/tcpconnect"
DIVERTED = "/usr/sbin/tcpconnect.libbpf-tools"
BIND_AND_CHROOT = """
for d in proc sys; do mount --rbind "/$d" "$0/$d"; done
mount --bind "$ARCHIVES" "$0/var/cache/apt/archives"
exec chroot "$0" "$@"
"""
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
       "DEBIAN_FRONTEND": "noninteractive", "ARCHIVES": str(ARCHIVES)}
# A connect refused by a closed port, from bash in the root; its pid first.
# The redirection of a builtin is bash's own: no child connects.
BASH_CONNECT = "echo $$; : 2>/dev/null 3<>/dev/tcp/127.0.0.1/{port}; true"
# A DNS question, answered from 127.0.0.1:53 with `answer`, then a refused
# connect to that address: the root's python3 and dnslib on both ends.
LOOKUP_AND_CONNECT = """
import os, socket, sys, dnslib
name, answer, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 53))
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.connect(("127.0.0.1", 53))
client.send(dnslib.DNSRecord.question(name).pack())
query, peer = server.recvfrom(512)
reply = dnslib.DNSRecord.parse(query).reply()
reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(answer), ttl=60))
server.sendto(reply.pack(), peer)
client.recv(512)
print(os.getpid(), flush=True)
try:
    socket.create_connection((answer, port))
except ConnectionRefusedError:
    pass
"""
SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode())
"""


def in_root(root: Path) -> tuple[str, ...]:
    """The prefix that runs a command in `root`."""
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", BIND_AND_CHROOT,
            str(root))


def run(root: Path, *command: str, timeout: float = 300) -> str:
    done = subprocess.run([*in_root(root), *command], capture_output=True, text=True,
                          env=ENV, timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def deb() -> Path:
    """The .deb of these sources: `make deb` rebuilds it only when they
    changed (and fails on lintian errors)."""
    assert shutil.which("mmdebstrap"), "mmdebstrap is missing: make apt-test installs it"
    done = subprocess.run(["make", "--no-print-directory", "deb"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = BUILD.glob("tcpconnect_*.deb")
    return built


@pytest.fixture
def root(tmp_path: Path, deb: Path) -> Path:
    """A fresh minbase root holding the .deb in /tmp, its package lists
    fetched."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-xf", str(base_tar()), "-C", str(root)], check=True,
                   capture_output=True, timeout=120)
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    # apt (unlike apt-get) deletes what it downloaded once installed.
    (root / "etc/apt/apt.conf.d/90keep-archives").write_text(
        'Binary::apt::APT::Keep-Downloaded-Packages "true";\n')
    shutil.copy(deb, root / "tmp")
    run(root, "apt-get", "update", "-q")
    return root


def apt_install(root: Path, deb: Path, *packages: str) -> None:
    run(root, "apt", "install", "-y", "-q", f"/tmp/{deb.name}", *packages)


def installed_files(root: Path) -> list[str]:
    """The package's files and directories, as dpkg lists them."""
    return run(root, "dpkg", "-L", "tcpconnect").split()


def purge(root: Path) -> list[str]:
    """Purges the package; returns the files of its that are still there."""
    files = installed_files(root)
    run(root, "apt", "purge", "-y", "-q", "tcpconnect")
    # Directories other packages share (/usr/sbin) stay; ours go, bytecode
    # py3compile made at install included.
    left = [path for path in files if (root / path.lstrip("/")).exists()
            and not (root / path.lstrip("/")).is_dir()]
    ours = [path for path in ("/usr/lib/python3/dist-packages/tcpconnect",
                              "/usr/share/doc/tcpconnect") if (root / path.lstrip("/")).exists()]
    assert ours == []
    assert "tcpconnect" not in run(root, "dpkg-divert", "--list")
    assert "tcpconnect" not in run(root, "dpkg-query", "-W", "-f=${Package}\n").split()
    return left


def test_installs_traces_and_purges_without_a_trace(root, deb):
    apt_install(root, deb, "man-db")
    # Python modules from the package, no more and no fewer than the sources'.
    files = installed_files(root)
    modules = sorted(path.removeprefix("/usr/lib/python3/dist-packages/tcpconnect/")
                     for path in files if path.endswith(".py"))
    assert modules == sorted(str(p.relative_to(ROOT / "src" / "tcpconnect"))
                             for p in (ROOT / "src" / "tcpconnect").rglob("*.py"))
    assert {"/usr/sbin/tcpconnect", "/usr/share/man/man8/tcpconnect.8.gz",
            "/usr/share/doc/tcpconnect/examples/tcpconnect_example.txt",
            "/usr/share/doc/tcpconnect/copyright",
            "/usr/lib/python3/dist-packages/tcpconnect/tcpconnect.bpf.o"} <= set(files)
    # Nothing of a build: the objects came compiled.
    assert run(root, "sh", "-c", "command -v clang cc gcc bpftool pip3 || true") == ""

    port = free_port()
    t = Trace("-P", str(port), tool=(*in_root(root), "tcpconnect"), env=ENV)
    pid = int(run(root, "bash", "-c", BASH_CONNECT.format(port=port)))
    t.stop()
    assert (t.returncode, t.stderr) == (0, "")
    assert t.rows == [row(pid, "bash", 4, "127.0.0.1", "127.0.0.1", port)]

    # -d with Debian's dnslib and cachetools.
    port, answer = free_port(), "127.53.0.1"
    t = Trace("-d", "-P", str(port), tool=(*in_root(root), "tcpconnect"), env=ENV)
    pid = int(run(root, "python3", "-c", LOOKUP_AND_CONNECT, "package.test", answer, str(port)))
    t.stop()
    assert (t.returncode, t.stderr) == (0, "")
    assert t.rows == [row(pid, "python3", 4, "127.0.0.1", answer, port, query="package.test")]

    # --metrics with Debian's prometheus-client.
    port, metrics_port = free_port(), free_port()
    t = Trace("--metrics", f"127.0.0.1:{metrics_port}", "-q", "-P", str(port),
              tool=(*in_root(root), "tcpconnect"), env=ENV)
    run(root, "bash", "-c", BASH_CONNECT.format(port=port))
    metrics = run(root, "python3", "-c", SCRAPE, str(metrics_port))
    t.stop()
    assert (t.returncode, t.stderr) == (0, "")
    assert (f'tcpconnect_connects_total{{comm="bash",daddr="127.0.0.1",dport="{port}"}} 1.0'
            in metrics.splitlines()), metrics

    page = run(root, "env", "MANPAGER=cat", "MANWIDTH=80", "man", "tcpconnect")
    assert page.splitlines()[0].split() == ["TCPCONNECT(8)", "System", "Manager's", "Manual",
                                            "TCPCONNECT(8)"]
    assert purge(root) == []


def test_libbpf_tools_program_is_diverted_and_given_back(root, deb):
    run(root, "apt", "install", "-y", "-q", "libbpf-tools")
    theirs = (root / "usr/sbin/tcpconnect").read_bytes()
    assert run(root, "dpkg", "-S", LIBBPF_TOOLS) == f"libbpf-tools: {LIBBPF_TOOLS}\n"
    apt_install(root, deb)
    # `tcpconnect` is this tool; libbpf-tools' is reachable under the diverted name.
    assert run(root, "sh", "-c", "command -v tcpconnect") == "/usr/sbin/tcpconnect\n"
    assert run(root, "tcpconnect", "--help").startswith("usage: tcpconnect [-h] [-t]")
    assert (root / DIVERTED.lstrip("/")).read_bytes() == theirs
    assert "tcpconnect: Count/Trace active tcp connections" in run(root, DIVERTED, "--help")
    assert run(root, "dpkg-divert", "--list", LIBBPF_TOOLS) == (
        f"diversion of {LIBBPF_TOOLS} to {DIVERTED} by tcpconnect\n")

    # The one path left is libbpf-tools' program, back under its name.
    assert purge(root) == [LIBBPF_TOOLS]
    assert (root / "usr/sbin/tcpconnect").read_bytes() == theirs
    assert not (root / DIVERTED.lstrip("/")).exists()
    assert run(root, "dpkg", "-S", LIBBPF_TOOLS) == f"libbpf-tools: {LIBBPF_TOOLS}\n"


def test_make_installs_apt_packages_without_their_recommends():
    # Recommends bring services: prometheus's (a test package) is
    # prometheus-node-exporter, enabled and listening on :9100.
    done = subprocess.run(["make", "-n", "--no-print-directory", "apt", "apt-test", "apt-deb"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    installs = [line for line in done.stdout.splitlines() if "apt-get install" in line]
    assert len(installs) == 3 and all("--no-install-recommends" in line for line in installs)
