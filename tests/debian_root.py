"""A Debian 12 minbase root made with mmdebstrap from Debian's archive, cached
as a tar in build/: the tests that run the tool the way a user's host or
container would (test_runtimes.py, test_package.py) start from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import BUILD

BASE_TAR = BUILD / "debian-bookworm-minbase.tar"


def debian_mirror() -> str:
    for line in Path("/etc/apt/sources.list.d/debian.sources").read_text().splitlines():
        if line.startswith("URIs:"):
            return line.split()[1]
    return "http://deb.debian.org/debian"


def base_tar() -> Path:
    """Debian 12 minbase as a tar. It carries the host's extra CA
    certificates and pip configuration, where there are any: a build in it
    (deploy/Containerfile) reaches PyPI the way the host does, through
    whatever re-signs TLS on the way."""
    if not BASE_TAR.exists():
        BUILD.mkdir(exist_ok=True)
        partial = BASE_TAR.with_suffix(".partial.tar")
        hooks = []
        if list(Path("/usr/local/share/ca-certificates").glob("*.crt")):
            hooks.append("--customize-hook=copy-in /usr/local/share/ca-certificates "
                         "/usr/local/share")
        if Path("/etc/pip.conf").exists():
            hooks.append("--customize-hook=copy-in /etc/pip.conf /etc")
        subprocess.run(["mmdebstrap", "--variant=minbase", "--quiet", *hooks, "bookworm",
                        str(partial), debian_mirror()], check=True, capture_output=True,
                       timeout=600)
        partial.rename(BASE_TAR)
    return BASE_TAR
