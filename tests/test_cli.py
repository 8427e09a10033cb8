"""Options: parsing, refusals with one-line errors, environment checks."""

from __future__ import annotations

import argparse
import glob
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import BANNER, ROOT, TOOL, run_tool, wait_for

from tcpconnect.cli import build_parser, parse_netns, parse_pid, parse_ports, parse_uid


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str,
                          code: int = 2) -> None:
    assert result.returncode == code, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tcpconnect: ")
    assert fragment in lines[0]


def missing_pid() -> int:
    pid = 4194303
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


@pytest.mark.parametrize("args,fragment", [
    (["-p", "abc"], "invalid PID 'abc'"),
    (["-p", "0"], "invalid PID '0'"),
    (["-p", "-5"], "-p/--pid: expected one argument"),
    (["-p", "5000000"], "invalid PID '5000000'"),
    (["-p", str(missing_pid())], "no such process"),
    (["-P", "80,"], "invalid port '' in '80,'"),
    (["-P", ",80"], "invalid port ''"),
    (["-P", "0"], "invalid port '0'"),
    (["-P", "70000"], "invalid port '70000': out of range 1..65535"),
    (["-P", "80,99999"], "invalid port '99999' in '80,99999': out of range 1..65535"),
    (["-P", "http"], "invalid port 'http'"),
    (["-u", "x-no-such-user"], "invalid UID 'x-no-such-user'"),
    (["-u", "4294967295"], "invalid UID '4294967295'"),
    (["-4", "-6"], "not allowed with argument"),
    (["-c", "-d"], "-d/--dns cannot be used with -c/--count"),
    (["-c", "-j"], "-j/--json cannot be used with -c/--count"),
    (["-i", "5"], "-i/--interval needs -c/--count"),
    (["-c", "-X"], "-X/--exe cannot be used with -c/--count"),
    (["--args"], "--args needs -j/--json"),
    (["-c", "-i", "0"], "invalid interval '0'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--cgroup", "/tmp"], "--cgroup /tmp: not a cgroup v2 directory"),
    (["--netns", "0"], "invalid network namespace '0'"),
    (["--netns", "4294967296"], "invalid network namespace '4294967296'"),
    (["--netns", "/no/such/netns"], "'/no/such/netns': No such file or directory"),
    (["--netns", "/etc/passwd"], "'/etc/passwd': not a network namespace"),
    (["--netns", "/proc/self/ns/mnt"], "'/proc/self/ns/mnt': not a network namespace"),
])
@pytest.mark.host_only
def test_bad_options_give_one_line_and_exit_2(args, fragment):
    assert_one_line_error(run_tool(*args), fragment)


def missing_netns() -> int:
    """An inode number no process's network namespace and no /run/netns entry has."""
    used = {os.stat(path).st_ino for pattern in ("/proc/[0-9]*/ns/net", "/run/netns/*")
            for path in glob.glob(pattern) if os.path.exists(path)}
    return next(inum for inum in range(12345, 2**32) if inum not in used)


@pytest.mark.host_only
def test_netns_number_no_namespace_has_is_refused_like_a_missing_pid():
    inum = missing_netns()
    assert_one_line_error(run_tool("--netns", str(inum)),
                          f"argument --netns: no network namespace {inum}: no process is in "
                          "it and /run/netns has none (name one held otherwise by its path)")
    # A namespace `ip netns add` made has no process in it, and is found.
    name = f"tct-cli-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        inum = os.stat(f"/run/netns/{name}").st_ino
        assert parse_netns(str(inum)) == inum
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.mark.parametrize("option", ["--cgroupmap", "--mntnsmap", "--cgroup", "--btf"])
@pytest.mark.host_only
def test_a_missing_file_is_the_same_error_whichever_option_names_it(option):
    assert_one_line_error(run_tool(option, "/no/such/file"),
                          f"tcpconnect: error: {option} /no/such/file: No such file or directory")


@pytest.mark.host_only
def test_netns_fifo_is_refused_without_opening_it(tmp_path):
    # Opening a FIFO for reading would wait for a writer.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_one_line_error(run_tool("--netns", str(fifo)), "not a network namespace")


@pytest.mark.host_only
def test_help_ends_with_examples():
    result = run_tool("-h")
    assert result.returncode == 0
    text = result.stdout
    assert text.startswith("usage: tcpconnect [-h] [-t] [-p PID] [-P PORTS] [-4 | -6]")
    examples = text[text.index("examples:"):].splitlines()
    assert examples[1].strip().startswith("tcpconnect ")
    assert text.rstrip().splitlines()[-1].strip().startswith("tcpconnect --btf")


