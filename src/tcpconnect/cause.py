"""--outcome's CAUSE: what the kernel saw of an attempt on its way to its
result. The SYNs it sent (the retransmissions the socket counted), or that
none was; the attempt's packets this host dropped itself, and why, in the
kernel's own words (enum skb_drop_reason, read from the running kernel's
BTF: its values differ between kernels, and kernels before 5.17 give none).
"""

from __future__ import annotations

import errno

from .events import DROP_REASON, DROPS, ERROR, OUTCOME, OUTCOME_NO_SYN, SYN_RETRIES
from .libbpf import BpfError, enum_values

TCP_ESTABLISHED = 1
TCP_CLOSE = 7
CAUSE_WIDTH = 24
REASON_PREFIX = "SKB_DROP_REASON_"

# How each error that ended an attempt after its SYNs came about.
_AFTER_SYNS = {
    errno.ECONNREFUSED: "RST after",
    errno.ECONNRESET: "RST after",
    errno.ETIMEDOUT: "no answer to",
    errno.EHOSTUNREACH: "ICMP error after",
    errno.ENETUNREACH: "ICMP error after",
    errno.EACCES: "ICMP error after",
    0: "closed after",
}


class DropReasons:
    """Names of the running kernel's drop reasons, read from its BTF the
    first time a drop is shown (the read costs ~10 ms)."""

    def __init__(self) -> None:
        self.btf_path = "/sys/kernel/btf/vmlinux"
        self._names: dict[int, str] | None = None

    def name(self, reason: int) -> str | None:
        """SKB_DROP_REASON_NETFILTER_DROP as NETFILTER_DROP; None where the
        kernel has no drop reasons (or its BTF cannot be read)."""
        if self._names is None:
            try:
                self._names = enum_values(self.btf_path, "skb_drop_reason")
            except BpfError:
                self._names = {}
        if not self._names:
            return None
        name = self._names.get(reason, f"reason {reason}")
        return name[len(REASON_PREFIX):] if name.startswith(REASON_PREFIX) else name


drop_reasons = DropReasons()


def _syns(count: int) -> str:
    return "1 SYN" if count == 1 else f"{count} SYNs"


def cause_text(event: tuple) -> str:
    """The CAUSE of an attempt that has ended."""
    outcome, error = event[OUTCOME], event[ERROR]
    # No local port was found before the SYN (see resolve_pending).
    if outcome == OUTCOME_NO_SYN or (outcome == TCP_CLOSE and error == errno.EADDRNOTAVAIL):
        return "no SYN sent"
    if event[DROPS]:
        reason = drop_reasons.name(event[DROP_REASON])
        dropped = f"{_syns(event[DROPS])} dropped here"
        return f"{dropped}: {reason}" if reason else dropped
    syns = _syns(event[SYN_RETRIES] + 1)
    if outcome == TCP_ESTABLISHED:
        return syns
    how = _AFTER_SYNS.get(error) or errno.errorcode.get(error, f"errno {error}") + " after"
    return f"{how} {syns}"


def json_fields(event: tuple) -> str:
    """`syn_retries`, `drop_reason` (null when nothing was dropped here,
    "unknown" where the kernel gives no reason) and `cause`, for an attempt
    that has ended."""
    no_syn = event[OUTCOME] == OUTCOME_NO_SYN
    reason = drop_reasons.name(event[DROP_REASON]) or "unknown" if event[DROPS] else None
    return ', "syn_retries": %s, "drop_reason": %s, "cause": "%s"' % (
        "null" if no_syn else event[SYN_RETRIES],
        "null" if reason is None else '"%s"' % reason, cause_text(event))
