#!/bin/bash
# Two refused-connect loops, one pinned to each of CPUs 0 and 1, for 5 s under
# `tcpconnect -P PORT [OPTIONS]`: connects made, rows printed, losses reported.
# Usage (from the checkout, after make bench has built build/connect_loop):
#   bench/two_loops.sh PORT [OPTIONS...]     e.g. bench/two_loops.sh 7 -t -U -L
set -euo pipefail
port=$1; shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/tcpconnect -P "$port" "$@" > "$work/rows" 2> "$work/err" &
tracer=$!
sleep 1.5  # attached
taskset -c 0 build/connect_loop -p "$port" -d 5 > "$work/loop0" &
taskset -c 1 build/connect_loop -p "$port" -d 5 > "$work/loop1" &
wait %2 %3
sleep 1  # drained
kill -INT "$tracer"; wait "$tracer"
made=$(( $(grep -o '[0-9]*' "$work/loop0" | head -1) + $(grep -o '[0-9]*' "$work/loop1" | head -1) ))
echo "options: ${*:-(none)}  made: $made  rows: $(grep -cv -e '^Tracing connect' -e '^PID' -e '^TIME' -e '^UID' "$work/rows")  $(grep 'in total' "$work/err" || echo 'lost: none reported')"
