"""--outcome: how each connect attempt ended and how long it took.

The kernel side parks every attempt when the socket enters SYN_SENT and
reports it when it leaves: `outcome` is the TCP state it went to
(ESTABLISHED or CLOSE), `error` the socket's sk_err at that moment and
`latency_ns` the time in between. Attempts still parked when tracing stops
keep outcome SYN_SENT; 0 means the kernel had no room to follow the attempt.
A connect() that failed before its socket reached SYN_SENT is reported when
the call returns, with outcome OUTCOME_NO_SYN and connect()'s errno.
"""

from __future__ import annotations

import errno
import functools
from typing import Iterable

from .cache import BoundedCache
from .cause import CAUSE_WIDTH, NO_ANSWER_JSON, cause_text
from .cause import json_fields as cause_json
from .events import (
    ANSWER_CODE,
    ANSWER_TTL,
    DADDR,
    DPORT,
    ERROR,
    FAMILY,
    IDENTITY_BYTES,
    LATENCY_NS,
    OUTCOME,
    OUTCOME_END_UNSEEN,
    OUTCOME_NO_SYN,
    SADDR,
    CountKey,
)
from .records import identities

# include/net/tcp_states.h
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_CLOSE = 7
# Written by the kernel side when the pending table was full.
UNTRACKED = 0

# The errors the kernel gives a connect that fails after SYN_SENT, by name.
_NAMED_ERRORS = {
    errno.ECONNREFUSED: "refused",      # RST in answer to the SYN (tcp_reset)
    errno.ETIMEDOUT: "timeout",         # SYN retries used up (tcp_write_err)
    errno.EHOSTUNREACH: "unreachable",  # ICMP unreachable (tcp_v4_err, tcp_v6_err)
    errno.ENETUNREACH: "unreachable",
    errno.EACCES: "unreachable",        # ICMPv6 administratively prohibited
    errno.ECONNRESET: "reset",          # RST in a simultaneous open
    # No free local port: the kernel side infers it (see resolve_pending).
    errno.EADDRNOTAVAIL: "no-local-port",
}
# The errors of a connect() that failed before SYN_SENT, by name: the
# routing table has no usable route (ip_route_connect, ip6_dst_lookup_flow:
# none at all, an `unreachable` route, a `blackhole` route's EINVAL); a
# cgroup connect4/connect6 program, an LSM (security_socket_connect) or a
# `prohibit` route refused; no local port was free.
_NAMED_EARLY_ERRORS = {
    errno.ENETUNREACH: "no-route",
    errno.EHOSTUNREACH: "no-route",
    errno.EINVAL: "no-route",
    errno.EACCES: "denied",
    errno.EPERM: "denied",
    errno.EADDRNOTAVAIL: "no-local-port",
}

# The longest result, no-local-port.
RESULT_WIDTH = 13
TEXT_HEADER = "%-*s %-8s %-*s" % (RESULT_WIDTH, "RESULT", "LAT(ms)", CAUSE_WIDTH, "CAUSE")
COUNT_RESULT_HEADER = "%-*s" % (RESULT_WIDTH, "RESULT")


@functools.lru_cache(maxsize=256)
def result_name(outcome: int, error: int) -> str:
    """The RESULT of an attempt from the state it ended in and its sk_err."""
    if outcome == TCP_ESTABLISHED:
        return "ok"
    if outcome == TCP_SYN_SENT:
        return "pending"
    if outcome == UNTRACKED:
        return "unknown"
    if outcome == OUTCOME_NO_SYN:
        return _NAMED_EARLY_ERRORS.get(error) or errno_name(error)
    if outcome == OUTCOME_END_UNSEEN:
        # The socket's error, where it still had one, is how it ended.
        return (_NAMED_ERRORS.get(error) or errno_name(error)) if error else "unknown"
    if outcome != TCP_CLOSE:
        return f"state-{outcome}"
    if error == 0:
        # close() or connect(AF_UNSPEC) before the handshake completed:
        # neither sets sk_err before the socket is closed.
        return "aborted"
    return _NAMED_ERRORS.get(error) or errno_name(error)


def errno_name(error: int) -> str:
    """ECONNREFUSED for 111; errno-N for a number Python does not name."""
    return errno.errorcode.get(error, f"errno-{error}")


def ended(outcome: int) -> bool:
    return outcome not in (TCP_SYN_SENT, UNTRACKED)


