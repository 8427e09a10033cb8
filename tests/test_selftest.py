"""--selftest: the whole check on the real kernel, and how it reports a
check that fails or a self-test that cannot run."""

from __future__ import annotations

import os
import re

import pytest
from conftest import run_tool

from tcpconnect.selftest import Check, verdicts

CHECKS = ["ok", "ok (IPv6)", "refused", "refused (IPv6)", "timeout", "unreachable", "no-route",
          "no-local-port"]


def test_selftest_passes_on_this_kernel():
    done = run_tool("--selftest")
    lines = done.stdout.splitlines()
    # Its report on failure: once in CI (2026-12-07) it exited 1 with nothing on stderr, and
    # 10 runs since on this machine (idle, under two busy loops, in the whole suite) passed.
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert [line.split("  ")[1].strip() for line in lines[:-1]] == CHECKS
    assert all(line.startswith("ok   ") for line in lines[:-1])
    assert re.fullmatch(r"ok   unreachable +198\.18\.1\.1:80 +unreachable, "
                        r"ICMP host-unreachable from 198\.18\.0\.2", lines[5])
    assert lines[-1] == "8 of 8 checks passed"
    # Its namespaces are gone.
    assert not [n for n in os.listdir("/run/netns") if n.startswith("tcpconnect-selftest-")]


@pytest.mark.host_only
def test_a_check_without_its_row_fails():
    checks = [Check("refused", "127.0.0.1", 9, "refused", "RST from destination"),
              Check("timeout", "198.18.1.2", 80, "timeout", "no answer to 2 SYNs")]
    rows = [{"daddr": "127.0.0.1", "dport": 9, "result": "refused",
             "cause": "RST from destination"},
            {"daddr": "198.18.1.2", "dport": 80, "result": "timeout",
             "cause": "3 SYNs dropped here: NETFILTER_DROP"}]
    assert verdicts(checks, rows) == [
        (True, checks[0], "refused, RST from destination"),
        (False, checks[1], "timeout, 3 SYNs dropped here: NETFILTER_DROP")]
    assert verdicts(checks[:1], []) == [(False, checks[0], "no row")]


@pytest.mark.host_only
def test_selftest_takes_no_other_option():
    done = run_tool("--selftest", "-c")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "tcpconnect: error: --selftest takes no other option"


@pytest.mark.host_only
def test_without_ip_the_selftest_says_so(tmp_path):
    done = run_tool("--selftest", env={**os.environ, "PATH": str(tmp_path)})
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "tcpconnect: --selftest needs iproute2's ip command\n"