def test_without_privileges():
    # Root with an empty capability bounding set has no CAP_BPF after exec.
    result = run_tool("-P", "80", prefix=("setpriv", "--inh-caps=-all", "--bounding-set=-all",
                                          "--"))
    assert_one_line_error(result, "must run as root (needs CAP_BPF and CAP_PERFMON, "
                                  "or CAP_SYS_ADMIN)", code=1)


def test_kernel_without_btf():
    # What sysfs shows on such a kernel: /sys/kernel without btf/ (another
    # sysfs directory bound over it, in a private mount namespace). A tmpfs
    # over /sys/kernel/btf is a container's missing mount instead
    # (tests/test_deploy.py).
    result = run_tool("-P", "80", prefix=("unshare", "-m", "sh", "-c",
                                          'mount --bind /sys/kernel/mm /sys/kernel && exec "$@"',
                                          "sh"))
    assert_one_line_error(result, "this kernel has no BTF (/sys/kernel/btf/vmlinux is "
                                  "missing): give this kernel's BTF with --btf FILE", code=1)


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty file"),
    (b"\x9f\xeb" + bytes(40), "not a readable BTF file (Invalid argument)"),  # BTF magic, broken header
    (b"#!/bin/sh\n", "not a readable BTF file (neither raw BTF nor an ELF file)"),
    (Path("/bin/true").read_bytes(), "not a readable BTF file (an ELF file without a .BTF section)"),
])
@pytest.mark.host_only
def test_bad_btf_file(tmp_path, content, fragment):
    path = tmp_path / "vmlinux.btf"
    path.write_bytes(content)
    assert_one_line_error(run_tool("--btf", str(path)), f"--btf {path}: {fragment}")


@pytest.mark.host_only
def test_dns_without_its_libraries():
    # Without site-packages, dnslib and cachetools are not installed.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-S", "-m", "tcpconnect", "-d"], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL, env=env)
    assert_one_line_error(result, "-d/--dns needs the Python packages dnslib and cachetools",
                          code=1)


