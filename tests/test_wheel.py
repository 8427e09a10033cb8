"""The wheel: built from the objects `make` compiled, installed with no index and
no compiler into a venv of its own, and tracing from there."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, Trace, comm_of, free_port, refused_connect, row

# Packaging, the same on every kernel: the kernel matrix leaves it to the host run.
pytestmark = pytest.mark.host_only

# No index and no build isolation: the suite also runs in guests without a network.
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input")
OBJECTS = ("tcpconnect.bpf.o", "dns_dynptr.bpf.o")


def pip(*args: str) -> None:
    done = subprocess.run([*PIP, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    tree = tmp / "tree"
    shutil.copytree(ROOT / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy(ROOT / name, tree)
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", str(tmp / "dist"), str(tree))
    (built,) = (tmp / "dist").glob("tcpconnect-*.whl")
    return built


def test_wheel_holds_the_objects_the_license_and_the_extras(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_file) == (ROOT / "LICENSE").read_bytes()
    for name in OBJECTS:
        assert f"tcpconnect/{name}" in names
    assert "License-Expression: GPL-2.0-only" in metadata.decode().splitlines()
    requires = [line for line in metadata.decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra == \"test\"" not in line]
    # Nothing for plain tracing; -d's parsers with the dns extra, --metrics's
    # HTTP exporter and --web-config's file and password hashes with the
    # metrics extra.
    assert sorted(requires) == ['Requires-Dist: PyYAML>=6; extra == "metrics"',
                                'Requires-Dist: bcrypt>=3.2; extra == "metrics"',
                                'Requires-Dist: cachetools>=5; extra == "dns"',
                                'Requires-Dist: dnslib>=0.9.23; extra == "dns"',
                                'Requires-Dist: prometheus-client>=0.16; extra == "metrics"']


def test_wheel_installed_in_a_fresh_venv_traces(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip("--python", str(venv / "bin" / "python"), "install", "--no-index", "--no-deps", str(wheel))
    installed = next((venv / "lib").glob("python3*/site-packages/tcpconnect"))
    for name in OBJECTS:
        assert filecmp.cmp(installed / name, ROOT / "src" / "tcpconnect" / name, shallow=False)

    # Only the venv on PATH: nothing from the build (clang, bpftool) is reachable.
    env = {"PATH": str(venv / "bin"), "LANG": os.environ.get("LANG", "C.UTF-8")}
    port = free_port()
    t = Trace("-P", str(port), tool=(str(venv / "bin" / "tcpconnect"),), env=env)
    refused_connect(4, port)
    t.stop()
    assert t.returncode == 0, t.stderr
    assert t.rows == [row(os.getpid(), comm_of(os.getpid()), 4, "127.0.0.1", "127.0.0.1", port)]
