"""The man page and the README say what --help says."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess

import pytest
from conftest import ROOT

from tcpconnect.cli import build_parser, parse_args
from tcpconnect.output import Columns, JsonFormatter
from tcpconnect.records import EventRecord, decoded

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


def man_paragraph(start: str) -> str:
    """The man page's text from the line `start` to the next section, option or paragraph."""
    text = plain(MAN_PAGE.read_text())
    rest = text[text.index(start + "\n") + len(start) + 1:]
    return rest[:re.search(r"^\.(SH|TP|PP)", rest, re.M).start()]


def test_man_page_json_section_names_every_key():
    # A row with every option that adds keys: -t, -L, -d, --outcome, --args.
    formatter = JsonFormatter(Columns(timestamp=True, lport=True, dns=True, outcome=True),
                              query=lambda e: ("x.test", 2_500_000), args=lambda e: "[]")
    record = EventRecord(
        ts_ns=1, pid=1, tid=1, uid=0, lport=1, dport=1, family=4, comm=bytes(16), cgroup_id=1,
        mntns_id=1, netns=1, latency_ns=1, outcome=0, error=0, syn_retries=0, drops=0,
        drop_reason=0, saddr=bytes(16), daddr=bytes(16))
    [line] = formatter.rows([decoded(record)])
    named = set(re.findall(r"\w+", " ".join(
        line for line in man_paragraph(".SH JSON").splitlines() if line.startswith(".B"))))
    assert sorted(json.loads(line).keys() - named) == []


def test_quiet_lists_the_options_it_refuses(capsys):
    refused = set()
    for action in OPTIONS:
        # --selftest refuses every other option itself.
        if action.nargs == 0 and action.dest not in ("help", "quiet", "selftest"):
            with contextlib.suppress(SystemExit):
                parse_args(["--metrics", "127.0.0.1:19150", "-q", action.option_strings[0]])
                continue
            refused.add(action.option_strings[0])
    capsys.readouterr()
    listed = set(re.findall(r"(?<![\w-])--?[\w-]+", man_paragraph(".BR -q \", \" --quiet")))
    assert listed - {"--metrics"} == refused
    assert refused >= {"-c", "-d", "-j", "-t", "-T", "-L", "-U", "--container"}


def test_help_of_t_says_what_time_counts_from_with_outcome():
    [t] = [a for a in OPTIONS if "-t" in a.option_strings]
    assert t.help == ("include a timestamp column (seconds since the first connect; "
                      "with --outcome, since tracing started)")
