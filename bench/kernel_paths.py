#!/usr/bin/env python3
"""What each kernel-dependent path of the BPF side costs: `make bench-paths`.

Runs the tracer in each mode twice, once as this kernel allows (tp_btf
programs, BTF-typed task and socket reads, the dynptr DNS capture where the
kernel has it) and once as a kernel without BTF of its own runs it (the
kernel's BTF hidden in a private mount namespace and given back with --btf:
raw_tp programs and probe reads), while a loopback connect loop runs. With
kernel.bpf_stats_enabled the kernel counts each program's runs and run time,
so the figure is the BPF time per run, per program: the cost to the traced
workload, independent of how busy the machine is. Also usable in the kernel
matrix guests (kernels/matrix), where it shows the paths those kernels get.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONNECT_LOOP = ROOT / "build" / "connect_loop"
TRACER = [sys.executable, "-m", "tcpconnect"]
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
HIDE_KERNEL_BTF = ("unshare", "-m", "sh", "-c",
                   'mount -t tmpfs none /sys/kernel/btf && exec "$@"', "sh")
MODES = (("default", ()), ("-L", ("-L",)), ("-d", ("-d",)), ("--outcome", ("--outcome",)),
         ("-c --outcome", ("-c", "--outcome")))
# A closed port below the ephemeral range: every connect is refused at once.
PORT = 9


def program_runs(pid: int) -> dict[int, tuple[int, int]]:
    """(runs, run time in ns) of each program the process holds, by program
    id, from its file descriptors' fdinfo (the kernel keeps both per program;
    a program held by several descriptors is counted once)."""
    stats = {}
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            fields = dict(line.split(":", 1) for line in info.read_text().splitlines()
                          if ":" in line)
        except OSError:
            continue
        if "prog_type" in fields and "run_time_ns" in fields and "link_type" not in fields:
            stats[int(fields["prog_id"])] = (int(fields["run_cnt"]), int(fields["run_time_ns"]))
    return stats


def program_stats(pid: int) -> dict[str, tuple[int, int]]:
    """program_runs by program name."""
    return {program_name(prog_id): runs for prog_id, runs in program_runs(pid).items()}


_names: dict[int, str] = {}


def program_name(prog_id: int) -> str:
    if prog_id not in _names:
        shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                                          capture_output=True, text=True, check=True).stdout)
        _names[prog_id] = f"{shown['name']} ({shown['type']})"
    return _names[prog_id]


def measure(options: tuple[str, ...], hide_btf: bool, btf_copy: Path, seconds: float,
            rounds: int) -> dict[str, list[float]]:
    prefix: tuple[str, ...] = HIDE_KERNEL_BTF if hide_btf else ()
    extra = ("--btf", str(btf_copy)) if hide_btf else ()
    tracer = subprocess.Popen([*prefix, *TRACER, *options, *extra], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env={"PYTHONPATH": str(ROOT / "src")})
    try:
        time.sleep(1.5)
        if tracer.poll() is not None:
            raise SystemExit(f"bench: tcpconnect {' '.join(options)} failed: "
                             f"{tracer.stderr.read().strip()}")  # type: ignore[union-attr]
        per_run: dict[str, list[float]] = {}
        for _ in range(rounds):
            before = program_stats(tracer.pid)
            subprocess.run([str(CONNECT_LOOP), "-p", str(PORT), "-d", str(seconds)],
                           check=True, capture_output=True)
            after = program_stats(tracer.pid)
            for name, (runs, ns) in after.items():
                runs -= before.get(name, (0, 0))[0]
                ns -= before.get(name, (0, 0))[1]
                if runs:
                    per_run.setdefault(name, []).append(ns / runs)
        return per_run
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", action="append", choices=[name for name, _ in MODES],
                        help="only this mode (repeatable; default: all)")
    parser.add_argument("--typed-only", action="store_true",
                        help="only this kernel's path, not the one without kernel BTF")
    args = parser.parse_args()
    if not CONNECT_LOOP.exists():
        raise SystemExit("bench: build/connect_loop is missing: run `make bench`")
    previous = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1\n")
    workdir = Path(tempfile.mkdtemp())
    try:
        btf_copy = workdir / "vmlinux.btf"
        shutil.copyfile("/sys/kernel/btf/vmlinux", btf_copy)
        print(f"kernel {Path('/proc/sys/kernel/osrelease').read_text().strip()}; "
              f"{args.rounds} rounds of {args.seconds:g} s of refused loopback connects; "
              "BPF run time per program run: median (min-max) in ns")
        print(f"{'mode':12} {'path':32} {'program':40} {'ns/run':>24}")
        paths = (("this kernel's", False), ("no kernel BTF (--btf)", True))
        for mode, options in MODES:
            if args.mode and mode not in args.mode:
                continue
            for path, hide in paths[:1] if args.typed_only else paths:
                print(f"# measuring {mode}, {path}", file=sys.stderr, flush=True)
                for name, values in sorted(measure(options, hide, btf_copy, args.seconds,
                                                   args.rounds).items()):
                    spread = f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"
                    print(f"{mode:12} {path:32} {name:40} {spread:>24}", flush=True)
    finally:
        BPF_STATS.write_text(previous + "\n")
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