@pytest.mark.host_only
def test_dns_with_a_dnslib_that_fails_to_import(tmp_path):
    # Found but broken: noticed once tracing has started (dnslib is imported
    # then, so as not to delay it), and the run ends before any row.
    (tmp_path / "dnslib.py").write_text("raise ImportError('dnslib is broken')\n")
    result = run_tool("-d", env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result
    assert result.stdout == BANNER + "\n"
    assert result.stderr == "tcpconnect: -d/--dns: cannot import dnslib: dnslib is broken\n"

@pytest.mark.host_only
def test_port_lists_are_deduplicated_in_order():
    assert parse_ports("443,80,443,8080") == (443, 80, 8080)
    assert parse_ports("65535") == (65535,)


@pytest.mark.parametrize("bad", ["", "1,,2", "1, 2", "+1", "1e3", "65536", "-1"])
@pytest.mark.host_only
def test_parse_ports_rejects(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_ports(bad)


@pytest.mark.host_only
def test_parse_pid_and_uid():
    assert parse_pid("1") == 1
    assert parse_uid("0") == 0
    assert parse_uid("root") == 0
    assert parse_uid("4294967294") == 4294967294
    for bad in ("", " 1", "1.0", "0x10"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_pid(bad)


@pytest.mark.host_only
def test_options_match_bcc():
    args = build_parser().parse_args(
        ["-t", "-p", "1", "-P", "80,81", "-4", "-L", "-U", "-u", "0", "--cgroupmap", "/a",
         "--mntnsmap", "/b"])
    assert (args.timestamp, args.pid, args.port, args.ipv4, args.lport, args.print_uid,
            args.uid, args.cgroupmap, args.mntnsmap) == (
        True, 1, (80, 81), True, True, True, 0, "/a", "/b")


@pytest.mark.host_only
def test_bad_values_beyond_ascii_and_empty_paths():
    assert_one_line_error(run_tool("-p", "²"), "invalid PID '²'")
    assert_one_line_error(run_tool("-P", "٨٠"), "invalid port '٨٠'")
    assert_one_line_error(run_tool("--cgroupmap", ""), "--cgroupmap: empty path")
    assert_one_line_error(run_tool("--mntnsmap", ""), "--mntnsmap: empty path")


@pytest.mark.host_only
def test_thread_id_is_refused_for_pid():
    done = threading.Event()
    worker = threading.Thread(target=done.wait)
    worker.start()
    try:
        tid = worker.native_id
        result = run_tool("-p", str(tid))
    finally:
        done.set()
        worker.join()
    assert_one_line_error(result, f"-p {tid}: is a thread of process {os.getpid()}")


@pytest.mark.host_only
def test_full_output_device_is_a_one_line_error():
    with open("/dev/full", "w") as full:
        result = subprocess.run([*TOOL, "-P", "80"], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=30, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr == "tcpconnect: cannot write output: No space left on device\n"


@pytest.mark.host_only
def test_closed_stdout_is_a_one_line_error():
    result = subprocess.run(" ".join(TOOL) + " -P 80 >&-", shell=True, stderr=subprocess.PIPE,
                            text=True, timeout=30, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr == "tcpconnect: standard output is closed\n"


@pytest.mark.host_only
def test_closed_stderr_is_a_one_line_error_on_stdout():
    # Without stderr, errors and loss reports would go nowhere.
    for mode in ("-j", "-t"):
        result = subprocess.run(" ".join(TOOL) + f" {mode} -P 80 2>&-", shell=True,
                                stdout=subprocess.PIPE, text=True, timeout=30, cwd=ROOT,
                                stdin=subprocess.DEVNULL)
        assert (result.returncode, result.stdout) == (1, "tcpconnect: standard error is closed\n")


def test_user_namespace_is_named_as_the_reason():
    # Full capabilities, but only inside the new user namespace.
    result = run_tool("-P", "80", prefix=("unshare", "-Ur"))
    assert_one_line_error(result, "runs in a user namespace, where its capabilities do not "
                                  "reach BPF", code=1)


@pytest.mark.parametrize("args,fragment", [
    (["-p", "1" * 5000], "invalid PID '111111111111111111111111...' (5000 characters)"),
    (["-p", "0" * 5000 + str(missing_pid())], "no such process"),  # leading zeros are fine
    (["-c", "-i", "9" * 400], "invalid interval '999999999999999999999999...' (400 characters)"),
    (["-c", "-i", str(2**31)], "expected whole seconds 1..2147483647"),
    (["-u", "7" * 5000], "invalid UID '777777777777777777777777...' (5000 characters)"),
    (["-P", "80," + "9" * 5000], "invalid port '999999999999999999999999...' (5000 characters)"),
    (["--cgroup", "/sys/fs/cgroup/" + "x" * 5000], "File name too long"),
    (["--btf", "/" + "x" * 5000], "No such file or directory"),
    (["--cgroup", "/tmp/\x1b[2J\nsecond line"], "/tmp/\\x1b[2J\\nsecond line: No such file"),
])
@pytest.mark.host_only
def test_huge_or_hostile_values_give_a_short_line(args, fragment):
    result = run_tool(*args)
    assert_one_line_error(result, fragment)
    assert len(result.stderr) < 400, result.stderr


@pytest.mark.host_only
def test_longest_port_list_parses_in_linear_time():
    # Every port, then every port again: a list scan per duplicate check took
    # minutes here, a set takes milliseconds (the timeout only catches a hang).
    code = ("from tcpconnect.cli import parse_ports; ports = ','.join(map(str, range(1, 65536)));"
            "assert len(parse_ports(ports + ',' + ports)) == 65535")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20, cwd=ROOT)


def signal_mask(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith(field + ":")), 16)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.host_only
def test_signal_at_any_moment_of_start_up_is_an_orderly_stop(sig):
    """A launcher that blocks the signals before exec (as the package's
    /usr/sbin/tcpconnect does with env --block-signal) hands any that come during start-up to the
    tool's own handlers: exit 0 and no traceback, whenever the signal lands
    once env has blocked it (before that, env is a C program that dies
    cleanly). Blocked or caught, from then on, never both missing."""
    bit = 1 << (sig - 1)
    for delay_ms in range(0, 40, 4):
        proc = subprocess.Popen(
            ["env", "--block-signal=INT", "--block-signal=TERM", *TOOL, "-P", "80"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            stdin=subprocess.DEVNULL)
        wait_for(lambda: (signal_mask(proc.pid, "SigBlk") | signal_mask(proc.pid, "SigCgt")) & bit,
                 timeout=10, what="signal blocked or caught")
        time.sleep(delay_ms / 1000)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, err) == (0, ""), (delay_ms, proc.returncode, err)


def handles_sigterm(pid: int) -> bool:
    return bool(signal_mask(pid, "SigCgt") >> (signal.SIGTERM - 1) & 1)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.host_only
def test_signal_during_start_up_is_an_orderly_stop(sig):
    proc = subprocess.Popen([*TOOL, "-P", "80"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    # Signal as soon as main() has taken over SIGTERM (before that, only the
    # interpreter's own start-up runs): the BPF object is not loaded yet.
    wait_for(lambda: handles_sigterm(proc.pid), timeout=10, what="signal handlers")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
