"""The man page and the README say what --help says."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import ROOT

from tcpconnect.cli import build_parser

# Never loads BPF: the kernel matrix leaves it to the host run.
pytestmark = pytest.mark.host_only

MAN_PAGE = ROOT / "docs" / "tcpconnect.8"
OPTIONS = [action for action in build_parser()._actions if action.option_strings]


def plain(roff: str) -> str:
    """The man page's text without font changes and with \\- as -."""
    return re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-")


@pytest.mark.parametrize("option", [o for a in OPTIONS for o in a.option_strings])
def test_man_page_documents_every_option(option):
    text = plain(MAN_PAGE.read_text())
    # In OPTIONS, as ".BR -P ", " --port ..." or ".BI --btf ...".
    assert re.search(rf"^\.B[IR]? (.*\s)?{re.escape(option)}\b", text, re.M), option


@pytest.mark.parametrize("action", [a for a in OPTIONS if a.metavar], ids=lambda a: a.dest)
def test_metavars_agree(action):
    """-P PORTS in --help, the man page's synopsis and the README's option table."""
    usage = f"{action.option_strings[0]} {action.metavar}"
    assert f".OP {usage}\n" in plain(MAN_PAGE.read_text())
    assert f"| `{usage}` |" in (ROOT / "README.md").read_text()


def test_readme_usage_is_the_help_usage():
    usage = " ".join(build_parser().format_usage().split())
    assert usage.startswith("usage: ")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert usage.removeprefix("usage: ") in readme


def test_man_page_renders_without_warnings():
    done = subprocess.run(["man", "--warnings", "-l", str(MAN_PAGE)], capture_output=True,
                          text=True, env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8",
                                          "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "--cgroupmap MAPPATH" in done.stdout


def test_example_commands_are_valid():
    """Each `# tcpconnect ...` of the examples file is an accepted command line."""
    text = (ROOT / "docs" / "tcpconnect_example.txt").read_text()
    commands = re.findall(r"^# tcpconnect(.*)$", text, re.M)
    assert len(commands) > 10
    for command in commands:
        if command.split() != ["-h"]:
            build_parser().parse_args(command.split())
