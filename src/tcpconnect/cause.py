"""--outcome's CAUSE: what the kernel saw of an attempt on its way to its
result. The SYNs it sent (the retransmissions the socket counted), or that
none was; the attempt's packets this host dropped itself, and why, in the
kernel's own words (enum skb_drop_reason, read from the running kernel's
BTF: its values differ between kernels, and kernels before 5.17 give none).
"""

from __future__ import annotations

from .events import DROP_REASON, DROPS, OUTCOME, OUTCOME_NO_SYN, SYN_RETRIES
from .kernel import VMLINUX_BTF
from .libbpf import BpfError, enum_values

CAUSE_WIDTH = 24
REASON_PREFIX = "SKB_DROP_REASON_"

# How an attempt that sent SYNs came to each result (outcome.result_name);
# any other result (an errno's name) is "NAME after N SYNs".
_AFTER_SYNS = {
    "refused": "RST after",
    "reset": "RST after",
    "timeout": "no answer to",
    "unreachable": "ICMP error after",
    "aborted": "closed after",
}
# Results of attempts that ended before their first SYN.
_NO_SYN = frozenset(("no-route", "denied", "no-local-port"))


class DropReasons:
    """Names of the running kernel's drop reasons, read from its BTF the
    first time a drop is shown (the read costs ~10 ms)."""

    def __init__(self) -> None:
        self.btf_path = VMLINUX_BTF
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


def cause_text(event: tuple, result: str) -> str:
    """The CAUSE of an attempt that has ended with `result`."""
    if event[OUTCOME] == OUTCOME_NO_SYN or result in _NO_SYN:
        return "no SYN sent"
    if event[DROPS]:
        reason = drop_reasons.name(event[DROP_REASON])
        dropped = f"{_syns(event[DROPS])} dropped here"
        return f"{dropped}: {reason}" if reason else dropped
    syns = _syns(event[SYN_RETRIES] + 1)
    if result == "ok":
        return syns
    return f"{_AFTER_SYNS.get(result, result + ' after')} {syns}"


def json_fields(event: tuple, result: str) -> str:
    """`syn_retries`, `drop_reason` (null when nothing was dropped here,
    "unknown" where the kernel gives no reason) and `cause`, for an attempt
    that has ended with `result`."""
    no_syn = event[OUTCOME] == OUTCOME_NO_SYN
    reason = drop_reasons.name(event[DROP_REASON]) or "unknown" if event[DROPS] else None
    return ', "syn_retries": %s, "drop_reason": %s, "cause": "%s"' % (
        "null" if no_syn else event[SYN_RETRIES],
        "null" if reason is None else '"%s"' % reason, cause_text(event, result))
