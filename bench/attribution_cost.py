#!/usr/bin/env python3
"""What attribution (--container, the JSON attribution fields) costs per row.

Formats batches of decoded events, as the reader hands them over, with and
without --container, and as JSON, where many connects come from few cgroups
(the common case: a cache hit per row). Then what a miss costs: an id to
path lookup by open_by_handle_at and by walking the cgroup2 tree, and a
CgroupResolver.lookup hit (what a caller outside the formatters pays).

Creates a few docker-shaped cgroups under the cgroup2 mount (removed after).
Needs root. Figures are best-of-rounds microseconds of the process's CPU time
(user + system), which other work on a shared machine disturbs less than
wall-clock time.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tcpconnect.attribution import CgroupResolver, cgroup2_mount  # noqa: E402
from tcpconnect.output import Columns, JsonFormatter, TextFormatter  # noqa: E402
from tcpconnect.records import EventRecord, decoded  # noqa: E402

BATCH = 1000


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cgroups", type=int, default=8, help="distinct cgroups connecting")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    mount = cgroup2_mount()
    if mount is None:
        raise SystemExit("bench: no cgroup2 hierarchy is mounted")
    parent = Path(mount[0]) / f"tcpconnect-bench-{uuid.uuid4().hex[:12]}"
    parent.mkdir()
    made = [parent / f"docker-{uuid.uuid4().hex * 2}.scope" for _ in range(args.cgroups)]
    try:
        for path in made:
            path.mkdir()
        ids = [path.stat().st_ino for path in made]
        addr = socket.inet_pton(socket.AF_INET, "127.0.0.1").ljust(16, b"\0")
        # The kernel fills ts_ns only for -t (and -d); 0 otherwise.
        events = [decoded(EventRecord(
            ts_ns=0, cgroup_id=ids[i % len(ids)], mntns_id=4026531841, saddr=addr, daddr=addr,
            pid=1000 + i % 50, tid=1000 + i % 50, uid=0, netns=4026531840, lport=0,
            dport=80, family=4, comm=b"curl".ljust(16, b"\0"), latency_ns=0, outcome=0,
            error=0, syn_retries=0, drops=0, drop_reason=0)) for i in range(args.rows)]
        batches = [events[i:i + BATCH] for i in range(0, len(events), BATCH)]
        timed = [[(i * 1000, *e[1:]) for i, e in enumerate(b)] for b in batches]
        print(f"{args.rows} rows from {args.cgroups} cgroups in batches of {BATCH}; "
              f"best of {args.rounds} rounds")
        resolver = CgroupResolver()
        formatters = (
            ("text", TextFormatter(Columns()), batches),
            ("text -U", TextFormatter(Columns(uid=True)), batches),
            ("text --container", TextFormatter(Columns(container=True),
                                               attribute=resolver.lookup), batches),
            ("text -t -U", TextFormatter(Columns(timestamp=True, uid=True)), timed),
            ("text -t -U --container", TextFormatter(Columns(timestamp=True, uid=True,
                                                             container=True),
                                                     attribute=resolver.lookup), timed),
            ("json (attribution fields)", JsonFormatter(Columns(), attribute=resolver.lookup),
             batches),
        )
        # Interleaved, so a burst of other work on the machine hits every
        # formatter alike rather than one of them.
        fastest = dict.fromkeys((name for name, _, _ in formatters), float("inf"))
        for _ in range(args.rounds):
            for name, formatter, input in formatters:
                fastest[name] = min(fastest[name], best(
                    lambda: [formatter.rows(b) for b in input], 1))  # noqa: B023
        for name, seconds in fastest.items():
            print(f"  {name:28} {seconds / args.rows * 1e6:6.3f} us/row")

        def by_handle() -> float:
            r = CgroupResolver()
            r.path(ids[0])  # opens the mount once
            start = time.process_time()
            for cgroup_id in ids:
                assert r._by_handle(cgroup_id) is not None
            r.close()
            return (time.process_time() - start) / len(ids)

        def by_walk() -> float:
            # A new cgroup is not in the last walk's map: each costs a walk.
            start = time.process_time()
            for cgroup_id in ids:
                assert CgroupResolver()._by_walk(cgroup_id) is not None
            return (time.process_time() - start) / len(ids)

        walked = sum(1 for _ in Path(mount[0]).rglob("cgroup.procs"))
        print(f"  miss, open_by_handle_at      "
              f"{min(by_handle() for _ in range(args.rounds)) * 1e6:8.1f} us")
        print(f"  miss, tree walk ({walked} cgroups) "
              f"{min(by_walk() for _ in range(args.rounds)) * 1e6:8.1f} us")
        hits = ids * 10000
        seconds = best(lambda: [resolver.lookup(i) for i in hits], args.rounds)
        print(f"  CgroupResolver.lookup hit     {seconds / len(hits) * 1e6:6.3f} us")
    finally:
        for path in made:
            if path.exists():
                path.rmdir()
        parent.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