def timed(outcome: int) -> bool:
    """Whether the attempt's end was seen, so its latency is known."""
    return ended(outcome) and outcome != OUTCOME_END_UNSEEN


class TextColumns:
    """RESULT, LAT(ms) and CAUSE of a row, each followed by a space, as DPORT
    is. RESULT and CAUSE come from the record's fields from OUTCOME to
    ANSWER_CODE alone (the identity among them gives the answer's family and
    destination), which most attempts of a busy host share with many others:
    they are made once per combination and kept. So is LAT(ms), by the 10 us
    it shows: a float's %-format costs more than a lookup."""

    def __init__(self) -> None:
        self._ends = BoundedCache()
        self._latencies = BoundedCache(
            lambda hundredths: "%-8s" % ("%d.%02d" % divmod(hundredths, 100)))

    def __call__(self, event: tuple) -> str:
        key = event[OUTCOME:ANSWER_CODE + 1]
        ends = self._ends.get(key) or self._new_ends(key, event)
        # Half up, to the 10 us.
        latency = self._latencies[(event[LATENCY_NS] + 5_000) // 10_000] if ends[2] else "-       "
        return ends[0] + latency + ends[1]

    def _new_ends(self, key: tuple, event: tuple) -> tuple[str, str, bool]:
        outcome = event[OUTCOME]
        result = result_name(outcome, event[ERROR])
        cause = cause_text(event, result) if ended(outcome) else "-"
        ends = ("%-*s " % (RESULT_WIDTH, result), " %-*s " % (CAUSE_WIDTH, cause), timed(outcome))
        self._ends.put(key, ends)
        return ends


class JsonFields:
    """The fields --outcome adds to a JSON row: `result`, `errno` (its name,
    null for none), `errno_code` (0 for none), `latency_ms` and the cause's
    fields (see cause.json_fields); all but `result` null while the attempt
    had not ended (or could not be followed). As TextColumns keeps the text
    columns, all but `latency_ms` are made once per combination of the
    record's fields they come from, OUTCOME to ANSWER_TTL, and kept: made
    anew they cost 2-4 us a row. `latency_ms` is the nanosecond count to
    the microsecond, half up, written as json.dumps writes that number (the
    shortest form that reads back the same: 0.31, 1.0)."""

    def __init__(self) -> None:
        self._ends = BoundedCache()

    def __call__(self, event: tuple) -> str:
        key = event[OUTCOME:ANSWER_TTL + 1]
        head, tail = self._ends.get(key) or self._new_ends(key, event)
        if tail is None:
            return head
        return head + repr((event[LATENCY_NS] + 500) // 1000 / 1000) + tail

    def _new_ends(self, key: tuple, event: tuple) -> tuple[str, str | None]:
        """The row's fields before latency_ms's value and after it; the
        whole of them, and None, when the latency is not known."""
        outcome = event[OUTCOME]
        if not ended(outcome):
            ends: tuple[str, str | None] = (
                ', "result": "%s", "errno": null, "errno_code": null, "latency_ms": null, '
                '"syn_retries": null, "drop_reason": null%s, "cause": null'
                % (result_name(outcome, 0), NO_ANSWER_JSON), None)
        else:
            error = event[ERROR]
            result = result_name(outcome, error)
            head = ', "result": "%s", "errno": %s, "errno_code": %d, "latency_ms": ' % (
                result, '"%s"' % errno_name(error) if error else "null", error)
            tail = cause_json(event, result)
            ends = (head, tail) if timed(outcome) else (head + "null" + tail, None)
        self._ends.put(key, ends)
        return ends


def count_key_result(key: CountKey) -> str:
    return result_name(key.outcome, key.error)


def counts_with_pending(counts: list[tuple[CountKey, int]],
                        pending: Iterable[tuple]) -> list[tuple[CountKey, int]]:
    """The kernel's final count table plus the attempts still under way when
    tracing stopped (decoded events, which the kernel never counted), one
    count each under the result `pending`."""
    totals: dict[bytes, tuple[CountKey, int]] = {bytes(key): (key, n) for key, n in counts}
    for event in pending:
        identity = identities[event[IDENTITY_BYTES]]
        key = CountKey(dport=identity[DPORT], family=identity[FAMILY], outcome=event[OUTCOME])
        key.saddr[:] = identity[SADDR]
        key.daddr[:] = identity[DADDR]
        raw = bytes(key)
        known, n = totals.get(raw, (key, 0))
        totals[raw] = (known, n + 1)
    return list(totals.values())
