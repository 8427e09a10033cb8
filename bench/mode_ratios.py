#!/usr/bin/env python3
"""What -L and --outcome cost the traced connect against the default mode:
`make bench-ratios`.

Issue 27 asks for both within 1.5x of the default in BPF time per connect.
Each round runs the tracer in every mode in turn (default first) on the same
loopback loop (--loop: refused connects, the default, or connects a listener
accepts), so a machine getting busier moves a round's modes
alike, and divides each mode's BPF time per connect (all of its programs'
run time, kernel.bpf_stats_enabled, over the connects the loop made) by the
default's in that round; the table gives the median (min-max) over rounds,
and the ratio of the modes' median times beside it.
-L runs three times: as the tool chooses on this kernel (the port hook where
fexit programs load, docs/internals.md), with the hook refused, as on a
kernel without BPF trampolines, and with compare-and-exchange refused too,
as before 5.12 (waiting attempts in the table alone, not in slots first);
--outcome twice, with and without slots. With --together each mode runs
attached at the same time as a default-mode tracer, both counting the same
connects, so a round's ratio no longer moves with the machine between two
runs (rounds spread ~5% here instead of ~30%); each tracer then finds part of
what the connect touches warm from the other's programs, so its absolute
figures are not comparable with a lone tracer's. The tracer attached first
pays more, so the order alternates and the rounds must be even. Made to run
in the kernel matrix's guests too (APPEND=tsc=reliable kernels/boot KERNEL
'python3 bench/mode_ratios.py'), where the peers' kernels are; TCG inflates
the absolute figures there, not the ratios' meaning, as long as the guest
reads the clock as real machines do:
Debian's 5.10 and 6.1 find a TCG guest's TSCs unsynchronized and read the
emulated HPET instead, ~1.2 us more per clock read in the 6.1 guest, which
weighs on --outcome's two clock reads per connect (tsc=reliable keeps the TSC).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import time

from kernel_paths import BPF_STATS, CONNECT_LOOP, PORT, ROOT, program_stats
from run import ports_nobody_uses


def refusing(*probes: str) -> tuple[str, ...]:
    """The tool with these probes of tracer.py answering "refused", as on a
    kernel without the feature: fexit_refusal (BPF trampolines: -L waits for
    its SYN) or cmpxchg_refusal (compare-and-exchange, before 5.12: waiting
    attempts go to the table alone)."""
    patches = "; ".join(f"t.{probe} = lambda *_: 'refused by bench/mode_ratios.py'"
                        for probe in probes)
    return ("-c", f"import sys, tcpconnect.tracer as t; {patches}; "
                  "from tcpconnect.__main__ import run; sys.argv[0] = 'tcpconnect'; run()")


MODES = (("default", ("-m", "tcpconnect")),
         ("-L", ("-m", "tcpconnect", "-L")),
         ("-L, no port hook", (*refusing("fexit_refusal"), "-L")),
         ("-L, no hook/slots", (*refusing("fexit_refusal", "cmpxchg_refusal"), "-L")),
         ("--outcome", ("-m", "tcpconnect", "--outcome")),
         ("--outcome, no slots", (*refusing("cmpxchg_refusal"), "--outcome")))

def bpf_ns_per_connect(tracers: list[tuple[str, ...]], loop: tuple[str, ...], port: int,
                       seconds: float, settle: float) -> list[tuple[float, dict[str, float]]]:
    """Each tracer's BPF time per connect, and each of its programs' share,
    over one run of the loop with all of them attached (started in order)."""
    running: list[subprocess.Popen] = []
    try:
        for args in tracers:
            running.append(subprocess.Popen(
                [sys.executable, *args, "-P", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                env={"PYTHONPATH": str(ROOT / "src")}))
            time.sleep(settle)
        for args, tracer in zip(tracers, running):
            if tracer.poll() is not None:
                said = tracer.stderr.read().decode().strip()  # type: ignore[union-attr]
                raise SystemExit(f"bench: tcpconnect {' '.join(args[2:])} failed: {said}")
        before = [program_stats(tracer.pid) for tracer in running]
        made = int(subprocess.run([str(CONNECT_LOOP), *loop, "-p", str(port), "-d",
                                   str(seconds)], check=True, capture_output=True,
                                  text=True).stdout)
        after = [program_stats(tracer.pid) for tracer in running]
    finally:
        # All told to stop before any is waited for: one stuck is killed, not left
        # attached beside the others.
        for tracer in running:
            tracer.send_signal(signal.SIGINT)
        for tracer in running:
            try:
                tracer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
    results = []
    for start, end in zip(before, after):
        shares = {name: (ns - start.get(name, (0, 0))[1]) / made for name, (_, ns) in end.items()}
        results.append((sum(shares.values()), shares))
    return results


def runs(modes: list[tuple[str, tuple[str, ...]]], together: bool,
         round_: int) -> list[tuple[tuple[str, ...], list[tuple[str, ...]]]]:
    """A round's loop runs: the modes' names and tracers, each mode alone
    (default first), or each other mode with a default-mode tracer, the one
    attached first changing every round (the first pays more: it finds the
    lines the connect touches colder)."""
    if not together:
        return [((name,), [args]) for name, args in modes]
    default = modes[0]
    pairs = [(default, mode) if round_ % 2 == 0 else (mode, default) for mode in modes[1:]]
    return [((a[0], b[0]), [a[1], b[1]]) for a, b in pairs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="loop length per mode")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds from the tracer's launch to the loop (start-up under TCG)")
    parser.add_argument("--mode", action="append", choices=[name for name, _ in MODES[1:]],
                        help="only this mode besides the default (repeatable; default: all): "
                             "fewer modes make more rounds affordable in a TCG guest")
    parser.add_argument("--loop", choices=("refused", "listener"), default="refused",
                        help="connects refused (a closed port) or accepted by the loop's "
                             "own listener")
    parser.add_argument("--together", action="store_true",
                        help="each mode attached at the same time as a default-mode tracer, "
                             "on the same connects, which of the two first alternating by round")
    args = parser.parse_args()
    if args.together and args.rounds % 2:
        parser.error("--together takes an even --rounds: each order of attaching as often")
    loop, port = ((), PORT) if args.loop == "refused" else (("-l",), ports_nobody_uses(1)[0])
    modes = [(name, mode_args) for name, mode_args in MODES
             if name == "default" or not args.mode or name in args.mode]
    if not CONNECT_LOOP.exists():
        raise SystemExit("bench: build/connect_loop is missing: run `make bench`")
    totals: dict[str, list[float]] = {mode: [] for mode, _ in modes}
    ratios: dict[str, list[float]] = {mode: [] for mode, _ in modes}
    # The default-mode figures each mode was divided by: a lone round's, or the tracer beside it.
    partners: dict[str, list[float]] = {mode: [] for mode, _ in modes}
    shares: dict[str, dict[str, list[float]]] = {mode: {} for mode, _ in modes}
    previous = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1\n")
    try:
        for round_ in range(args.rounds):
            for names, tracers in runs(modes, args.together, round_):
                print(f"# round {round_ + 1}: {' with '.join(names)}", file=sys.stderr,
                      flush=True)
                measured = bpf_ns_per_connect(tracers, loop, port, args.seconds, args.settle)
                for name, (total, by_program) in zip(names, measured):
                    totals[name].append(total)
                    for program, ns in by_program.items():
                        shares[name].setdefault(program.split()[0], []).append(ns)
                # Alone, a mode is divided by the default's run of its round; together, by
                # the default-mode tracer beside it.
                default = totals["default"][-1]
                for name, (total, _) in zip(names, measured):
                    ratios[name].append(total / default)
                    partners[name].append(default)
    finally:
        BPF_STATS.write_text(previous + "\n")

    def spread(values: list[float], form: str) -> str:
        return f"{statistics.median(values):{form}} ({min(values):{form}}-{max(values):{form}})"

    print(f"kernel {open('/proc/sys/kernel/osrelease').read().strip()}; {args.rounds} rounds of "
          f"{args.seconds:g} s of {args.loop} loopback connects per mode"
          f"{', each beside a default-mode tracer' if args.together else ''}; median (min-max)")
    # Two readings of one set of rounds: the median of each round's ratio, and the ratio of the
    # medians. Under TCG a guest's speed drifts by 20% or more between two tracers' runs, which
    # moves each round's ratio far more than either median.
    print(f"{'mode':19} {'BPF ns/connect':>22} {'ratio to default':>20} {'of medians':>10}"
          "  programs (ns/connect)")
    for mode, _ in modes:
        programs = " ".join(f"{name}={statistics.median(values):.0f}"
                            for name, values in sorted(shares[mode].items()))
        of_medians = statistics.median(totals[mode]) / statistics.median(partners[mode])
        print(f"{mode:19} {spread(totals[mode], ',.0f'):>22} {spread(ratios[mode], '.2f'):>20}"
              f" {of_medians:>10.2f}  {programs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
