#!/usr/bin/env python3
"""What tracing costs system calls that are not connect(): `make bench-syscalls`.

The connect() syscall tracepoints (attempts that fail before a SYN) switch
every task on the machine to the kernel's slower syscall path while they are
enabled. This alternates rounds of a getppid() loop (build/syscall_loop)
without the tracer and with it (default mode), in one invocation, and prints
the CPU ns per syscall of each, the difference and the ratio, as median
(min-max) over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOP = ROOT / "build" / "syscall_loop"
TRACER = [sys.executable, "-m", "tcpconnect"]
BANNER = "Tracing connect ... Hit Ctrl-C to end"


def loop_ns(calls: int) -> float:
    return float(subprocess.run([str(LOOP), str(calls)], capture_output=True, text=True,
                                check=True).stdout)


def traced(options: list[str], calls: int) -> float:
    tracer = subprocess.Popen([*TRACER, *options], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        if tracer.stdout.readline().rstrip("\n") != BANNER:  # type: ignore[union-attr]
            raise SystemExit(f"tracer did not start: {tracer.stderr.read()}")  # type: ignore
        return loop_ns(calls)
    finally:
        tracer.send_signal(2)
        tracer.wait(timeout=20)


def spread(values: list[float]) -> str:
    return "%.1f (%.1f-%.1f)" % (statistics.median(values), min(values), max(values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5_000_000)
    parser.add_argument("options", nargs="*", help="tracer options (default: none)")
    args = parser.parse_args()
    plain: list[float] = []
    with_tracer: list[float] = []
    for _ in range(args.rounds):
        plain.append(loop_ns(args.calls))
        with_tracer.append(traced(args.options, args.calls))
        time.sleep(0.2)
    deltas = [t - p for p, t in zip(plain, with_tracer)]
    ratios = [t / p for p, t in zip(plain, with_tracer)]
    print(f"getppid() CPU ns/call over {args.rounds} rounds of {args.calls:,}, "
          f"tracer options {args.options or '(none)'}: median (min-max)")
    print(f"  untraced        {spread(plain)}")
    print(f"  traced          {spread(with_tracer)}")
    print(f"  traced-untraced {spread(deltas)}")
    print("  ratio           %.3f (%.3f-%.3f)" % (statistics.median(ratios), min(ratios),
                                                  max(ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
