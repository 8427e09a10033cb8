#!/usr/bin/env python3
"""What `tcpconnect -d` costs per received packet and per DNS answer.

Runs build/dns_flood (UDP datagrams over loopback, each sent and received)
untraced and under `tcpconnect -d`, alternating, and reports medians of:
- datagrams/s, unpaced: non-DNS datagrams show what the in-kernel filter
  costs every packet the machine receives; DNS answers show the overload case;
- kernel ns per run of the tracer's own handle_receive program
  (kernel.bpf_stats_enabled is switched on for the duration, then restored);
- tracer CPU (utime+stime) per answer that reached it, at rates it keeps up
  with and unpaced, and the answers it lost or could not parse.

--src NAME=DIR runs the tracer from another source tree (e.g. a copy built
with a different DNS_PAYLOAD_MAX) next to the repository's own.
All traffic stays on loopback (127.0.0.153 by default). Needs root, bpftool
and `make install`; build/dns_flood is compiled when missing.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOD = ROOT / "build" / "dns_flood"
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
HZ = os.sysconf("SC_CLK_TCK")
UNPACED = [("non-DNS 92B", ["-s", "5300", "-b", "100"]),
           ("DNS 92B", ["-b", "100"]),
           ("DNS 1228B", ["-b", "1232"])]
# Rates a Python consumer parsing with dnslib sustains with room to spare.
PACED = [("DNS 92B @2000/s", ["-b", "100", "-r", "2000"]),
         ("DNS 492B @1000/s", ["-b", "500", "-r", "1000"]),
         ("DNS 1228B @500/s", ["-b", "1232", "-r", "500"])]


def bpftool_prog(prog_id: int) -> dict:
    out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def receive_prog(pid: int) -> int:
    """The id of handle_receive loaded by process pid (from its fds)."""
    for fdinfo in glob.glob(f"/proc/{pid}/fdinfo/*"):
        try:
            found = re.search(r"^prog_id:\s*(\d+)", Path(fdinfo).read_text(), re.M)
        except OSError:
            continue
        if found and bpftool_prog(int(found.group(1))).get("name") == "handle_receive":
            return int(found.group(1))
    raise RuntimeError(f"process {pid} holds no handle_receive program")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def flood(args: list[str], seconds: float, source: str) -> float:
    out = subprocess.run([str(FLOOD), "-a", source, "-d", str(seconds), *args],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"([0-9.]+)/s", out).group(1))


def traced(src: Path, args: list[str], seconds: float, source: str) -> dict:
    tracer = subprocess.Popen([sys.executable, "-m", "tcpconnect", "-d", "-P", "1"],
                              env=dict(os.environ, PYTHONPATH=str(src)), cwd="/",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert tracer.stdout is not None and tracer.stderr is not None
    if not tracer.stdout.readline().startswith("Tracing"):
        raise RuntimeError(tracer.stderr.read())
    tracer.stdout.readline()
    prog = receive_prog(tracer.pid)
    before, cpu_before = bpftool_prog(prog), cpu_seconds(tracer.pid)
    rate = flood(args, seconds, source)
    after, cpu_after = bpftool_prog(prog), cpu_seconds(tracer.pid)
    tracer.send_signal(signal.SIGINT)
    _, err = tracer.communicate(timeout=120)
    runs = after.get("run_cnt", 0) - before.get("run_cnt", 0)
    lost = int(m.group(1)) if (m := re.search(r"Lost (\d+) DNS responses in total", err)) else 0
    malformed = re.search(r"Skipped (\d+) malformed", err)
    # Answers that reached user space; meaningless (and unused) for non-DNS loads.
    delivered = max(rate * seconds - lost, 1)
    return {
        "rate": rate,
        # No runs counted means kernel.bpf_stats_enabled was switched off meanwhile.
        "kernel_ns": (after.get("run_time_ns", 0) - before.get("run_time_ns", 0)) / runs
        if runs else float("nan"),
        "cpu_us": (cpu_after - cpu_before) / delivered * 1e6,
        "lost": lost,
        "malformed": int(malformed.group(1)) if malformed else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", default="127.0.0.153", help="loopback address to send from")
    parser.add_argument("--src", action="append", default=[], metavar="NAME=DIR",
                        help="also run the tracer from this source tree")
    opts = parser.parse_args()
    if not FLOOD.exists():
        FLOOD.parent.mkdir(exist_ok=True)
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(FLOOD),
                        str(ROOT / "bench" / "dns_flood.c")], check=True)
    trees = {"tcpconnect -d": ROOT / "src"}
    trees.update((name, Path(path)) for name, path in (s.split("=", 1) for s in opts.src))

    results: dict[tuple[str, str], list[dict]] = {}
    previous = STATS.read_text()
    STATS.write_text("1")
    try:
        for _ in range(opts.rounds):
            for load, args in UNPACED:
                results.setdefault((load, "untraced"), []).append(
                    {"rate": flood(args, opts.seconds, opts.source)})
                for name, src in trees.items():
                    results.setdefault((load, name), []).append(
                        traced(src, args, opts.seconds, opts.source))
            for load, args in PACED:
                for name, src in trees.items():
                    results.setdefault((load, name), []).append(
                        traced(src, args, opts.seconds, opts.source))
    finally:
        STATS.write_text(previous)

    print(f"medians of {opts.rounds} rounds of {opts.seconds:g} s")
    print(f"{'load':18} {'tracer':16} {'datagrams/s':>12} {'kernel ns/run':>14}"
          f" {'tracer us/answer':>17} {'lost':>8} {'malformed':>9}")
    for (load, name), runs in results.items():
        def median(key: str) -> float:
            values = [r[key] for r in runs if not math.isnan(r[key])]
            return statistics.median(values) if values else math.nan
        if name == "untraced":
            print(f"{load:18} {name:16} {median('rate'):12.0f}")
            continue
        cpu = "" if load.startswith("non-DNS") else f"{median('cpu_us'):17.0f}"
        print(f"{load:18} {name:16} {median('rate'):12.0f} {median('kernel_ns'):14.0f}"
              f" {cpu:>17} {median('lost'):8.0f} {median('malformed'):9.0f}")


if __name__ == "__main__":
    main()
