#!/usr/bin/env python3
"""How many rows one reader serves: `make bench-reader`.

One Python process reads the events ring for every CPU, so past some connect
rate it cannot keep up, whatever the number of CPUs connecting. This finds
that rate for each output mode, on loopback: one refused-connect loop pinned
to each CPU, the tracer's CPU time counted over the run and until it has
drained the ring, giving rows per second of one core (the reader's batches are
as big as it ever sees them, so this is its best rate per core). Then the same
load with the tracer held to a share of one core (cgroup CPU quota): it now
serves less than the loops make, and every connect must be either printed or
counted as lost ("silent" is what is neither). -c and --metrics -q print no
rows: theirs is the cost of the drain alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import (CONNECT_LOOP, MODES, TracerRun, lost_events, ports_nobody_uses,  # noqa: E402
                 reported_events, scraped_connects, table, wait_drained)

MODE_NAMES = ("default", "-t -U -L", "-j", "-d", "-c", "--metrics -q")
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
# The kernel's smallest quota is 1 ms a period: 1% of a CPU needs a 100 ms one.
QUOTA_PERIOD_US = 100_000


class CpuQuota:
    """A cgroup holding a process to a share of one CPU (v2's cpu.max, or v1's
    CFS quota where the cpu controller is mounted on its own)."""

    def __init__(self, share: float) -> None:
        quota = int(share * QUOTA_PERIOD_US)
        if (CGROUP_V2 / "cgroup.controllers").exists():
            (CGROUP_V2 / "cgroup.subtree_control").write_text("+cpu\n")
            self.path = Path(tempfile.mkdtemp(prefix="tcpconnect-bench-", dir=CGROUP_V2))
            (self.path / "cpu.max").write_text(f"{quota} {QUOTA_PERIOD_US}\n")
        else:
            self.path = Path(tempfile.mkdtemp(prefix="tcpconnect-bench-", dir=CGROUP_V1_CPU))
            (self.path / "cpu.cfs_period_us").write_text(f"{QUOTA_PERIOD_US}\n")
            (self.path / "cpu.cfs_quota_us").write_text(f"{quota}\n")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def remove(self) -> None:
        self.path.rmdir()


def measure(mode_name: str, share: float | None, seconds: float, port: int,
            metrics_port: int, workdir: Path) -> list[str]:
    mode = next(m for m in MODES if m.name == mode_name)
    quota = CpuQuota(share) if share else None
    tracer = TracerRun(mode.command(port, None, metrics_port), workdir)
    try:
        if quota:
            quota.add(tracer.proc.pid)
        tracer.wait_attached()
        idle = wait_drained(tracer.proc.pid, share or 1.0)
        started = time.monotonic()
        loops = [subprocess.Popen(["taskset", "-c", str(cpu), str(CONNECT_LOOP), "-p", str(port),
                                   "-d", str(seconds)], stdout=subprocess.PIPE, text=True)
                 for cpu in sorted(os.sched_getaffinity(0))]
        made = sum(int(loop.communicate()[0]) for loop in loops)
        cpu_s = wait_drained(tracer.proc.pid, share or 1.0) - idle
        elapsed = time.monotonic() - started
        scraped = scraped_connects(metrics_port, port) if mode.metrics else None
    finally:
        tracer.stop()
        if quota:
            quota.remove()
    shown = scraped if scraped is not None else reported_events(mode, tracer.out_path, port)
    lost = lost_events(mode, tracer)
    rows = "-" if "-c" in mode.options or "-q" in mode.options else f"{shown / cpu_s:,.0f}"
    return [mode_name, f"{share:.0%} of a CPU" if share else "free",
            f"{made / seconds:,.0f}", f"{made:,}", f"{shown:,}", f"{lost:,}",
            f"{made - shown - lost:,}", f"{cpu_s:.3f}", f"{elapsed:.1f}", rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each load")
    parser.add_argument("--share", type=float, default=0.01,
                        help="share of one CPU for the held-back runs (default 0.01: "
                        "less than the loops need, so that the ring fills)")
    parser.add_argument("--mode", action="append", choices=MODE_NAMES,
                        help="measure only this mode (repeatable; default: all)")
    args = parser.parse_args()
    if not 0 < args.share < 1 or args.seconds <= 0:
        parser.error("--share must be between 0 and 1, --seconds positive")
    port, metrics_port = ports_nobody_uses(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tcpconnect-bench-") as tmp:
        for name in args.mode or MODE_NAMES:
            for share in (None, args.share):
                print(f"# {name}, {'free' if share is None else f'{share:.0%} of a CPU'}",
                      file=sys.stderr, flush=True)
                rows.append(measure(name, share, args.seconds, port, metrics_port, Path(tmp)))
    print(f"{len(os.sched_getaffinity(0))} refused-connect loops (one per CPU) for "
          f"{args.seconds:g} s; tracer CPU counted until it had drained the ring")
    print(table(["mode", "tracer held to", "offered/s", "made", "shown", "lost", "silent",
                 "tracer CPU s", "wall s", "rows per CPU-second"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
