#!/usr/bin/env python3
"""Does a flood of costly DNS answers from an unprivileged user make
`tcpconnect -d` lose connects?

For --seconds, `nobody` sends --attack-rate answers per second from port 53
inside a user and network namespace of its own (tests/dns_attacks.py: pointer
chains, long names, lying address lengths, and the costliest shapes still
within the parser's bounds), while this process makes --connect-rate refused
loopback connects per second to a port the tracer filters on. Prints the
connects made and reported, the tracer's losses and refusals, and its CPU use.
--src NAME=DIR runs the tracer from another source tree too (e.g. a checkout
of an older commit with its BPF objects built), for a before/after figure.
All traffic stays on loopback. Needs root and `make install`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dns_cost import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import dns_attacks  # noqa: E402

# The shapes that cost the most before the bounds, then the costliest ones
# that pass them.
ATTACKS = [dns_attacks.pointer_chain(200), dns_attacks.pointer_chain(100),
           dns_attacks.long_question(40), dns_attacks.name_over_255_octets(),
           dns_attacks.address_with_rdlength(1, 5),
           dns_attacks.pointer_chain(5), dns_attacks.long_question(12)]

PACED_SENDER = """
import socket, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
payloads = [bytes.fromhex(p) for p in sys.argv[3:]]
start = time.monotonic()
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("127.0.0.1", 53))
    sent = 0
    while time.monotonic() - start < seconds:
        s.sendto(payloads[sent % len(payloads)], ("127.0.0.1", 5353))
        sent += 1
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
print(sent)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def paced_connects(port: int, rate: float, seconds: float) -> int:
    start, made = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", port))
            except ConnectionRefusedError:
                pass
        made += 1
        time.sleep(max(0.0, start + made / rate - time.monotonic()))
    return made


def one_run(src: Path, opts: argparse.Namespace) -> dict:
    port = free_port()
    # A file, not a pipe nobody reads during the run: a full pipe would stall
    # the tracer and count as its losses.
    rows = tempfile.TemporaryFile("w+")
    tracer = subprocess.Popen([sys.executable, "-m", "tcpconnect", "-j", "-d", "-P", str(port)],
                              env=dict(os.environ, PYTHONPATH=str(src)), cwd="/",
                              stdout=rows, stderr=subprocess.PIPE, text=True)
    assert tracer.stderr is not None
    if not tracer.stderr.readline().startswith("Tracing"):
        raise RuntimeError(tracer.stderr.read())
    cpu_before = cpu_seconds(tracer.pid)
    sender = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "unshare", "-Urn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
         "/usr/bin/python3", "-c", PACED_SENDER, str(opts.attack_rate), str(opts.seconds),
         *[p.hex() for p in ATTACKS]], stdout=subprocess.PIPE, text=True)
    made = paced_connects(port, opts.connect_rate, opts.seconds)
    sent = int(sender.communicate(timeout=60)[0])
    time.sleep(0.5)  # let the tracer drain what it still holds
    cpu = cpu_seconds(tracer.pid) - cpu_before
    tracer.send_signal(signal.SIGINT)
    err = tracer.communicate(timeout=120)[1]
    rows.seek(0)
    lost = re.search(r"Lost (\d+) events in total", err)
    refused = re.search(r"Refused (\d+) DNS responses", err)
    malformed = re.search(r"Skipped (\d+) malformed", err)
    return {"made": made, "reported": sum(1 for _ in rows),
            "lost": int(lost.group(1)) if lost else 0, "sent": sent,
            "refused": int(refused.group(1)) if refused else 0,
            "malformed": int(malformed.group(1)) if malformed else 0,
            "cpu_pct": 100 * cpu / opts.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--attack-rate", type=float, default=60)
    parser.add_argument("--connect-rate", type=float, default=2000)
    parser.add_argument("--src", action="append", default=[], metavar="NAME=DIR",
                        help="also run the tracer from this source tree")
    opts = parser.parse_args()
    trees = {"this tree": ROOT / "src"}
    trees.update((name, Path(path) / "src") for name, path in (s.split("=", 1) for s in opts.src))
    print(f"{opts.attack_rate:g} costly answers/s from nobody next to "
          f"{opts.connect_rate:g} connects/s, {opts.seconds:g} s each")
    print(f"{'tracer':<14} {'connects made':>13} {'reported':>9} {'lost':>6} "
          f"{'answers sent':>12} {'refused':>8} {'malformed':>9} {'tracer CPU':>10}")
    for name, src in trees.items():
        r = one_run(src, opts)
        print(f"{name:<14} {r['made']:>13} {r['reported']:>9} {r['lost']:>6} {r['sent']:>12} "
              f"{r['refused']:>8} {r['malformed']:>9} {r['cpu_pct']:>9.1f}%")


if __name__ == "__main__":
    main()
